"""Daily driving statistics: distance, driving time, harsh events, odometer per local day.

How this works:

* Distance follows good fixes while the vehicle moves (GNSS speed at or above
  ``moving_speed_kmh``): it is summed along points at least ``min_step_m`` apart, and a
  fix that is not moving resets the reference point, so a parked car's jitter never adds
  up. Fixes more than ``max_gap_s`` apart are not joined; a step implying more than
  ``max_speed_kmh`` is a glitch (counted ``stats_glitches``) and skipped.
* Driving time adds the interval between consecutive good fixes (at most ``max_gap_s``)
  when the later one is moving.
* Harsh acceleration / braking: speed change per second between speed points 1-3 s
  apart; one event per continuous harsh stretch. CAN ``Vehicle.Speed`` is used when it
  has arrived within the last 5 s, GNSS speed otherwise.
* The day is the local calendar day in the configured zone. The first event at or after
  the next local midnight emits the day's record with ``final=True`` and starts a new
  day; ``interim_s`` controls non-final records while data flows. The odometer carries
  over to the next day until a new reading arrives.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from protocol import DailyStats, Fix
from protocol.geo import distance_m

from ._rule import SampleValue
from .config import ODOMETER_SIGNAL, SPEED_SIGNAL, DailyStatsConfig

__all__ = ["DailyStatsState", "DailyStatsTracker", "local_day_bounds"]

CAN_SPEED_FRESH_MS = 5000
HARSH_MIN_DT_MS = 1000
HARSH_MAX_DT_MS = 3000


def local_day_bounds(time_ms: int, zone: ZoneInfo) -> tuple[str, int]:
    """(``YYYY-MM-DD`` local day of ``time_ms``, epoch ms of the next local midnight)."""
    local = datetime.fromtimestamp(time_ms / 1000.0, zone)
    nxt = local.date() + timedelta(days=1)
    midnight = datetime(nxt.year, nxt.month, nxt.day, tzinfo=zone)
    return local.date().isoformat(), int(midnight.timestamp() * 1000)


@dataclass(slots=True)
class DailyStatsState:
    """Persisted state of the statistics tracker."""

    day: str | None = None
    day_end_ms: int | None = None
    data_ms: int | None = None
    distance_m: float = 0.0
    driving_s: float = 0.0
    harsh_accel: int = 0
    harsh_brake: int = 0
    odometer_km: float | None = None
    interim_ms: int | None = None
    ref_ms: int | None = None
    ref_lat: float | None = None
    ref_lon: float | None = None
    prev_fix_ms: int | None = None
    speed_ref_ms: int | None = None
    speed_ref_mps: float | None = None
    accel_active: bool = False
    brake_active: bool = False
    can_speed_ms: int | None = None


class DailyStatsTracker:
    """Folds events into the current local day's figures (see module docstring)."""

    key = "daily_stats"
    state_type = DailyStatsState
    signals = frozenset({SPEED_SIGNAL, ODOMETER_SIGNAL})

    def __init__(self, config: DailyStatsConfig, zone: ZoneInfo, counters: Counter[str]) -> None:
        self.config = config
        self.zone = zone
        self.counters = counters
        self.state = DailyStatsState()

    def _record(self, final: bool) -> DailyStats:
        s = self.state
        assert s.day is not None
        assert s.data_ms is not None
        return DailyStats(
            day=s.day,
            time_ms=s.data_ms,
            distance_m=round(min(s.distance_m, 1e8), 1),
            driving_s=round(min(s.driving_s, 172_800.0), 1),
            harsh_accel=s.harsh_accel,
            harsh_brake=s.harsh_brake,
            odometer_km=s.odometer_km if s.odometer_km is None or 0 <= s.odometer_km <= 1e8 else None,
            final=final,
        )

    def _start_day(self, now: int) -> None:
        s = self.state
        s.day, s.day_end_ms = local_day_bounds(now, self.zone)
        s.distance_m = s.driving_s = 0.0
        s.harsh_accel = s.harsh_brake = 0
        s.data_ms = now
        s.interim_ms = now

    def advance(self, now: int) -> list[DailyStats]:
        """Roll the day over and emit interim records as time reaches ``now``."""
        s = self.state
        if s.day is None or s.day_end_ms is None:
            self._start_day(now)
            return []
        out: list[DailyStats] = []
        if now >= s.day_end_ms:
            out.append(self._record(final=True))
            self._start_day(now)
            return out
        s.data_ms = now
        interim_ms = self.config.interim_s * 1000
        if interim_ms > 0 and s.interim_ms is not None and now - s.interim_ms >= interim_ms:
            s.interim_ms = now
            out.append(self._record(final=False))
        return out

    # radon grade D: the per-fix arithmetic of the daily statistics (gaps, speed sanity,
    # distance, driving time, harsh events without CAN speed) reads best top to bottom.
    def on_fix(self, fix: Fix, good: bool, now: int) -> None:
        """Fold a fix into distance, driving time and (without CAN speed) harsh events."""
        if not good:
            return
        s = self.state
        cfg = self.config
        speed_kmh = None if fix.speed_mps is None else fix.speed_mps * 3.6
        gap_ms = cfg.max_gap_s * 1000
        if speed_kmh is None and s.ref_ms is not None and s.ref_lat is not None and s.ref_lon is not None:
            dt = (now - s.ref_ms) / 1000.0
            if 0 < dt <= cfg.max_gap_s:
                speed_kmh = distance_m(s.ref_lat, s.ref_lon, fix.lat, fix.lon) / dt * 3.6
        moving = speed_kmh is not None and speed_kmh >= cfg.moving_speed_kmh
        if moving and s.prev_fix_ms is not None and 0 < now - s.prev_fix_ms <= gap_ms:
            s.driving_s += (now - s.prev_fix_ms) / 1000.0
        s.prev_fix_ms = now
        if not moving or s.ref_ms is None or s.ref_lat is None or s.ref_lon is None or now - s.ref_ms > gap_ms:
            s.ref_ms, s.ref_lat, s.ref_lon = now, fix.lat, fix.lon
        else:
            step = distance_m(s.ref_lat, s.ref_lon, fix.lat, fix.lon)
            if step >= cfg.min_step_m:
                dt = (now - s.ref_ms) / 1000.0
                if dt > 0 and step / dt * 3.6 <= cfg.max_speed_kmh:
                    s.distance_m += step
                else:
                    self.counters["stats_glitches"] += 1
                s.ref_ms, s.ref_lat, s.ref_lon = now, fix.lat, fix.lon
        if fix.speed_mps is not None and (s.can_speed_ms is None or now - s.can_speed_ms > CAN_SPEED_FRESH_MS):
            self._speed_point(now, fix.speed_mps)

    def on_signal(self, name: str, value: SampleValue, now: int) -> None:
        """Fold a CAN speed (km/h) or odometer (km) sample."""
        s = self.state
        if name == ODOMETER_SIGNAL:
            s.odometer_km = float(value)
        else:
            s.can_speed_ms = now
            self._speed_point(now, float(value) / 3.6)

    def _speed_point(self, now: int, speed_mps: float) -> None:
        s = self.state
        if s.speed_ref_ms is None or s.speed_ref_mps is None or now - s.speed_ref_ms > HARSH_MAX_DT_MS:
            s.speed_ref_ms, s.speed_ref_mps = now, speed_mps
            return
        dt_ms = now - s.speed_ref_ms
        if dt_ms < HARSH_MIN_DT_MS:
            return
        accel = (speed_mps - s.speed_ref_mps) / (dt_ms / 1000.0)
        if accel >= self.config.harsh_accel_mps2:
            if not s.accel_active:
                s.harsh_accel += 1
            s.accel_active = True
        else:
            s.accel_active = False
        if -accel >= self.config.harsh_brake_mps2:
            if not s.brake_active:
                s.harsh_brake += 1
            s.brake_active = True
        else:
            s.brake_active = False
        s.speed_ref_ms, s.speed_ref_mps = now, speed_mps
