"""``region_exit``: the vehicle is outside every allowed region (severity warning).

How this works: each good fix is tested against the regions' bounding boxes, then their
polygons (holes excluded). ``leave_fixes`` consecutive fixes outside every region raise
one episode (``region_exit:{first_outside_ms}``); ``return_fixes`` consecutive fixes
inside one clear it. With no region configured the rule is off. Replacing the regions
re-evaluates from the next fix; removing them all clears an open episode.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from protocol import Alert, Fix, Severity
from protocol.places import Region
from protocol.rule_names import RuleName

from ._rule import Rule, cleared, episode_id, raised
from .config import RegionExitConfig

__all__ = ["RegionExit", "RegionExitState"]

NAME = RuleName.REGION_EXIT.value


@dataclass(slots=True)
class RegionExitState:
    """Persisted state of the region rule."""

    outside_fixes: int = 0
    inside_fixes: int = 0
    first_outside_ms: int | None = None
    last_inside_ms: int | None = None
    last_inside_lat: float | None = None
    last_inside_lon: float | None = None
    episode: str | None = None


class RegionExit(Rule):
    """The region rule (see module docstring)."""

    key = NAME
    state_type = RegionExitState
    episodes = (("episode", NAME, Severity.WARNING),)

    def __init__(self, config: RegionExitConfig, regions: Sequence[Region], counters: Counter[str]) -> None:
        super().__init__(counters)
        self.config = config
        self.state = RegionExitState()
        self.set_regions(regions)

    def set_regions(self, regions: Sequence[Region]) -> None:
        """Replace the allowed regions."""
        self.regions = tuple(regions)
        self._boxes = [(r, r.bbox) for r in self.regions]

    def _inside(self, lat: float, lon: float) -> bool:
        for region, (lat0, lon0, lat1, lon1) in self._boxes:
            if lat0 <= lat <= lat1 and lon0 <= lon <= lon1 and region.contains(lat, lon):
                return True
        return False

    def advance(self, now: int, *, fix_arriving: bool = False) -> list[Alert]:
        s = self.state
        if self.regions or s.episode is None:
            return []
        alert = cleared(NAME, Severity.WARNING, now, s.episode, {"reason": "regions_removed"})
        s.episode = None
        s.outside_fixes = s.inside_fixes = 0
        return [alert]

    def on_fix(self, fix: Fix, good: bool, now: int) -> list[Alert]:
        if not good or not self.regions:
            return []
        s = self.state
        if self._inside(fix.lat, fix.lon):
            s.outside_fixes = 0
            s.inside_fixes += 1
            s.last_inside_ms, s.last_inside_lat, s.last_inside_lon = now, fix.lat, fix.lon
            if s.episode is not None and s.inside_fixes >= self.config.return_fixes:
                evidence = {"reason": "returned", "lat": round(fix.lat, 7), "lon": round(fix.lon, 7)}
                alert = cleared(NAME, Severity.WARNING, now, s.episode, evidence)
                s.episode = None
                return [alert]
            return []
        s.inside_fixes = 0
        s.outside_fixes += 1
        if s.outside_fixes == 1:
            s.first_outside_ms = now
        if s.episode is not None or s.outside_fixes < self.config.leave_fixes:
            return []
        assert s.first_outside_ms is not None
        s.episode = episode_id(NAME, s.first_outside_ms)
        evidence = {
            "first_outside_ms": s.first_outside_ms,
            "lat": round(fix.lat, 7),
            "lon": round(fix.lon, 7),
            "last_inside_ms": s.last_inside_ms,
            "last_inside_lat": None if s.last_inside_lat is None else round(s.last_inside_lat, 7),
            "last_inside_lon": None if s.last_inside_lon is None else round(s.last_inside_lon, 7),
            "regions": [r.id for r in self.regions[:16]],
        }
        return [raised(NAME, Severity.WARNING, now, s.episode, evidence)]
