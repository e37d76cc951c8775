"""HIL suite fixtures and reporting: the whole chain in separate processes, started per test.

* ``chain``: a fresh :class:`chain_driver.Chain` (private broker, collector on SQLite, the
  device registered, the sample loan book imported) in the test's tmp dir; torn down after
  the test, which then fails if any process the rig started is still there.
* Every test here is in the ``hil`` tier (marked by tests/tiers.py; ``-m "not hil"`` skips the suite).
* A failing test gets the tail of every process log (``rig.logs()``) in its report.
* Latency figures recorded with the ``latency_report`` fixture are printed as a table at the
  end of the session and written as JSON to ``$LIENWATCH_HIL_REPORT`` (default:
  ``hil-report.json`` in the session's base temp dir, next to the rigs' work dirs).
* ``LIENWATCH_HIL_GNSS_URL`` (+ ``LIENWATCH_HIL_CAN_INTERFACE``, ``LIENWATCH_HIL_CAN_CHANNEL``)
  points the suite at a real T-BOX; see docs/hil.md for what runs then.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from chain_driver import DEVICE_ID, Chain, Hardware

from firmware_sim.rig import ChainRig

_REPORT_KEY = pytest.StashKey[list[dict[str, Any]]]()
_BASE_KEY = pytest.StashKey[Path]()
_RIG_KEY = pytest.StashKey[ChainRig]()


@pytest.fixture(scope="session")
def hardware() -> Hardware | None:
    """The real T-BOX configured in the environment, or None (simulator)."""
    return Hardware.from_env()


@pytest.fixture(scope="session")
def hil_keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Device and collector keys, generated once per session and copied into each rig."""
    workdir = tmp_path_factory.mktemp("hil-keys")
    rig = ChainRig(workdir, device_id=DEVICE_ID, say=lambda _line: None)
    rig.generate_keys()
    return rig.keys_dir


@pytest.fixture
def chain(request: pytest.FixtureRequest, tmp_path: Path, hil_keys: Path, hardware: Hardware | None) -> Iterator[Chain]:
    """A fresh chain up to the collector; the test plays a scenario on it.

    The agent logs in to the (TLS) broker with its password, or, parametrized indirectly
    with ``"certificate"``, with a client certificate from the rig's CA.
    """
    lines: list[str] = []
    identity = str(getattr(request, "param", "password"))
    rig = ChainRig(tmp_path / "rig", device_id=DEVICE_ID, say=lines.append, agent_identity=identity)
    request.node.stash[_RIG_KEY] = rig
    try:
        yield Chain(rig, hardware)
    finally:
        rig.stop()
    left = rig.leftovers()
    assert not left, f"processes left behind by the rig: {left}"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    rig = item.stash.get(_RIG_KEY, None)
    if rig is not None and report.failed:
        report.sections.append((f"chain logs ({report.when})", rig.logs(lines=60)))
    return report


@pytest.fixture(scope="session")
def latency_report(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    """Append one dict per measurement; printed and written at the end of the session."""
    config = request.config
    config.stash[_BASE_KEY] = tmp_path_factory.getbasetemp()
    return config.stash.setdefault(_REPORT_KEY, [])


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    rows = config.stash.get(_REPORT_KEY, [])
    if not rows:
        return
    path = Path(os.environ.get("LIENWATCH_HIL_REPORT") or config.stash[_BASE_KEY] / "hil-report.json")
    path.write_text(json.dumps({"latency": rows}, indent=2) + "\n")
    tr = terminalreporter
    tr.section("HIL latency: simulated event -> risk change visible in the API")
    header = (
        f"{'scenario':<18} {'trigger':<15} {'level':<9} {'event->alert time':>17} "
        f"{'alert->committed':>16} {'alert->visible':>14} {'event->visible':>14}"
    )
    tr.write_line(header)
    for r in rows:

        def fmt(key: str, row: dict[str, Any] = r) -> str:
            value = row.get(key)
            return f"{value:.2f} s" if isinstance(value, (int, float)) else "-"

        tr.write_line(
            f"{r['scenario']:<18} {r.get('trigger') or '(clock)':<15} {r['level']:<9} "
            f"{fmt('event_to_alert_time_s'):>17} {fmt('alert_to_committed_s'):>16} "
            f"{fmt('alert_to_visible_s'):>14} {fmt('event_to_visible_s'):>14}"
        )
    tr.write_line("event = the simulator's wall_time of the trigger event; alert time = when the simulated")
    tr.write_line("clock reached the alert's observation time; committed = the collector's risk event")
    tr.write_line("(- when the level did not change);")
    tr.write_line("visible = first API poll (every 0.25 s) showing the scenario's reason. Rerun:")
    tr.write_line("  .venv/bin/python -m pytest -q -p no:cacheprovider hil-tests/test_scenarios.py")
    tr.write_line(f"written to {path}")
