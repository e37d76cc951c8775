"""Batcher (sans-I/O): groups records into batches by time, size and urgency.

How this works
--------------
Records go into one open batch. It is closed when any of these holds:

* time: the data in it spans ``max_age`` of observation time, OR ``max_age`` of host
  monotonic time has passed since it was opened (a stalled or frozen GNSS clock must not
  hold data forever; a time-accelerated simulator must not make batches huge). While a
  rule has an open episode the shorter ``max_age_active`` applies; while the reporting
  policy says the car is parked, its longer idle age (:meth:`Batcher.set_idle_max_age`);
* size: the payload estimate reaches ``max_bytes`` or a record count reaches its limit
  (the protocol's LIMITS, or the configured lower ones);
* urgency: an :class:`~protocol.Alert` of severity HIGH or PANIC is never queued: it is
  returned at once in a batch of its own, and the open batch is left as it was.

The batcher never reads a clock: callers pass the host monotonic time (seconds) in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TypeVar

from protocol import LIMITS, Alert, DailyStats, Fix, Severity, SignalSample

from .config import BatchSettings
from .errors import UsageError
from .outbox import Priority

__all__ = ["BatchRecord", "Batcher", "BatcherError", "ClosedBatch", "estimate_bytes"]

BatchRecord = Fix | SignalSample | Alert | DailyStats

#: rough encoded sizes (bytes) used for the size budget; deliberately on the high side
_FIX_BYTES = 32
_SAMPLE_BYTES = 12
_ALERT_BYTES = 96
_STATS_BYTES = 96
_BASE_BYTES = 128


class BatcherError(UsageError):
    """A record the batcher cannot place (not a batch record type)."""

    reason = "batcher_error"


def estimate_bytes(record: BatchRecord) -> int:
    """Upper-end estimate of a record's share of an encoded batch payload."""
    if isinstance(record, Fix):
        return _FIX_BYTES
    if isinstance(record, SignalSample):
        value = record.value
        return _SAMPLE_BYTES + (len(value.encode()) if isinstance(value, str) else 0)
    if isinstance(record, Alert):
        return _ALERT_BYTES + len(record.episode) + len(repr(record.evidence))
    if isinstance(record, DailyStats):
        return _STATS_BYTES
    raise BatcherError(f"{type(record).__name__} is not a batch record (Fix, SignalSample, Alert, DailyStats)")


_R = TypeVar("_R")


def _halves(items: tuple[_R, ...]) -> tuple[tuple[_R, ...], tuple[_R, ...]]:
    middle = len(items) // 2
    return items[:middle], items[middle:]


@dataclass(frozen=True, slots=True)
class ClosedBatch:
    """The records of one batch, ready to be numbered and signed.

    Attributes:
        fixes: fixes in time order.
        samples: signal samples in arrival order.
        alerts: alert records.
        stats: daily statistics.
        reason: why it closed: ``age``, ``size``, ``urgent``, ``flush``.
    """

    fixes: tuple[Fix, ...] = ()
    samples: tuple[SignalSample, ...] = ()
    alerts: tuple[Alert, ...] = ()
    stats: tuple[DailyStats, ...] = ()
    reason: str = "flush"

    def __post_init__(self) -> None:
        if self.reason not in ("age", "size", "urgent", "flush"):
            raise BatcherError(f"closed batch reason {self.reason!r} is not age/size/urgent/flush")
        if any(b.time_ms < a.time_ms for a, b in zip(self.fixes, self.fixes[1:], strict=False)):
            raise BatcherError("closed batch fixes must be in time order")

    @property
    def priority(self) -> Priority:
        """Eviction class: alerts are kept, then statistics, then routine telemetry."""
        if self.alerts:
            return Priority.ALERT
        if self.stats:
            return Priority.STATS
        return Priority.ROUTINE

    @property
    def empty(self) -> bool:
        """True when the batch holds no record at all."""
        return not (self.fixes or self.samples or self.alerts or self.stats)

    def split(self) -> tuple[ClosedBatch, ClosedBatch]:
        """Two halves (by record lists), for a batch whose encoding came out too large."""
        f1, f2 = _halves(self.fixes)
        s1, s2 = _halves(self.samples)
        a1, a2 = _halves(self.alerts)
        d1, d2 = _halves(self.stats)
        return ClosedBatch(f1, s1, a1, d1, self.reason), ClosedBatch(f2, s2, a2, d2, self.reason)


class Batcher:
    """Collects records and decides when a batch closes (see the module docstring).

    Args:
        settings: the [batch] settings (may be replaced later with :meth:`set_settings`).
    """

    def __init__(self, settings: BatchSettings) -> None:
        self.settings = settings
        self._idle_max_age_s: float | None = None
        self._reset()
        self.counters: dict[str, int] = {"batches_closed": 0, "urgent_batches": 0, "records_batched": 0}

    def _reset(self) -> None:
        self._fixes: list[Fix] = []
        self._samples: list[SignalSample] = []
        self._alerts: list[Alert] = []
        self._stats: list[DailyStats] = []
        self._names: set[str] = set()
        self._bytes = _BASE_BYTES
        self._opened_mono: float | None = None
        self._first_obs_ms: int | None = None
        self._last_obs_ms: int | None = None

    def set_settings(self, settings: BatchSettings) -> None:
        """Apply new [batch] settings (SIGHUP); the open batch is judged by them from now on."""
        self.settings = settings

    @property
    def open_records(self) -> int:
        """Records in the open batch."""
        return len(self._fixes) + len(self._samples) + len(self._alerts) + len(self._stats)

    def set_idle_max_age(self, seconds: float | None) -> None:
        """Use ``seconds`` instead of ``max_age_s`` while no episode is open (None: back to ``max_age_s``)."""
        self._idle_max_age_s = seconds

    def _max_age_s(self, active: bool) -> float:
        if active:
            return self.settings.max_age_active_s
        return self.settings.max_age_s if self._idle_max_age_s is None else self._idle_max_age_s

    def add(self, record: BatchRecord, now_mono: float, *, active: bool = False) -> list[ClosedBatch]:
        """Add one record; return the batches that closed because of it (often none).

        Args:
            record: a Fix, SignalSample, Alert or DailyStats.
            now_mono: host monotonic time, seconds.
            active: True while a rule has an open episode (shorter time budget).
        """
        size = estimate_bytes(record)
        self.counters["records_batched"] += 1
        if isinstance(record, Alert) and record.severity >= Severity.HIGH:
            self.counters["urgent_batches"] += 1
            self.counters["batches_closed"] += 1
            return [ClosedBatch(alerts=(record,), reason="urgent")]
        closed: list[ClosedBatch] = []
        if isinstance(record, SignalSample) and record.name not in self._names:
            if len(self._names) >= LIMITS.MAX_SIGNAL_NAMES:
                closed += self._close("size")
            size += len(record.name)
        if self._opened_mono is None:
            self._opened_mono = now_mono
        self._bytes += size
        if isinstance(record, Fix):
            self._fixes.append(record)
        elif isinstance(record, SignalSample):
            self._samples.append(record)
            self._names.add(record.name)
        elif isinstance(record, Alert):
            self._alerts.append(record)
        else:
            self._stats.append(record)
        t = record.time_ms
        self._first_obs_ms = t if self._first_obs_ms is None else min(self._first_obs_ms, t)
        self._last_obs_ms = t if self._last_obs_ms is None else max(self._last_obs_ms, t)
        if self._full():
            closed += self._close("size")
        else:
            closed += self.poll(now_mono, active=active)
        return closed

    def _full(self) -> bool:
        s = self.settings
        return (
            self._bytes >= s.max_bytes
            or len(self._fixes) >= s.max_fixes
            or len(self._samples) >= s.max_samples
            or len(self._alerts) >= LIMITS.MAX_ALERTS
            or len(self._stats) >= LIMITS.MAX_STATS
        )

    def deadline(self, *, active: bool = False) -> float:
        """Host monotonic time at which the open batch closes at the latest (inf if none)."""
        if self._opened_mono is None:
            return math.inf
        return self._opened_mono + self._max_age_s(active)

    def poll(self, now_mono: float, *, active: bool = False) -> list[ClosedBatch]:
        """Close the open batch if its time budget is spent (observation or host time)."""
        if self._opened_mono is None:
            return []
        max_age_ms = self._max_age_s(active) * 1000.0
        assert self._first_obs_ms is not None
        assert self._last_obs_ms is not None
        if self._last_obs_ms - self._first_obs_ms >= max_age_ms or now_mono >= self.deadline(active=active):
            return self._close("age")
        return []

    def flush(self) -> list[ClosedBatch]:
        """Close the open batch now (shutdown); nothing if it is empty."""
        return self._close("flush")

    def _close(self, reason: str) -> list[ClosedBatch]:
        if self._opened_mono is None:
            return []
        batch = ClosedBatch(
            fixes=tuple(sorted(self._fixes, key=lambda f: f.time_ms)),
            samples=tuple(self._samples),
            alerts=tuple(self._alerts),
            stats=tuple(self._stats),
            reason=reason,
        )
        self._reset()
        self.counters["batches_closed"] += 1
        return [batch]
