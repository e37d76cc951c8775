"""``lienwatch collector ...`` (also ``python -m collector ...``): run and administer the collector.

:mod:`collector.cli.commands` holds ``serve``, ``migrate``, ``devices``, ``dead-letters`` and
``api-key``; :mod:`collector.cli.loans` the loan book commands; :mod:`collector.cli.context`
what every command starts from (settings and database).

``main`` is the entry point. It is imported from :mod:`collector.cli.commands` on first use,
so a light submodule such as :mod:`collector.cli.broker_auth` (broker accounts, needed by the
test broker and the HIL rig) can be imported without loading the whole collector (the T-BOX
test mode runs without numpy).
"""

from __future__ import annotations

__all__ = ["main"]


def main(argv: list[str]) -> int:
    """Entry point of ``lienwatch collector`` (see :func:`collector.cli.commands.main`)."""
    from .commands import main as commands_main

    return commands_main(argv)
