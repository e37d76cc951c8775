"""Reporting policy (sans-I/O): which of the records the rules saw are uploaded.

How this works
--------------
The rules engine sees every decoded fix and signal sample; this policy sits after it and
before the batcher and decides what goes over the paid cellular link. Nothing it drops is
needed on the device afterwards: the daily statistics are computed from full-rate data by
the rules and uploaded as they are.

* **Moving** (the default state): fixes go through an online track simplification (the
  "opening window" algorithm): the last uploaded fix is the anchor, the fixes since are
  held; when the segment from the anchor to a new fix would pass farther than
  ``moving_tolerance_m`` from any held fix, the newest held fix is uploaded and becomes the
  anchor. So every full-rate fix lies within the tolerance of the uploaded polyline
  (measured on a local flat projection, exact to centimetres over a few kilometres). A fix
  also goes up at least every ``moving_max_interval_s``. Numeric signals go up at most every
  ``moving_sample_interval_s`` per signal; state signals (booleans, text: doors, ignition)
  on every change.
* **Parked**: the ignition is not on (or no ignition signal is known) and the car has been
  stationary (speed below ``parked_speed_mps``) for ``parked_after_s``. Entering it
  uploads the held track end and the parking position; then one fix per
  ``parked_fix_interval_s``, numeric signals per ``parked_sample_interval_s``, and the
  agent closes batches after ``parked_batch_s`` instead of ``[batch] max_age_s``. Moving
  again (ignition on, or a fix faster than the threshold, e.g. a tow) uploads that fix at once.
* **Around an alert** (raised or cleared): the full-rate fixes and samples of the last
  ``evidence_before_s`` that were not uploaded go up with the alert, and every record until
  ``evidence_after_s`` after it. The batcher sends high-severity alerts at once and closes
  batches within ``[batch] max_age_active_s`` while an episode is open.

Every record is uploaded at most once and fixes stay in time order per batch (the batcher
sorts them). The policy never reads a clock: it runs on observation time, so replay and the
live agent decide alike.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

from protocol import Alert, DailyStats, Fix, SignalSample

from .config import ReportingSettings

__all__ = ["IGNITION_SIGNAL", "ReportingPolicy", "TrackSimplifier"]

BatchRecord = Fix | SignalSample | Alert | DailyStats

#: The canonical ignition signal (docs/signals.md) and the values meaning "engine on".
IGNITION_SIGNAL = "Vehicle.LowVoltageSystemState"
_IGNITION_ON = frozenset({"ON", "START"})
_EARTH_M = 6_371_008.8
_DEG = math.pi / 180.0
#: a speed-less receiver: a fix this close to where stillness began counts as stationary
_STILL_RADIUS_M = 25.0
#: held fixes at most (a 10 Hz receiver creeping in traffic): the newest goes up beyond it
_MAX_HELD = 1200


def _local_xy(lat0: float, lon0: float, lat: float, lon: float) -> tuple[float, float]:
    """Metres east/north of (lat0, lon0) on a local equirectangular projection."""
    return (lon - lon0) * _DEG * _EARTH_M * math.cos(lat0 * _DEG), (lat - lat0) * _DEG * _EARTH_M


def segment_distance_m(px: float, py: float, bx: float, by: float) -> float:
    """Distance from point P to the segment from the origin to B (local metres)."""
    length2 = bx * bx + by * by
    if length2 == 0.0:
        return math.hypot(px, py)
    t = max(0.0, min(1.0, (px * bx + py * by) / length2))
    return math.hypot(px - t * bx, py - t * by)


@dataclass(slots=True)
class TrackSimplifier:
    """Online opening-window simplification with a distance bound (see the module docstring)."""

    tolerance_m: float
    max_interval_ms: int
    anchor: Fix | None = None
    _held: list[tuple[Fix, float, float]] = field(default_factory=list)

    def reset(self, anchor: Fix | None) -> None:
        """Start over from ``anchor`` (a fix that was uploaded), holding nothing."""
        self.anchor = anchor
        self._held.clear()

    @property
    def held(self) -> list[Fix]:
        """Fixes held since the anchor (not uploaded)."""
        return [fix for fix, _x, _y in self._held]

    def offer(self, fix: Fix, *, force: bool = False) -> list[Fix]:
        """Take one full-rate fix; return the fixes to upload now (zero or one, rarely two).

        ``force`` uploads ``fix`` whatever the bound says (with the held end first if the
        segment to ``fix`` would not cover the held fixes).
        """
        anchor = self.anchor
        if anchor is None:
            self.reset(fix)
            return [fix]
        out: list[Fix] = []
        x, y = _local_xy(anchor.lat, anchor.lon, fix.lat, fix.lon)
        if self._held and any(segment_distance_m(hx, hy, x, y) > self.tolerance_m for _f, hx, hy in self._held):
            out += self.flush()
            assert self.anchor is not None
            anchor = self.anchor
            x, y = _local_xy(anchor.lat, anchor.lon, fix.lat, fix.lon)
        if force or fix.time_ms - anchor.time_ms >= self.max_interval_ms or len(self._held) >= _MAX_HELD:
            out.append(fix)
            self.reset(fix)
            return out
        self._held.append((fix, x, y))
        return out

    def flush(self) -> list[Fix]:
        """Upload the newest held fix (the track's current end) and make it the anchor."""
        if not self._held:
            return []
        last = self._held[-1][0]
        self.reset(last)
        return [last]


class ReportingPolicy:
    """Decides, record by record, what is uploaded (see the module docstring).

    Args:
        settings: the [reporting] settings (replace later with :meth:`set_settings`).
    """

    def __init__(self, settings: ReportingSettings) -> None:
        self.settings = settings
        self.simplifier = TrackSimplifier(settings.moving_tolerance_m, int(settings.moving_max_interval_s * 1000))
        self.parked = False
        self.counters: dict[str, int] = {
            "reporting_fixes_in": 0,
            "reporting_fixes_up": 0,
            "reporting_samples_in": 0,
            "reporting_samples_up": 0,
            "reporting_evidence_up": 0,
            "reporting_parked_entered": 0,
        }
        self._ignition_on = False
        self._still_since: Fix | None = None
        self._last_parked_fix_ms: int | None = None
        self._sample_up: dict[str, tuple[int, object]] = {}
        self._recent: deque[Fix | SignalSample] = deque()
        self._evidence_until_ms = -1

    def set_settings(self, settings: ReportingSettings) -> None:
        """New settings (a reload or a downlink ``reporting`` section); the track continues."""
        self.settings = settings
        self.simplifier.tolerance_m = settings.moving_tolerance_m
        self.simplifier.max_interval_ms = int(settings.moving_max_interval_s * 1000)

    @property
    def batch_max_age_s(self) -> float | None:
        """How long a batch may stay open now: ``parked_batch_s`` while parked, else None (the [batch] age)."""
        return self.settings.parked_batch_s if self.settings.enabled and self.parked else None

    def offer(self, record: BatchRecord) -> list[BatchRecord]:
        """Take one record the rules have seen; return the records to upload now, in order."""
        if isinstance(record, Fix):
            self.counters["reporting_fixes_in"] += 1
            out: list[BatchRecord] = list(self._fix(record)) if self.settings.enabled else [record]
        elif isinstance(record, SignalSample):
            self.counters["reporting_samples_in"] += 1
            out = [record] if not self.settings.enabled or self._sample_goes_up(record) else self._hold(record)
        elif isinstance(record, Alert) and self.settings.enabled:
            out = [*self._release_evidence(record.time_ms), record]
        else:
            out = [record]
        for item in out:
            if isinstance(item, Fix):
                self.counters["reporting_fixes_up"] += 1
            elif isinstance(item, SignalSample):
                self.counters["reporting_samples_up"] += 1
                self._sample_up[item.name] = (item.time_ms, item.value)
        return out

    # ------------------------------------------------------------------ fixes

    def _fix(self, fix: Fix) -> list[Fix]:
        was_parked = self.parked
        self._update_motion(fix)
        if fix.time_ms <= self._evidence_until_ms:
            self.simplifier.reset(fix)
            return [fix]
        if self.parked:
            if not was_parked:
                self.counters["reporting_parked_entered"] += 1
                self._last_parked_fix_ms = fix.time_ms
                return self._sent(self.simplifier.offer(fix, force=True))
            assert self._last_parked_fix_ms is not None
            if fix.time_ms - self._last_parked_fix_ms >= self.settings.parked_fix_interval_s * 1000:
                self._last_parked_fix_ms = fix.time_ms
                return self._sent([fix])
            self._hold(fix)
            return []
        if was_parked:  # moving again: this fix at once, the track starts here
            self.simplifier.reset(fix)
            return self._sent([fix])
        up = self.simplifier.offer(fix)
        if all(f is not fix for f in up):
            self._hold(fix)
        return self._sent(up)

    def _update_motion(self, fix: Fix) -> None:
        s = self.settings
        if fix.speed_mps is not None:
            still = fix.speed_mps < s.parked_speed_mps
        else:
            ref = self._still_since
            still = ref is not None and _distance_m(ref, fix) < _STILL_RADIUS_M
        if not still or self._ignition_on:
            self._still_since = fix if not still and fix.speed_mps is None else None
            self.parked = False
            return
        if self._still_since is None:
            self._still_since = fix
        self.parked = fix.time_ms - self._still_since.time_ms >= s.parked_after_s * 1000

    def _sent(self, fixes: list[Fix]) -> list[Fix]:
        if fixes:
            sent = {id(f) for f in fixes}
            self._recent = deque(r for r in self._recent if id(r) not in sent)
        return fixes

    # ------------------------------------------------------------------ samples

    def _sample_goes_up(self, sample: SignalSample) -> bool:
        if sample.name == IGNITION_SIGNAL:
            self._ignition_on = sample.value in _IGNITION_ON
            if self._ignition_on:
                self.parked = False
                self._still_since = None
        if sample.time_ms <= self._evidence_until_ms:
            return True
        last = self._sample_up.get(sample.name)
        if last is None:
            return True
        value = sample.value
        if isinstance(value, (bool, str)):
            return value != last[1]
        interval = self.settings.parked_sample_interval_s if self.parked else self.settings.moving_sample_interval_s
        return sample.time_ms - last[0] >= interval * 1000

    # ------------------------------------------------------------------ evidence

    def _hold(self, record: Fix | SignalSample) -> list[BatchRecord]:
        """Keep a record that did not go up, for an alert's evidence window; upload nothing."""
        recent = self._recent
        recent.append(record)
        horizon = record.time_ms - int(self.settings.evidence_before_s * 1000)
        while recent and recent[0].time_ms < horizon:
            recent.popleft()
        return []

    def _release_evidence(self, alert_ms: int) -> list[BatchRecord]:
        s = self.settings
        start = alert_ms - int(s.evidence_before_s * 1000)
        released: list[BatchRecord] = [r for r in self._recent if r.time_ms >= start]
        self._recent.clear()
        self._evidence_until_ms = max(self._evidence_until_ms, alert_ms + int(s.evidence_after_s * 1000))
        fixes = [r for r in released if isinstance(r, Fix)]
        if fixes:  # the simplifier's held fixes went up as evidence: the track continues from the newest
            self.simplifier.reset(max(fixes, key=lambda f: f.time_ms))
        self.counters["reporting_evidence_up"] += len(released)
        return released


def _distance_m(a: Fix, b: Fix) -> float:
    x, y = _local_xy(a.lat, a.lon, b.lat, b.lon)
    return math.hypot(x, y)
