"""Route geometry on WGS-84: leg lengths, bearings and constant-speed travel along legs."""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field

__all__ = ["EARTH_RADIUS_M", "Route", "RoutePoint", "bearing_deg", "distance_m"]

EARTH_RADIUS_M = 6_371_008.8


def distance_m(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle (haversine) distance in metres."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_M * math.asin(min(1.0, math.sqrt(a)))


def bearing_deg(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Initial bearing from point 1 to point 2, degrees from true north in [0, 360)."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dl = math.radians(lon2 - lon1)
    y = math.sin(dl) * math.cos(p2)
    x = math.cos(p1) * math.sin(p2) - math.sin(p1) * math.cos(p2) * math.cos(dl)
    return math.degrees(math.atan2(y, x)) % 360.0


@dataclass(frozen=True, slots=True)
class RoutePoint:
    """Where the vehicle is along a route at some elapsed time."""

    lat: float
    lon: float
    course_deg: float
    speed_kmh: float
    distance_m: float


@dataclass(frozen=True)
class Route:
    """Polyline travelled leg by leg, each leg at its own constant speed.

    Attributes:
        points: ``(lat, lon)`` from the start position through every waypoint.
        leg_speeds_kmh: one speed per leg (``len(points) - 1``).
    """

    points: tuple[tuple[float, float], ...]
    leg_speeds_kmh: tuple[float, ...]
    _lengths: tuple[float, ...] = field(init=False, repr=False, compare=False)
    _ends_ms: tuple[float, ...] = field(init=False, repr=False, compare=False)
    _ends_m: tuple[float, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if len(self.points) < 2 or len(self.leg_speeds_kmh) != len(self.points) - 1:
            raise ValueError(f"a route needs at least 2 points and one speed per leg, got {len(self.points)} points")
        if any(not 0.0 < v <= 300.0 for v in self.leg_speeds_kmh):
            raise ValueError(f"leg speeds {self.leg_speeds_kmh} must be in (0, 300] km/h")
        lengths = [distance_m(*a, *b) for a, b in zip(self.points, self.points[1:], strict=False)]
        durations = [length / (v / 3.6) * 1000.0 for length, v in zip(lengths, self.leg_speeds_kmh, strict=True)]
        ends_ms: list[float] = []
        ends_m: list[float] = []
        total_ms = total_m = 0.0
        for length, duration in zip(lengths, durations, strict=True):
            total_ms += duration
            total_m += length
            ends_ms.append(total_ms)
            ends_m.append(total_m)
        object.__setattr__(self, "_lengths", tuple(lengths))
        object.__setattr__(self, "_ends_ms", tuple(ends_ms))
        object.__setattr__(self, "_ends_m", tuple(ends_m))

    @property
    def length_m(self) -> float:
        """Total length in metres."""
        return self._ends_m[-1]

    @property
    def duration_ms(self) -> int:
        """Time to drive the whole route, milliseconds (at least 1)."""
        return max(1, round(self._ends_ms[-1]))

    def at(self, elapsed_ms: float) -> RoutePoint:
        """Position, course and speed ``elapsed_ms`` after leaving the first point (clamped to the route)."""
        ends_ms, ends_m, lengths = self._ends_ms, self._ends_m, self._lengths
        elapsed = min(max(elapsed_ms, 0.0), ends_ms[-1])
        leg = min(bisect.bisect_right(ends_ms, elapsed), len(ends_ms) - 1)
        leg_start_ms = ends_ms[leg - 1] if leg else 0.0
        leg_ms = ends_ms[leg] - leg_start_ms
        frac = 0.0 if leg_ms <= 0 else (elapsed - leg_start_ms) / leg_ms
        (lat1, lon1), (lat2, lon2) = self.points[leg], self.points[leg + 1]
        lat, lon = lat1 + (lat2 - lat1) * frac, lon1 + (lon2 - lon1) * frac
        start_m = ends_m[leg - 1] if leg else 0.0
        moving = elapsed < ends_ms[-1]
        return RoutePoint(
            lat=lat,
            lon=lon,
            course_deg=bearing_deg(lat1, lon1, lat2, lon2),
            speed_kmh=self.leg_speeds_kmh[leg] if moving else 0.0,
            distance_m=start_m + lengths[leg] * frac,
        )

    @property
    def end(self) -> tuple[float, float]:
        """The last waypoint."""
        return self.points[-1]
