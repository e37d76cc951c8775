"""The collector clock and its calendar: epoch milliseconds UTC, like the protocol.

Every long-running part takes a ``clock_ms`` callable (this module's :func:`wall_clock_ms`
by default) so tests drive time; :func:`utc_date` is the one conversion of such a time to
the UTC calendar day that due dates and retention cut-offs are compared with.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, date, datetime

__all__ = ["ClockMs", "utc_date", "wall_clock_ms"]

#: A clock: returns the current time in epoch milliseconds UTC.
ClockMs = Callable[[], int]


def wall_clock_ms() -> int:
    """The collector clock: epoch milliseconds UTC."""
    return time.time_ns() // 1_000_000


def utc_date(time_ms: int) -> date:
    """The UTC calendar date of an epoch-ms time."""
    return datetime.fromtimestamp(time_ms / 1000, tz=UTC).date()
