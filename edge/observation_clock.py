"""The observation clock: CAN samples stamped on GNSS time.

How this works: rules and batches run on observation time, not host time. GNSS fixes
carry their own time; CAN frames do not (python-can stamps them with the host clock), so
CAN samples are stamped on a GNSS-disciplined clock: the time of the last GNSS epoch plus the
host *monotonic* time elapsed since that epoch arrived. Until the first GNSS epoch, CAN samples
are held (at most ``HOLD_S`` seconds and ``HOLD_MAX`` samples; :mod:`edge.stamped_can`) and
then stamped at the first epoch's time, and the engine gets no clock ticks: feeding it host
time first would put its clock ahead of GNSS time and make it refuse every later fix as
stale. A box with no GNSS at all falls back to host time after ``HOLD_S``.

Why: host clocks on a T-BOX drift or are simply wrong after a cold start, and the
simulator plays scenarios with time acceleration: GNSS time runs at the scenario's speed
while the host clock does not. Anchoring on the last fix keeps CAN and GNSS on one time
line (errors bounded by one fix interval) in both cases, and monotonic time keeps a host
clock step (NTP, RTC reset) out of the picture.

Observation time never goes back. When the receiver's own clock does (a new GNSS time base,
``edge.gnss`` counter ``time_resets``), an epoch older than the anchor does not re-anchor:
the clock runs on from the last anchor on host monotonic time until GNSS time passes it
again. CAN samples stamped meanwhile stay on the rules engine's time line (which does not go
back either: docs/gnss.md, "Time going back"); anchoring on the older epoch would stamp them
behind the engine's clock and have them dropped as stale.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

__all__ = ["HOLD_MAX", "HOLD_S", "ObservationClock", "host_wall_ms"]


def host_wall_ms() -> int:
    """The host's wall clock, epoch milliseconds (batch creation times, sequence-file stamps)."""
    return int(time.time() * 1000)


#: CAN samples held while waiting for the first GNSS epoch (time and count bounds).
HOLD_S = 10.0
HOLD_MAX = 10_000


class ObservationClock:
    """GNSS-disciplined clock (see the module docstring for why).

    Args:
        monotonic: host monotonic clock, seconds.
        wall: host wall clock, seconds since the epoch.
        hold_s: how long to wait for a first GNSS epoch before running on host time.
    """

    def __init__(
        self,
        monotonic: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        hold_s: float = HOLD_S,
    ) -> None:
        self._monotonic = monotonic
        self._wall = wall
        self._lock = threading.Lock()
        self._anchor: tuple[int, float] | None = None  # (epoch time_ms, monotonic at arrival)
        self._started = monotonic()
        self._hold_s = hold_s
        self.free_running = False  # True when anchored on host time for want of GNSS
        self.time_went_back = 0  # GNSS epochs older than the anchor, not anchored on

    @property
    def anchored(self) -> bool:
        """True once a GNSS epoch has been seen, or the hold time ran out (host time then)."""
        with self._lock:
            if self._anchor is None and self._monotonic() - self._started >= self._hold_s:
                self._anchor = (int(self._wall() * 1000), self._monotonic())
                self.free_running = True
            return self._anchor is not None

    def on_fix(self, time_ms: int) -> None:
        """Re-anchor on a GNSS epoch (fix or no-fix with a valid time) that just arrived.

        An epoch older than the current GNSS anchor (the receiver's time went back) is
        ignored: observation time does not go back. Host time (free running) always yields.
        """
        with self._lock:
            anchor = self._anchor
            if anchor is not None and not self.free_running and time_ms < anchor[0]:
                self.time_went_back += 1
                return
            self._anchor = (time_ms, self._monotonic())
            self.free_running = False

    def now_ms(self) -> int:
        """Observation time now, epoch milliseconds (host time while not anchored)."""
        with self._lock:
            anchor = self._anchor
        if anchor is None:
            return int(self._wall() * 1000)
        fix_ms, at = anchor
        return fix_ms + int((self._monotonic() - at) * 1000)

    def stamp(self, host_ts: float) -> int:
        """Observation time of a frame python-can stamped at host wall time ``host_ts``.

        The frame arrived ``wall() - host_ts`` seconds ago (clamped to 0..10 s); that age is
        subtracted from :meth:`now_ms`.
        """
        age = min(max(self._wall() - host_ts, 0.0), 10.0)
        return self.now_ms() - int(age * 1000)

    def first_epoch_ms(self) -> int | None:
        """Time of the current anchor (what held samples are stamped with)."""
        with self._lock:
            return None if self._anchor is None else self._anchor[0]
