"""The ``lienwatch`` command: one entry point, subcommands imported lazily.

Each subcommand lives in the package that owns it and exposes ``main(argv) -> int``.
Nothing is imported until a subcommand is chosen, so a vehicle terminal with only the
``edge`` extra installed never imports FastAPI or SQLAlchemy.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Sequence

__all__ = ["COMMANDS", "main"]

#: name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "agent": ("edge._agent_cli", "run the edge agent (GNSS + CAN -> rules -> signed batches -> MQTT)"),
    "gnss": ("edge._gnss_cli", "read NMEA from a serial URL and print fixes (like gpspipe -w)"),
    "can": ("edge._can_cli", "read a CAN interface through a DBC + signal map and print samples"),
    "replay": ("edge._replay_cli", "run recorded NMEA/CAN logs through the rules and print alerts"),
    "keys": ("edge._keys_cli", "generate Ed25519 device or collector keys"),
    "inspect": ("edge._inspect_cli", "verify and pretty-print a captured signed batch"),
    "sim": ("firmware_sim.cli", "run the vehicle simulator (NMEA + SLCAN on pseudo-terminals)"),
    "collector": ("collector.cli", "run and administer the cloud collector"),
    "demo": ("firmware_sim.rig.demo", "run the whole chain on embedded defaults"),
}


def _usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: lienwatch COMMAND [ARGS...]", "", "commands:"]
    lines += [f"  {name:<{width}}  {text}" for name, (_, text) in COMMANDS.items()]
    lines += ["", "Run 'lienwatch COMMAND --help' for a command's options."]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Dispatch ``lienwatch COMMAND ...`` to the command's module."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0 if args else 2
    if args[0] == "--version":
        from importlib.metadata import version

        print(f"lienwatch {version('lienwatch')}")
        return 0
    name, rest = args[0], args[1:]
    if name not in COMMANDS:
        print(f"lienwatch: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module_name = COMMANDS[name][0]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        print(
            f"lienwatch {name}: cannot import {exc.name!r}; install the matching extra, "
            f"e.g. pip install 'lienwatch[edge]' or 'lienwatch[collector]'",
            file=sys.stderr,
        )
        return 3
    entry: Callable[[list[str]], int] = module.main
    try:
        return int(entry(rest) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
