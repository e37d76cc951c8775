"""``lienwatch collector ...`` (also ``python -m collector ...``): run and administer the collector.

:mod:`collector.cli.commands` holds ``serve``, ``migrate``, ``devices``, ``dead-letters`` and
``api-key``; :mod:`collector.cli.loans` the loan book commands; :mod:`collector.cli.context`
what every command starts from (settings and database).
"""

from .commands import main

__all__ = ["main"]
