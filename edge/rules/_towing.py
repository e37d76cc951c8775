"""``towing``: the car moves while its ignition is off (severity high).

How this works: when ``Vehicle.LowVoltageSystemState`` leaves ON/START (or is first seen
in another state), the rule takes the last good fix (if at most 5 s old, else the
next good fix) as the *reference*: where the car was left. While the ignition stays off,
a good fix more than ``max_move_m`` from the reference, or ``speed_fixes`` consecutive
good fixes with GNSS speed above ``speed_kmh``, raises one episode
(``towing:{detected_ms}``). Without any ignition value the rule stays silent (no CAN,
no opinion); if CAN falls silent after ignition off (unplugged box), the last state holds.

The episode clears when the ignition comes on, or when the car has not moved (no fix
further than 50 m from the last movement point and no fast fix) for ``settle_s``; the
spot where it settled becomes the new reference, so a second move raises a new episode.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from protocol import Alert, Fix, Severity
from protocol.geo import distance_m
from protocol.rule_names import RuleName

from ._rule import Rule, SampleValue, cleared, episode_id, raised
from .config import IGNITION_SIGNAL, TowingConfig

__all__ = ["Towing", "TowingState"]

NAME = RuleName.TOWING.value
IGNITION_ON = frozenset({"ON", "START"})
SETTLE_RADIUS_M = 50.0
REFERENCE_MAX_AGE_MS = 5_000  # a fix older than this may be metres of driving away from where the car stopped


@dataclass(slots=True)
class TowingState:
    """Persisted state of the towing rule."""

    ignition: str | None = None
    off_since_ms: int | None = None
    ref_lat: float | None = None
    ref_lon: float | None = None
    last_fix_ms: int | None = None
    last_lat: float | None = None
    last_lon: float | None = None
    fast_fixes: int = 0
    episode: str | None = None
    move_ms: int | None = None
    move_lat: float | None = None
    move_lon: float | None = None


class Towing(Rule):
    """The towing rule (see module docstring)."""

    key = NAME
    state_type = TowingState
    episodes = (("episode", NAME, Severity.HIGH),)

    def __init__(self, config: TowingConfig, counters: Counter[str]) -> None:
        super().__init__(counters)
        self.config = config
        self.signals = frozenset({IGNITION_SIGNAL})
        self.state = TowingState()

    def advance(self, now: int, *, fix_arriving: bool = False) -> list[Alert]:
        s = self.state
        if s.episode is None or s.move_ms is None or now - s.move_ms < self.config.settle_s * 1000:
            return []
        lat = None if s.move_lat is None else round(s.move_lat, 7)
        lon = None if s.move_lon is None else round(s.move_lon, 7)
        evidence = {"reason": "settled", "lat": lat, "lon": lon, "settled_ms": s.move_ms}
        alert = cleared(NAME, Severity.HIGH, now, s.episode, evidence)
        s.episode = None
        s.ref_lat, s.ref_lon = s.move_lat, s.move_lon
        s.fast_fixes = 0
        return [alert]

    def on_signal(self, name: str, value: SampleValue, now: int) -> list[Alert]:
        s = self.state
        state = str(value)
        was_on = s.ignition in IGNITION_ON
        first = s.ignition is None
        s.ignition = state
        if state in IGNITION_ON:
            s.off_since_ms = None
            s.ref_lat = s.ref_lon = None
            s.fast_fixes = 0
            if s.episode is not None:
                alert = cleared(NAME, Severity.HIGH, now, s.episode, {"reason": "ignition_on", "ignition": state})
                s.episode = None
                return [alert]
            return []
        if was_on or first:
            s.off_since_ms = now
            s.fast_fixes = 0
            recent = s.last_fix_ms is not None and now - s.last_fix_ms <= REFERENCE_MAX_AGE_MS
            s.ref_lat, s.ref_lon = (s.last_lat, s.last_lon) if recent else (None, None)
        return []

    def on_fix(self, fix: Fix, good: bool, now: int) -> list[Alert]:
        if not good:
            return []
        s = self.state
        s.last_fix_ms, s.last_lat, s.last_lon = now, fix.lat, fix.lon
        if s.off_since_ms is None:
            return []
        if s.ref_lat is None or s.ref_lon is None:
            s.ref_lat, s.ref_lon = fix.lat, fix.lon
            return []
        speed_kmh = None if fix.speed_mps is None else fix.speed_mps * 3.6
        fast = speed_kmh is not None and speed_kmh > self.config.speed_kmh
        s.fast_fixes = s.fast_fixes + 1 if fast else 0
        if s.episode is not None:
            assert s.move_lat is not None
            assert s.move_lon is not None
            if fast or distance_m(s.move_lat, s.move_lon, fix.lat, fix.lon) > SETTLE_RADIUS_M:
                s.move_ms, s.move_lat, s.move_lon = now, fix.lat, fix.lon
            return []
        moved = distance_m(s.ref_lat, s.ref_lon, fix.lat, fix.lon)
        if moved > self.config.max_move_m:
            cause = "moved"
        elif s.fast_fixes >= self.config.speed_fixes:
            cause = "speed"
        else:
            return []
        s.episode = episode_id(NAME, now)
        s.move_ms, s.move_lat, s.move_lon = now, fix.lat, fix.lon
        evidence = {
            "cause": cause,
            "ignition": s.ignition,
            "ignition_off_ms": s.off_since_ms,
            "ref_lat": round(s.ref_lat, 7),
            "ref_lon": round(s.ref_lon, 7),
            "lat": round(fix.lat, 7),
            "lon": round(fix.lon, 7),
            "distance_m": round(moved, 1),
            "speed_kmh": None if speed_kmh is None else round(speed_kmh, 1),
        }
        return [raised(NAME, Severity.HIGH, now, s.episode, evidence)]
