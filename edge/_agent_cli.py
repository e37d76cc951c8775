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
import signal
import sys
from types import FrameType

from .config import AgentError, ConfigError, load_config, validate_delegated_sections

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lienwatch agent", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the agent until SIGTERM (SIGHUP reloads the configuration)")
    run.add_argument("--config", required=True, help="path of agent.toml")
    run.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    check = sub.add_parser("check", help="validate the configuration and print it resolved (JSON)")
    check.add_argument("--config", required=True, help="path of agent.toml")
    return parser


def _check(path: str) -> int:
    from .keys import KeyFileError, load_private_key, load_public_key

    try:
        config = load_config(path)
        notes = validate_delegated_sections(config)
        # The key checks `agent run` makes (present, Ed25519, mode 0600): the systemd unit
        # runs `check` as its pre-start validation, so it must refuse what `run` refuses.
        load_private_key(config.device.key_file)
        if config.downlink.collector_public_key is not None:
            load_public_key(config.downlink.collector_public_key)
    except (ConfigError, KeyFileError) as exc:
        print(f"lienwatch agent check: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(config.resolved(), indent=2, sort_keys=False))
    for note in notes:
        print(note, file=sys.stderr)
    return 0


def _run(path: str, level: str) -> int:
    from .agent import Agent, StructuredFormatter

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
    except Exception as exc:  # noqa: BLE001 - key/source/rules errors from other modules: say which, exit 1
        kind = "" if isinstance(exc, (AgentError, OSError)) else f"{type(exc).__name__}: "
        logging.getLogger("lienwatch.agent").error(  # noqa: TRY400 - one line, no traceback, for operators
            "start_failed", extra={"fields": {"error": f"{kind}{exc}"}}
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
