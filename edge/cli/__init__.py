"""The edge's subcommands: ``agent``, ``gnss``, ``can`` and ``replay`` (``python -m edge COMMAND``).

Each module here exposes ``main(argv) -> int`` and is registered in the ``lienwatch.commands``
entry-point group, so ``lienwatch agent ...`` and ``python -m edge agent ...`` run the same
code. Nothing is imported until a command is chosen (not even :mod:`protocol`, whose batch
codec loads numpy), so importing :mod:`edge.cli` stays cheap.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Dispatch ``python -m edge COMMAND ...`` to one of the edge's own subcommands."""
    from protocol.cli import commands, dispatch

    return dispatch(sys.argv[1:] if argv is None else argv, commands("edge"), prog="python -m edge")
