"""The home-base learner: where the car usually spends its nights and its days (pure, on-device).

How this works:

* **Stays.** Good fixes (at most one per ``OBSERVE_EVERY_MS``, 30 s) within
  ``stay_radius_m`` of where a stay began belong to it; ``leave_fixes`` consecutive fixes
  outside end it (the newest of them starts the next).
  The time between two consecutive fixes of one stay (up to a day: a box that sleeps and
  finds the car where it left it) is time spent *there*.
* **Windows.** That time is split over the local night window and day window it overlaps
  (``night_start``-``night_end``, ``day_start``-``day_end`` in the configured zone, DST
  handled by zoneinfo). When a window is over (a fix at or after its end, or six hours
  after it with no fix at all), its *place* is the stay cluster where the car spent most
  of it, if that is at least ``min_presence_s``; else the window is undetermined.
* **Places.** A window's place joins the nearest known place within ``place_radius_m``
  (its centre moves to the visit-weighted mean) or becomes a new one. A place with
  ``usual_min_visits`` nights plus days is *usual* from the end of the window that made it
  so (``usual_since_ms``): the relocation rule only trusts places that were usual before
  the car went away, so a new place cannot hide a relocation by becoming usual itself.
  Places not visited for ``forget_days`` are forgotten; beyond ``max_places`` the least
  visited non-usual place goes first.

Precise centres stay in the engine snapshot on the device. What may leave it is
:attr:`PlaceState.id`, a salted hash of the rounded first centre (``id_salt``), and
distances rounded to kilometres.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

from protocol.geo import distance_m

from ._collateral_config import RelocationConfig

__all__ = ["HomeBaseLearner", "HomeBaseState", "PlaceState", "WindowPart", "WindowResult"]

MAX_ATTRIBUTED_GAP_MS = 86_400_000
#: the learner works in hours: one fix per 30 s is plenty (a 10 Hz drive costs nothing)
OBSERVE_EVERY_MS = 30_000
EXPIRE_AFTER_MS = 6 * 3_600_000
KINDS = ("night", "day")


@dataclass(slots=True)
class PlaceState:
    """A learned place (kept on the device; only ``id`` leaves it)."""

    id: str
    lat: float
    lon: float
    nights: int = 0
    days: int = 0
    first_ms: int = 0
    last_ms: int = 0
    usual_since_ms: int | None = None

    @property
    def visits(self) -> int:
        """Nights plus days spent here."""
        return self.nights + self.days


@dataclass(slots=True)
class WindowPart:
    """Time one stay spent inside one window (merged per stay)."""

    kind: str
    key: str
    start_ms: int
    end_ms: int
    stay_ms: int
    lat: float
    lon: float
    seconds: float


@dataclass(slots=True)
class HomeBaseState:
    """Persisted state of the learner."""

    observed_ms: int | None = None
    stay_ms: int | None = None
    stay_lat: float | None = None
    stay_lon: float | None = None
    last_ms: int | None = None
    out_count: int = 0
    parts: list[WindowPart] = field(default_factory=list)
    places: list[PlaceState] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class WindowResult:
    """A finished window: where the car spent it (``place`` None = undetermined)."""

    kind: str
    key: str
    start_ms: int
    end_ms: int
    place: PlaceState | None
    seconds: float


class HomeBaseLearner:
    """Learns usual night and day places from good fixes (see module docstring).

    Args:
        config: the ``[rules.relocation]`` thresholds.
        zone: local zone of the windows.
        state: the persisted state (shared with the relocation rule's snapshot).
    """

    def __init__(self, config: RelocationConfig, zone: ZoneInfo, state: HomeBaseState) -> None:
        self.config = config
        self.zone = zone
        self._windows: list[tuple[int, int, str, str]] = []  # (start_ms, end_ms, kind, key), derived
        self._covered = (0, -1)
        self._state = state
        self._first_end: int | None = None  # earliest end of a pending window (derived, None = recompute)

    @property
    def state(self) -> HomeBaseState:
        """The persisted state (shared with the relocation rule's snapshot)."""
        return self._state

    @state.setter
    def state(self, value: HomeBaseState) -> None:
        self._state = value
        self._first_end = None

    def _earliest_end(self) -> int | None:
        if self._first_end is None and self._state.parts:
            self._first_end = min(p.end_ms for p in self._state.parts)
        return self._first_end

    # ------------------------------------------------------------------ windows

    def _window_bounds(self, day: date, kind: str) -> tuple[int, int]:
        start_min, end_min = self.config.window_minutes(kind)
        end_day = day if end_min > start_min else day + timedelta(days=1)
        start = datetime(day.year, day.month, day.day, start_min // 60, start_min % 60, tzinfo=self.zone)
        end = datetime(end_day.year, end_day.month, end_day.day, end_min // 60, end_min % 60, tzinfo=self.zone)
        return int(start.timestamp() * 1000), int(end.timestamp() * 1000)

    def _midnight_ms(self, day: date) -> int:
        return int(datetime(day.year, day.month, day.day, tzinfo=self.zone).timestamp() * 1000)

    def _windows_over(self, a_ms: int, b_ms: int) -> list[tuple[int, int, str, str]]:
        if not (self._covered[0] <= a_ms and b_ms <= self._covered[1]):
            # windows starting on the day before a_ms's day through a few days after b_ms's day;
            # any interval between the midnights after the first and before the last day is covered
            first = datetime.fromtimestamp(a_ms / 1000, self.zone).date() - timedelta(days=1)
            last = datetime.fromtimestamp(b_ms / 1000, self.zone).date() + timedelta(days=3)
            windows = []
            day = first
            while day <= last:
                for kind in KINDS:
                    start, end = self._window_bounds(day, kind)
                    windows.append((start, end, kind, day.isoformat()))
                day += timedelta(days=1)
            self._windows = windows
            self._covered = (self._midnight_ms(first + timedelta(days=1)), self._midnight_ms(last))
        return [w for w in self._windows if w[0] < b_ms and a_ms < w[1]]

    def _attribute(self, a_ms: int, b_ms: int) -> None:
        s = self.state
        assert s.stay_ms is not None
        assert s.stay_lat is not None
        assert s.stay_lon is not None
        for start, end, kind, key in self._windows_over(a_ms, b_ms):
            seconds = (min(b_ms, end) - max(a_ms, start)) / 1000.0
            for part in s.parts:
                if part.kind == kind and part.key == key and part.stay_ms == s.stay_ms:
                    part.seconds += seconds
                    break
            else:
                s.parts.append(WindowPart(kind, key, start, end, s.stay_ms, s.stay_lat, s.stay_lon, seconds))
                self._first_end = None

    # ------------------------------------------------------------------ input

    def observe(self, time_ms: int, lat: float, lon: float) -> list[WindowResult]:
        """A good fix; returns the windows it closed, oldest first."""
        s = self.state
        cfg = self.config
        if s.observed_ms is not None and 0 <= time_ms - s.observed_ms < OBSERVE_EVERY_MS:
            return []
        s.observed_ms = time_ms
        if s.stay_ms is None or s.stay_lat is None or s.stay_lon is None or s.last_ms is None:
            s.stay_ms, s.stay_lat, s.stay_lon, s.last_ms, s.out_count = time_ms, lat, lon, time_ms, 0
        elif distance_m(s.stay_lat, s.stay_lon, lat, lon) <= cfg.stay_radius_m:
            if 0 < time_ms - s.last_ms <= MAX_ATTRIBUTED_GAP_MS:
                self._attribute(s.last_ms, time_ms)
            s.last_ms = time_ms
            s.out_count = 0
        else:
            s.out_count += 1
            if s.out_count >= cfg.leave_fixes:
                s.stay_ms, s.stay_lat, s.stay_lon, s.last_ms, s.out_count = time_ms, lat, lon, time_ms, 0
        return self._close(lambda end: end <= time_ms)

    def expire(self, now_ms: int) -> list[WindowResult]:
        """Close windows that ended more than six hours ago without a fix since."""
        first = self._earliest_end()
        if first is None or first + EXPIRE_AFTER_MS > now_ms:
            return []
        return self._close(lambda end: end + EXPIRE_AFTER_MS <= now_ms)

    # ------------------------------------------------------------------ places

    def _close(self, due: Callable[[int], bool]) -> list[WindowResult]:
        s = self.state
        first = self._earliest_end()
        if first is None or not due(first):
            return []
        closing = [p for p in s.parts if due(p.end_ms)]
        s.parts = [p for p in s.parts if not due(p.end_ms)]
        self._first_end = None
        windows: dict[tuple[str, str], list[WindowPart]] = {}
        for part in closing:
            windows.setdefault((part.kind, part.key), []).append(part)
        results = [self._decide(parts) for parts in windows.values()]
        results.sort(key=lambda r: (r.end_ms, r.kind))
        return results

    def _decide(self, parts: list[WindowPart]) -> WindowResult:
        cfg = self.config
        clusters: list[list[WindowPart]] = []
        for part in sorted(parts, key=lambda p: -p.seconds):
            for cluster in clusters:
                if distance_m(cluster[0].lat, cluster[0].lon, part.lat, part.lon) <= cfg.place_radius_m:
                    cluster.append(part)
                    break
            else:
                clusters.append([part])
        best = max(clusters, key=lambda c: sum(p.seconds for p in c))
        seconds = sum(p.seconds for p in best)
        first = parts[0]
        if seconds < cfg.min_presence_s:
            return WindowResult(first.kind, first.key, first.start_ms, first.end_ms, None, seconds)
        lat = sum(p.lat * p.seconds for p in best) / seconds
        lon = sum(p.lon * p.seconds for p in best) / seconds
        place = self._visit(first.kind, first.end_ms, lat, lon)
        return WindowResult(first.kind, first.key, first.start_ms, first.end_ms, place, seconds)

    def place_id(self, lat: float, lon: float) -> str:
        """The hashed, salted id of a place first seen at ``lat, lon`` (what leaves the device)."""
        text = f"{self.config.id_salt}|{lat:.3f},{lon:.3f}"
        return "p" + hashlib.blake2s(text.encode(), digest_size=5).hexdigest()

    def _visit(self, kind: str, end_ms: int, lat: float, lon: float) -> PlaceState:
        cfg = self.config
        s = self.state
        horizon = end_ms - cfg.forget_days * 86_400_000
        s.places = [p for p in s.places if p.last_ms >= horizon]
        nearest = self.nearest(lat, lon, s.places)
        if nearest is not None and nearest[1] <= cfg.place_radius_m:
            place = nearest[0]
            weight = place.visits
            place.lat = (place.lat * weight + lat) / (weight + 1)
            place.lon = (place.lon * weight + lon) / (weight + 1)
        else:
            if len(s.places) >= cfg.max_places:
                spare = min(s.places, key=lambda p: (p.usual_since_ms is not None, p.visits, p.last_ms))
                s.places.remove(spare)
            place = PlaceState(self.place_id(lat, lon), lat, lon, first_ms=end_ms)
            s.places.append(place)
        if kind == "night":
            place.nights += 1
        else:
            place.days += 1
        place.last_ms = end_ms
        if place.usual_since_ms is None and place.visits >= cfg.usual_min_visits:
            place.usual_since_ms = end_ms
        return place

    @staticmethod
    def nearest(lat: float, lon: float, places: list[PlaceState]) -> tuple[PlaceState, float] | None:
        """The place nearest to ``lat, lon`` among ``places`` and its distance in metres."""
        best: tuple[PlaceState, float] | None = None
        for place in places:
            d = distance_m(place.lat, place.lon, lat, lon)
            if best is None or d < best[1]:
                best = (place, d)
        return best

    def usual_as_of(self, time_ms: int) -> list[PlaceState]:
        """Places that were usual at ``time_ms``."""
        return [p for p in self.state.places if p.usual_since_ms is not None and p.usual_since_ms <= time_ms]
