"""docs/operations.md and its systemd units: what they tell an operator to run must run."""

from __future__ import annotations

import configparser
import shlex
from pathlib import Path

import pytest

from collector.cli.commands import _parser as collector_parser
from collector.settings import load_settings

DOCS = Path(__file__).resolve().parents[1] / "docs"
UNITS = sorted(DOCS.glob("lienwatch-collector-*.service"))


def _unit(path: Path) -> configparser.RawConfigParser:
    parser = configparser.RawConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(path.read_text())
    return parser


def _environment(path: Path, instance: str) -> dict[str, str]:
    """The unit's ``Environment=`` lines (the last one of a name wins, as in systemd), specifiers filled."""
    env: dict[str, str] = {}
    for line in path.read_text().splitlines():
        if line.startswith("Environment="):
            name, value = line.removeprefix("Environment=").split("=", 1)
            env[name] = value.replace("%i", instance).replace("%l", "host-1")
    return env


def test_there_is_a_unit_per_collector_role() -> None:
    names = {p.name for p in UNITS}
    assert names == {
        "lienwatch-collector-migrate.service",
        "lienwatch-collector-ingest@.service",
        "lienwatch-collector-api@.service",
        "lienwatch-collector-workers.service",
    }
    text = (DOCS / "operations.md").read_text()
    for name in names:
        assert f"docs/{name}" in text
    assert "## The broker at fleet scale" in text  # the placeholder another branch fills


@pytest.mark.parametrize("path", UNITS, ids=lambda p: p.name)
def test_each_unit_runs_a_real_command_with_settings_that_load(path: Path, tmp_path: Path) -> None:
    unit = _unit(path)
    argv = shlex.split(unit.get("Service", "ExecStart"))
    assert argv[:2] == ["/usr/bin/lienwatch", "collector"]
    args = collector_parser().parse_args(argv[2:])  # a wrong flag exits here
    assert callable(args.func)
    instance = "8081" if "api@" in path.name else "1"
    env = {k: v for k, v in _environment(path, instance).items() if k != "LIENWATCH_CONFIG"}
    if env.get("LIENWATCH_DOWNLINK_SIGNING_KEY"):
        env.pop("LIENWATCH_DOWNLINK_SIGNING_KEY")  # a path on the production host
    settings = load_settings(None, environ=env)  # every variable names a real setting
    if "ingest@" in path.name:
        assert args.ingest_only
        assert settings.mqtt.client_id == "lw-collector-host-1-ingest-1"
        assert settings.downlink.signing_key is None
    if "api@" in path.name:
        assert args.api_only
        assert settings.api.port == 8081
        assert settings.downlink.signing_key is None
    if "workers" in path.name:
        assert args.workers_only
        assert "LIENWATCH_DOWNLINK_SIGNING_KEY=/etc/lienwatch/keys/collector.key" in path.read_text()
