"""``gnss_lost`` and ``gnss_jamming``: no position while the car drives (severity high).

How this works: the car counts as moving while the last CAN ``Vehicle.Speed`` value is
above ``min_speed_kmh`` (the decoder sends changes, so the last value holds). The outage
is measured from the later of the last fix (any fix, good or poor: the receiver still
solves) and the moment the car started moving, so a car leaving an underground garage
gets ``lost_after_s`` to re-acquire before anything fires. When the outage reaches
``lost_after_s`` while moving, ``gnss_lost`` is raised (episode ``gnss_lost:{since_ms}``).

``gnss_jamming`` is raised with it (or later in the same outage) when the receiver still
tracks satellites but their mean C/N0, taken from the latest no-fix epoch, has collapsed:
below ``snr_floor_dbhz`` (20 dB-Hz; open-sky signals sit near 35-45 dB-Hz), or more than
``snr_drop_db`` (15 dB) under the running baseline, an exponential average of the mean
SNR of valid fixes with time constant ``baseline_tau_s``. An outage with no SNR at all
(nothing tracked: a tunnel, a cut antenna) is only ``gnss_lost``. Both episodes clear at
the next fix.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

from protocol import Alert, Fix, NoFix, Severity
from protocol.rule_names import RuleName

from ._rule import Rule, SampleValue, cleared, episode_id, raised
from .config import SPEED_SIGNAL, GnssLostConfig

__all__ = ["GnssLostState", "GnssWatch"]

LOST = RuleName.GNSS_LOST.value
JAMMING = RuleName.GNSS_JAMMING.value


@dataclass(slots=True)
class GnssLostState:
    """Persisted state of the GNSS outage rules."""

    first_seen_ms: int | None = None
    last_fix_ms: int | None = None
    speed_kmh: float | None = None
    moving_since_ms: int | None = None
    baseline_snr: float | None = None
    baseline_ms: int | None = None
    outage_snr: float | None = None
    outage_sats: int | None = None
    lost_episode: str | None = None
    lost_since_ms: int | None = None
    jam_episode: str | None = None


class GnssWatch(Rule):
    """Both GNSS outage rules (they share the outage bookkeeping)."""

    key = "gnss"
    state_type = GnssLostState
    episodes = (("lost_episode", LOST, Severity.HIGH), ("jam_episode", JAMMING, Severity.HIGH))

    def __init__(self, config: GnssLostConfig, counters: Counter[str]) -> None:
        super().__init__(counters)
        self.config = config
        self.signals = frozenset({SPEED_SIGNAL})
        self.state = GnssLostState()

    def _jammed(self) -> bool:
        s = self.state
        if s.outage_snr is None:
            return False
        if s.outage_snr < self.config.snr_floor_dbhz:
            return True
        return s.baseline_snr is not None and s.baseline_snr - s.outage_snr > self.config.snr_drop_db

    def advance(self, now: int, *, fix_arriving: bool = False) -> list[Alert]:
        s = self.state
        if s.first_seen_ms is None:
            s.first_seen_ms = now
        alerts: list[Alert] = []
        # A loss found only when the next fix arrives is a reporting gap (a box that slept, a
        # sparse log), not an outage anyone could act on: the fix is back. Real outages are
        # seen while they last (the agent ticks every second; receivers send no-fix epochs).
        if s.lost_episode is None and self.config.enabled and s.moving_since_ms is not None and not fix_arriving:
            since = max(s.last_fix_ms if s.last_fix_ms is not None else s.first_seen_ms, s.moving_since_ms)
            if now - since >= self.config.lost_after_s * 1000:
                s.lost_since_ms = since
                s.lost_episode = episode_id(LOST, since)
                evidence = {
                    "since_ms": since,
                    "last_fix_ms": s.last_fix_ms,
                    "speed_kmh": s.speed_kmh,
                    "sats_in_view": s.outage_sats,
                    "mean_snr": s.outage_snr,
                }
                alerts.append(raised(LOST, Severity.HIGH, now, s.lost_episode, evidence))
        if (
            s.lost_episode is not None
            and s.jam_episode is None
            and self.config.jamming_enabled
            and self._jammed()
        ):
            assert s.lost_since_ms is not None
            s.jam_episode = episode_id(JAMMING, s.lost_since_ms)
            evidence = {
                "since_ms": s.lost_since_ms,
                "mean_snr": s.outage_snr,
                "baseline_snr": None if s.baseline_snr is None else round(s.baseline_snr, 1),
                "snr_floor_dbhz": self.config.snr_floor_dbhz,
                "snr_drop_db": self.config.snr_drop_db,
                "sats_in_view": s.outage_sats,
                "speed_kmh": s.speed_kmh,
            }
            alerts.append(raised(JAMMING, Severity.HIGH, now, s.jam_episode, evidence))
        return alerts

    def on_fix(self, fix: Fix, good: bool, now: int) -> list[Alert]:
        s = self.state
        s.last_fix_ms = now
        s.outage_snr = None
        s.outage_sats = None
        if fix.mean_snr is not None:
            if s.baseline_snr is None or s.baseline_ms is None:
                s.baseline_snr = fix.mean_snr
            else:
                dt_s = max(0.0, (now - s.baseline_ms) / 1000.0)
                alpha = 1.0 - math.exp(-dt_s / self.config.baseline_tau_s)
                s.baseline_snr += alpha * (fix.mean_snr - s.baseline_snr)
            s.baseline_ms = now
        alerts: list[Alert] = []
        evidence = {"fix_ms": now, "lat": round(fix.lat, 7), "lon": round(fix.lon, 7), "mean_snr": fix.mean_snr}
        if s.jam_episode is not None:
            alerts.append(cleared(JAMMING, Severity.HIGH, now, s.jam_episode, evidence))
            s.jam_episode = None
        if s.lost_episode is not None:
            alerts.append(cleared(LOST, Severity.HIGH, now, s.lost_episode, evidence))
            s.lost_episode = None
            s.lost_since_ms = None
        return alerts

    def on_no_fix(self, event: NoFix, now: int) -> list[Alert]:
        s = self.state
        if event.mean_snr is not None:
            s.outage_snr = event.mean_snr
        if event.sats_in_view is not None:
            s.outage_sats = event.sats_in_view
        return self.advance(now) if s.lost_episode is not None and s.jam_episode is None else []

    def on_signal(self, name: str, value: SampleValue, now: int) -> list[Alert]:
        s = self.state
        speed = float(value)
        s.speed_kmh = speed
        if speed > self.config.min_speed_kmh:
            if s.moving_since_ms is None:
                s.moving_since_ms = now
        else:
            s.moving_since_ms = None
        return []
