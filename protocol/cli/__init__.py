"""The ``lienwatch`` command: a dispatcher that owns no subcommand itself.

Each side registers its own subcommands in the entry-point group ``lienwatch.commands``
(``pyproject.toml``): ``agent``/``gnss``/``can``/``replay`` live in :mod:`edge.cli`,
``collector`` in the collector, ``sim``/``demo`` in ``firmware_sim``, ``keys``/``inspect``
here, with protocol's key files (:mod:`protocol.cli.key_files`). A subcommand is a
``main(argv: list[str]) -> int`` function; its module is imported only when the command
runs (or when ``--help`` asks for the one-line descriptions), so a vehicle terminal with
only the ``edge`` extra never imports FastAPI or SQLAlchemy.

:mod:`protocol` itself does no I/O; this subpackage is where its formats meet the file
system and the command line.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping, Sequence
from importlib.metadata import EntryPoint, PackageNotFoundError, entry_points, version

__all__ = ["ENTRY_POINT_GROUP", "commands", "dispatch", "help_text", "lienwatch_version", "main"]

#: The entry-point group every side registers its subcommands in.
ENTRY_POINT_GROUP = "lienwatch.commands"
EXIT_USAGE = 2
EXIT_MISSING_EXTRA = 3
EXIT_INTERRUPTED = 130


def commands(package: str | None = None) -> dict[str, EntryPoint]:
    """The registered subcommands by name, optionally only those implemented in ``package``."""
    found = {
        ep.name: ep
        for ep in entry_points(group=ENTRY_POINT_GROUP)
        if package is None or ep.module == package or ep.module.startswith(f"{package}.")
    }
    return dict(sorted(found.items()))


def lienwatch_version() -> str:
    """The installed distribution's version (the one place it is written is pyproject.toml)."""
    try:
        return version("lienwatch")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "unknown"


def help_text(doc: str | None) -> str:
    """A docstring paragraph as ``--help`` prints it: the reST literal markup (double backticks) removed."""
    return (doc or "").replace("``", "")


def _summary(entry: EntryPoint) -> str:
    """The first line of the command module's docstring, without its ``lienwatch X``: prefix."""
    try:
        module = importlib.import_module(entry.module)
    except ImportError as exc:
        return f"(not available here: cannot import {getattr(exc, 'name', None) or entry.module!r})"
    first = (module.__doc__ or "").strip().splitlines()[0] if module.__doc__ else ""
    head, sep, tail = first.partition("``: ")
    return help_text(tail.strip() if sep and head.startswith("``") else first)


def _usage(prog: str, available: Mapping[str, EntryPoint]) -> str:
    width = max(map(len, available), default=0)
    lines = [f"usage: {prog} COMMAND [ARGS...]", "", "commands:"]
    lines += [f"  {name:<{width}}  {_summary(entry)}" for name, entry in available.items()]
    if not available:
        lines.append(f"  (none registered: is lienwatch installed? entry-point group {ENTRY_POINT_GROUP!r})")
    lines += ["", f"Run '{prog} COMMAND --help' for a command's options."]
    return "\n".join(lines)


def dispatch(argv: Sequence[str], available: Mapping[str, EntryPoint], *, prog: str) -> int:
    """Run ``prog COMMAND ARGS...`` with the command chosen from ``available``.

    Returns:
        The command's exit status; 2 for a usage error, 3 when the command's module needs
        an extra that is not installed, 130 on Ctrl-C.
    """
    args = list(argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(_usage(prog, available))
        return 0 if args else EXIT_USAGE
    if args[0] == "--version":
        print(f"lienwatch {lienwatch_version()}")
        return 0
    name, rest = args[0], args[1:]
    entry = available.get(name)
    if entry is None:
        print(f"{prog}: unknown command {name!r}\n\n{_usage(prog, available)}", file=sys.stderr)
        return EXIT_USAGE
    try:
        command: Callable[[list[str]], int] = entry.load()
    except ModuleNotFoundError as exc:
        print(
            f"{prog} {name}: cannot import {exc.name!r}; install the matching extra, "
            f"e.g. pip install 'lienwatch[edge]' or 'lienwatch[collector]'",
            file=sys.stderr,
        )
        return EXIT_MISSING_EXTRA
    try:
        return int(command(rest) or 0)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``lienwatch`` (and ``python -m protocol``): every registered subcommand."""
    return dispatch(sys.argv[1:] if argv is None else argv, commands(), prog="lienwatch")
