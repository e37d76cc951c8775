"""``lienwatch agent``: run the edge agent, or check its configuration.

``lienwatch agent run --config agent.toml`` runs until SIGTERM/SIGINT (clean shutdown:
flush, snapshot, short publish grace, offline state); SIGHUP reloads the configuration.
``lienwatch agent check --config agent.toml`` validates the file (and the sections owned by
the GNSS, CAN and rules modules) and the key files exactly as ``run`` does (exit 2 on a
missing, malformed or group/world-readable key) and prints it resolved as JSON.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from pathlib import Path
from types import FrameType

from edge.canbus import decoder_from_config
from edge.config import AgentConfig, ConfigError, load_config
from edge.errors import EdgeError
from edge.place_files import load_rules_places
from protocol.cli import help_text
from protocol.cli.key_files import load_private_key, load_public_key
from protocol.errors import KeyFileError, PlacesError, ProtocolError

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lienwatch agent", description=help_text(__doc__.split("\n\n")[0]))
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the agent until SIGTERM (SIGHUP reloads the configuration)")
    run.add_argument("--config", required=True, help="path of agent.toml")
    run.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    check = sub.add_parser("check", help="validate the configuration and print it resolved (JSON)")
    check.add_argument("--config", required=True, help="path of agent.toml")
    return parser


def _check(path: str) -> int:
    try:
        config = load_config(path)
        notes = validate_delegated_sections(config)
        # The key checks `agent run` makes (present, Ed25519, mode 0600): the systemd unit
        # runs `check` as its pre-start validation, so it must refuse what `run` refuses.
        load_private_key(config.device.key_file)
        if config.downlink.collector_public_key is not None:
            load_public_key(config.downlink.collector_public_key)
        check_writable_dir("[device] data_dir", config.device.data_dir)
        check_writable_dir("[outbox] path's folder", config.outbox.path.parent)
    except (ConfigError, KeyFileError) as exc:
        print(f"lienwatch agent check: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(config.resolved(), indent=2, sort_keys=False))
    for note in notes:
        print(note, file=sys.stderr)
    return 0


def _run(path: str, level: str) -> int:
    from edge.agent import Agent, StructuredFormatter

    try:
        config = load_config(path)
    except ConfigError as exc:
        print(f"lienwatch agent run: {exc}", file=sys.stderr)
        return 2
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(StructuredFormatter(config.device.log_format))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    try:
        agent = Agent(config)
    except (EdgeError, ProtocolError, OSError) as exc:  # key file, data folder, outbox, markets: say which, exit 1
        logging.getLogger("lienwatch.agent").error(  # noqa: TRY400 - one line, no traceback, for operators
            "start_failed", extra={"fields": {"error": f"{type(exc).__name__}: {exc}"}}
        )
        return 1

    def on_stop(_signum: int, _frame: FrameType | None) -> None:
        agent.request_stop()

    def on_reload(_signum: int, _frame: FrameType | None) -> None:
        agent.request_reload()

    signal.signal(signal.SIGTERM, on_stop)
    signal.signal(signal.SIGINT, on_stop)
    signal.signal(signal.SIGHUP, on_reload)
    return agent.run()


def main(argv: list[str]) -> int:
    """Entry point of ``lienwatch agent``."""
    args = _parser().parse_args(argv)
    if args.command == "check":
        return _check(args.config)
    return _run(args.config, args.log_level)


def check_writable_dir(what: str, path: Path) -> None:
    """The folder ``agent run`` writes to exists as a writable folder, or can be made (nothing is made here).

    Raises:
        ConfigError: naming ``what`` and the path.
    """
    if path.exists():
        if not path.is_dir():
            raise ConfigError(f"{what} {path} exists and is not a folder")
        if not os.access(path, os.W_OK | os.X_OK):
            raise ConfigError(f"{what} {path} is not writable by this user")
        return
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"{what} {path} does not exist and cannot be made ({parent} is not a writable folder)")


def validate_delegated_sections(config: AgentConfig) -> list[str]:
    """Load what [rules] and [can] name, without opening a device.

    The GNSS port opens lazily and the CAN bus is not created: only the DBC files, the
    signal map and the market and region files are read.

    Returns:
        Lines describing what was checked (``"[rules] ok (2 markets, 0 regions)"``, ...).

    Raises:
        ConfigError: a file named by a section is unusable (the message names the section).
    """
    try:
        markets, regions = load_rules_places(config.rules)
    except PlacesError as exc:
        raise ConfigError(f"[rules] rejected: {exc}") from exc
    notes = [f"[rules] ok ({len(markets)} markets, {len(regions)} regions)"]
    if config.can is not None:
        try:
            decoder_from_config(config.can)
        except ConfigError as exc:
            raise ConfigError(f"[can] rejected: {exc}") from exc
        notes.append("[can] ok (DBC and signal map load; the bus is opened at run time)")
    if config.gnss is not None:
        notes.append(f"[gnss] ok (url {config.gnss.url}, opened at run time)")
    return notes
