"""``python -m collector.risk backtest|fit ...`` (same as ``lienwatch risk backtest|fit``)."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from .backtest import fit_main, main


def run(argv: Sequence[str] | None = None) -> int:
    """Dispatch ``backtest`` or ``fit`` with the remaining arguments."""
    args = list(sys.argv[1:] if argv is None else argv)
    commands = {"backtest": main, "fit": fit_main}
    if not args or args[0] not in commands:
        print("usage: python -m collector.risk {backtest,fit} [options]", file=sys.stderr)
        return 2
    return commands[args[0]](args[1:])


if __name__ == "__main__":
    sys.exit(run())
