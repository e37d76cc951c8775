"""``stationary_near_market``: parked for days within a used-car market (severity high).

How this works: a *dwell* is a stretch of good fixes that stay within ``radius_m`` of a
spot. The spot (centre) is the coordinate-wise median of up to ``centre_samples``
positions taken at least ``centre_sample_interval_s`` apart; once that buffer is full the
centre is frozen, so a slow creep cannot drag the spot along. GNSS jitter moves single
fixes, never the median. Fixes with poor HDOP / few satellites never reach this rule.

A fix outside the radius is an *excursion*; only ``leave_fixes`` consecutive excursions
end the dwell (the new dwell starts at the first of them, seeded with their positions),
so one multipath outlier does not reset a three-day count. Time gaps do not end a dwell:
a box that sleeps for hours and finds the car at the same spot continues it, and the
state (start, samples, episode) is part of the engine snapshot, so power cycles do too.

When a dwell has lasted ``min_duration_s`` and its centre lies within a market's radius,
the rule raises once (episode ``stationary_near_market:{dwell_start_ms}``); it clears when
the dwell ends (the car left) or the market list no longer contains that spot. Only
fixes raise: tick() alone never proves the car is still there.
"""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from protocol import Alert, Fix, Severity
from protocol.geo import distance_m
from protocol.places import Place, PlaceType
from protocol.rule_names import RuleName

from ._rule import Rule, cleared, episode_id, raised
from .config import DwellConfig

__all__ = ["DwellState", "StationaryNearMarket"]

NAME = RuleName.STATIONARY_NEAR_MARKET.value


@dataclass(slots=True)
class DwellState:
    """Persisted state of the dwell rule (plain values, JSON-ready)."""

    start_ms: int | None = None
    last_ms: int | None = None
    fixes: int = 0
    sample_ms: list[int] = field(default_factory=list)
    sample_lat: list[float] = field(default_factory=list)
    sample_lon: list[float] = field(default_factory=list)
    centre_lat: float | None = None
    centre_lon: float | None = None
    out_ms: list[int] = field(default_factory=list)
    out_lat: list[float] = field(default_factory=list)
    out_lon: list[float] = field(default_factory=list)
    episode: str | None = None
    market_id: str | None = None


class StationaryNearMarket(Rule):
    """The dwell rule (see module docstring)."""

    key = NAME
    state_type = DwellState
    episodes = (("episode", NAME, Severity.HIGH),)

    def __init__(self, config: DwellConfig, markets: Sequence[Place], counters: Counter[str]) -> None:
        super().__init__(counters)
        self.config = config
        self.state = DwellState()
        self.set_markets(markets)

    def set_markets(self, markets: Sequence[Place]) -> None:
        """Replace the market list (other place types are ignored); an open episode is re-checked at the next fix."""
        self.markets = tuple(m for m in markets if m.type is PlaceType.USED_CAR_MARKET)
        self._market_ids = frozenset(m.id for m in self.markets)
        self._checked: tuple[float, float] | None = None  # centre last found to be near no market

    # ------------------------------------------------------------------ dwell bookkeeping

    def _begin(self, times: list[int], lats: list[float], lons: list[float]) -> None:
        s = self.state
        s.start_ms = times[0]
        s.last_ms = times[-1]
        s.fixes = len(times)
        s.sample_ms, s.sample_lat, s.sample_lon = [times[0]], [lats[0]], [lons[0]]
        for t, la, lo in zip(times[1:], lats[1:], lons[1:], strict=True):
            if t - s.sample_ms[-1] >= self.config.centre_sample_interval_s * 1000:
                s.sample_ms.append(t)
                s.sample_lat.append(la)
                s.sample_lon.append(lo)
        s.out_ms, s.out_lat, s.out_lon = [], [], []
        self._recentre()

    def _recentre(self) -> None:
        s = self.state
        s.centre_lat = statistics.median(s.sample_lat)
        s.centre_lon = statistics.median(s.sample_lon)
        self._checked = None

    def _evidence(self, now: int) -> dict[str, object]:
        s = self.state
        assert s.start_ms is not None
        assert s.centre_lat is not None
        assert s.centre_lon is not None
        return {
            "dwell_start_ms": s.start_ms,
            "dwell_s": round((now - s.start_ms) / 1000.0, 1),
            "centre_lat": round(s.centre_lat, 7),
            "centre_lon": round(s.centre_lon, 7),
            "fixes": s.fixes,
        }

    def _nearest_market(self) -> tuple[Place, float] | None:
        s = self.state
        assert s.centre_lat is not None
        assert s.centre_lon is not None
        best: tuple[Place, float] | None = None
        for market in self.markets:
            d = distance_m(s.centre_lat, s.centre_lon, market.lat, market.lon)
            if d <= market.radius_m and (best is None or d < best[1]):
                best = (market, d)
        return best

    # ------------------------------------------------------------------ events

    def on_fix(self, fix: Fix, good: bool, now: int) -> list[Alert]:
        if not good:
            return []
        s = self.state
        if s.start_ms is None or s.centre_lat is None or s.centre_lon is None:
            self._begin([now], [fix.lat], [fix.lon])
            return []
        if distance_m(s.centre_lat, s.centre_lon, fix.lat, fix.lon) <= self.config.radius_m:
            s.out_ms.clear()
            s.out_lat.clear()
            s.out_lon.clear()
            s.last_ms = now
            s.fixes += 1
            if (
                len(s.sample_ms) < self.config.centre_samples
                and now - s.sample_ms[-1] >= self.config.centre_sample_interval_s * 1000
            ):
                s.sample_ms.append(now)
                s.sample_lat.append(fix.lat)
                s.sample_lon.append(fix.lon)
                self._recentre()
            return self._check(now)
        s.out_ms.append(now)
        s.out_lat.append(fix.lat)
        s.out_lon.append(fix.lon)
        if len(s.out_ms) < self.config.leave_fixes:
            return []
        alerts: list[Alert] = []
        if s.episode is not None:
            evidence = self._evidence(s.out_ms[0]) | {
                "reason": "left",
                "left_at_ms": s.out_ms[0],
                "market_id": s.market_id,
                "distance_from_centre_m": round(distance_m(s.centre_lat, s.centre_lon, fix.lat, fix.lon), 1),
            }
            alerts.append(cleared(NAME, Severity.HIGH, now, s.episode, evidence))
            s.episode = None
            s.market_id = None
        self._begin(list(s.out_ms), list(s.out_lat), list(s.out_lon))
        return alerts

    def _check(self, now: int) -> list[Alert]:
        s = self.state
        assert s.start_ms is not None
        assert s.centre_lat is not None
        assert s.centre_lon is not None
        if s.episode is not None:
            if s.market_id in self._market_ids:
                return []
            # The market list changed under an open episode: re-evaluate the spot.
            found = self._nearest_market()
            if found is not None:
                s.market_id = found[0].id
                return []
            evidence = self._evidence(now) | {"reason": "market_removed", "market_id": s.market_id}
            alert = cleared(NAME, Severity.HIGH, now, s.episode, evidence)
            s.episode = None
            s.market_id = None
            self._checked = (s.centre_lat, s.centre_lon)
            return [alert]
        if now - s.start_ms < self.config.min_duration_s * 1000:
            return []
        if self._checked == (s.centre_lat, s.centre_lon):
            return []
        found = self._nearest_market()
        if found is None:
            self._checked = (s.centre_lat, s.centre_lon)
            return []
        market, distance = found
        s.episode = episode_id(NAME, s.start_ms)
        s.market_id = market.id
        evidence = self._evidence(now) | {
            "market_id": market.id,
            "market_name": market.name,
            "market_lat": round(market.lat, 7),
            "market_lon": round(market.lon, 7),
            "market_radius_m": market.radius_m,
            "market_datum": market.datum,
            "distance_to_market_m": round(distance, 1),
            "radius_m": self.config.radius_m,
        }
        return [raised(NAME, Severity.HIGH, now, s.episode, evidence)]
