"""``relocation``: the car stopped coming home (severity high).

How this works: the home-base learner (:mod:`edge.rules._home_base`) turns good fixes into
finished night and day windows, each with its place (or undetermined), and learns which
places are usual. This rule counts two kinds of runs against the places that were usual
*when the run began* (so the place the car moved to never excuses itself by becoming
usual during the run):

* ``away_nights``: determined nights in a row at none of those places (an undetermined
  night, e.g. driven all night or the box off, neither counts nor breaks the run); a night
  at one of them ends the run. ``away_nights`` of them raise.
* ``far_days``: local days in a row whose every good fix (sampled once a minute) is more
  than ``far_km`` from all of them, the flight signature of a car taken far away and kept
  moving; ``far_days`` of them raise. A day without fixes neither counts nor breaks it.

Nothing is counted before the learner knows a usual place with ``usual_min_visits`` nights
(a usual day place alone, e.g. the office learned before home, is not enough). One episode at a
time (``relocation:{run_start_ms}``); it clears when the car spends a night at a place that
was usual when the run began (``returned``), or when all those places have been forgotten
(``forget_days`` without a visit: the learner has re-based on the new place, ``rebased``).
Evidence carries hashed place ids and whole kilometres only, never a coordinate.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from zoneinfo import ZoneInfo

from protocol import Alert, Fix, Severity
from protocol.rule_names import RuleName

from ._collateral_config import RelocationConfig
from ._daily_stats import local_day_bounds
from ._home_base import HomeBaseLearner, HomeBaseState, PlaceState, WindowResult
from ._rule import Rule, cleared, episode_id, raised

__all__ = ["Relocation", "RelocationState"]

NAME = RuleName.RELOCATION.value
FAR_SAMPLE_MS = 60_000


@dataclass(slots=True)
class RelocationState:
    """Persisted state of the rule and its learner."""

    learner: HomeBaseState = field(default_factory=HomeBaseState)
    away_nights: int = 0
    away_since_ms: int | None = None
    away_place: str | None = None
    away_distance_m: float | None = None
    far_day: str | None = None
    far_day_end_ms: int | None = None
    far_day_min_m: float | None = None
    far_day_first_ms: int | None = None
    far_last_ms: int | None = None
    far_days: int = 0
    far_since_ms: int | None = None
    episode: str | None = None
    episode_ref_ms: int | None = None
    cause: str | None = None


class Relocation(Rule):
    """The relocation rule (see module docstring)."""

    key = NAME
    state_type = RelocationState
    episodes = (("episode", NAME, Severity.HIGH),)

    def __init__(self, config: RelocationConfig, zone: ZoneInfo, counters: Counter[str]) -> None:
        super().__init__(counters)
        self.config = config
        self.zone = zone
        self._state = RelocationState()
        self.learner = HomeBaseLearner(config, zone, self._state.learner)

    @property
    def state(self) -> RelocationState:
        """The rule's state; the learner's state is part of it."""
        return self._state

    @state.setter
    def state(self, value: RelocationState) -> None:
        self._state = value
        self.learner.state = value.learner

    # ------------------------------------------------------------------ events

    def advance(self, now: int, *, fix_arriving: bool = False) -> list[Alert]:
        out = self._roll_day(now)
        for result in self.learner.expire(now):
            out.extend(self._window(result, now))
        return out

    def on_fix(self, fix: Fix, good: bool, now: int) -> list[Alert]:
        if not good:
            return []
        out: list[Alert] = []
        for result in self.learner.observe(now, fix.lat, fix.lon):
            out.extend(self._window(result, now))
        self._track_far(now, fix.lat, fix.lon)
        return out

    # ------------------------------------------------------------------ nights

    def _reference(self, ref_ms: int) -> list[PlaceState]:
        return self.learner.usual_as_of(ref_ms)

    def _window(self, result: WindowResult, now: int) -> list[Alert]:
        s = self.state
        place = result.place
        out: list[Alert] = []
        if s.episode is not None and s.episode_ref_ms is not None and not self._reference(s.episode_ref_ms):
            out.extend(self._clear(now, "rebased", None))
        if place is None or result.kind != "night":
            return out
        ref_ms = s.away_since_ms if s.away_since_ms is not None else result.start_ms
        if place.usual_since_ms is not None and place.usual_since_ms <= ref_ms:
            if s.episode is not None and s.episode_ref_ms is not None and place.usual_since_ms <= s.episode_ref_ms:
                out.extend(self._clear(now, "returned", place))
            s.away_nights, s.away_since_ms, s.away_place, s.away_distance_m = 0, None, None, None
            return out
        reference = self._reference(ref_ms)
        if not any(p.nights >= self.config.usual_min_visits for p in reference):
            return out  # no usual night place learned yet: nothing to be away from
        if s.away_since_ms is None:
            s.away_since_ms = result.start_ms
        s.away_nights += 1
        s.away_place = place.id
        nearest = HomeBaseLearner.nearest(place.lat, place.lon, reference)
        s.away_distance_m = None if nearest is None else nearest[1]
        if s.episode is None and s.away_nights >= self.config.away_nights:
            out.extend(self._raise(now, "away_nights", s.away_since_ms))
        return out

    # ------------------------------------------------------------------ far days

    def _track_far(self, now: int, lat: float, lon: float) -> None:
        s = self.state
        if s.far_day is None:
            s.far_day, s.far_day_end_ms = local_day_bounds(now, self.zone)
        if s.far_last_ms is not None and now - s.far_last_ms < FAR_SAMPLE_MS:
            return
        s.far_last_ms = now
        reference = self._reference(s.far_since_ms if s.far_since_ms is not None else now)
        nearest = HomeBaseLearner.nearest(lat, lon, reference)
        if nearest is None:
            return
        if s.far_day_min_m is None or nearest[1] < s.far_day_min_m:
            s.far_day_min_m = nearest[1]
        if s.far_day_first_ms is None:
            s.far_day_first_ms = now

    def _roll_day(self, now: int) -> list[Alert]:
        s = self.state
        if s.far_day_end_ms is None or now < s.far_day_end_ms:
            return []
        out: list[Alert] = []
        if s.far_day_min_m is not None:
            if s.far_day_min_m > self.config.far_km * 1000:
                if s.far_since_ms is None:
                    s.far_since_ms = s.far_day_first_ms
                s.far_days += 1
                if s.episode is None and s.far_days >= self.config.far_days and s.far_since_ms is not None:
                    out.extend(self._raise(now, "far_days", s.far_since_ms))
            else:
                s.far_days, s.far_since_ms = 0, None
        s.far_day, s.far_day_end_ms = local_day_bounds(now, self.zone)
        s.far_day_min_m = s.far_day_first_ms = None
        return out

    # ------------------------------------------------------------------ episodes

    def _raise(self, now: int, cause: str, since_ms: int) -> list[Alert]:
        s = self.state
        cfg = self.config
        s.episode = episode_id(NAME, since_ms)
        s.episode_ref_ms = since_ms
        s.cause = cause
        distance = s.away_distance_m if cause == "away_nights" else s.far_day_min_m
        evidence = {
            "cause": cause,
            "since_ms": since_ms,
            "away_nights": s.away_nights,
            "far_days": s.far_days,
            "place_id": s.away_place if cause == "away_nights" else None,
            "distance_km": None if distance is None else round(distance / 1000.0),
            "usual_place_ids": sorted(p.id for p in self._reference(since_ms)),
            "away_nights_limit": cfg.away_nights,
            "far_km": cfg.far_km,
            "far_days_limit": cfg.far_days,
        }
        return [raised(NAME, Severity.HIGH, now, s.episode, evidence)]

    def _clear(self, now: int, reason: str, place: PlaceState | None) -> list[Alert]:
        s = self.state
        assert s.episode is not None
        evidence = {
            "reason": reason,
            "cause": s.cause,
            "place_id": None if place is None else place.id,
            "away_nights": s.away_nights,
            "far_days": s.far_days,
        }
        alert = cleared(NAME, Severity.HIGH, now, s.episode, evidence)
        s.episode = s.episode_ref_ms = s.cause = None
        s.away_nights, s.away_since_ms, s.away_place, s.away_distance_m = 0, None, None, None
        s.far_days, s.far_since_ms = 0, None
        return [alert]
