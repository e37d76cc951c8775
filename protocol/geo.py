"""Distances, datum conversion (WGS-84 / GCJ-02 / BD-09) and point-in-polygon tests.

How this works: GNSS gives WGS-84. Chinese map providers publish GCJ-02 ("Mars
coordinates", an obfuscated WGS-84 with a smooth 300-700 m offset) and Baidu publishes
BD-09 (a second shift on top of GCJ-02). The forward WGS-84 -> GCJ-02 formula is public
(the same constants appear in every open implementation, e.g. googollee/eviltransform);
its inverse has no closed form, so :func:`gcj02_to_wgs84` solves it by fixed-point
iteration until the forward image matches to ~1e-9 degrees (millimetres). The offset is
applied only inside the rough mainland-China rectangle used by those implementations
(lon 72.004..137.8347, lat 0.8293..55.8271); outside it GCJ-02 equals WGS-84. That
rectangle also covers Hong Kong, Macau, Taiwan and parts of neighbouring countries:
declare points there as ``wgs84``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = [
    "DATUMS",
    "EARTH_RADIUS_M",
    "bd09_to_gcj02",
    "bd09_to_wgs84",
    "distance_m",
    "gcj02_to_bd09",
    "gcj02_to_wgs84",
    "in_gcj02_area",
    "point_in_ring",
    "to_wgs84",
    "wgs84_to_bd09",
    "wgs84_to_gcj02",
]

#: Mean Earth radius for great-circle distances (IUGG), metres.
EARTH_RADIUS_M = 6_371_008.8
#: Datums an import may declare.
DATUMS = frozenset({"wgs84", "gcj02", "bd09"})

# Krasovsky 1940 ellipsoid, as used by the GCJ-02 formula.
_GCJ_A = 6_378_245.0
_GCJ_EE = 0.00669342162296594323
_BD_X_PI = math.pi * 3000.0 / 180.0


def distance_m(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle (haversine) distance between two WGS-84 points, in metres."""
    p1 = math.radians(lat1)
    p2 = math.radians(lat2)
    dp = p2 - p1
    dl = math.radians(lon2 - lon1)
    h = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2.0 * EARTH_RADIUS_M * math.asin(min(1.0, math.sqrt(h)))


def in_gcj02_area(lat: float, lon: float) -> bool:
    """True if the GCJ-02 offset applies at this point (the mainland-China rectangle)."""
    return 72.004 <= lon <= 137.8347 and 0.8293 <= lat <= 55.8271


def _gcj_offset(lat: float, lon: float) -> tuple[float, float]:
    """GCJ-02 minus WGS-84 at a WGS-84 point, degrees (dlat, dlon)."""
    x = lon - 105.0
    y = lat - 35.0
    x_pi = x * math.pi
    y_pi = y * math.pi
    common = 20.0 * math.sin(6.0 * x_pi) + 20.0 * math.sin(2.0 * x_pi)
    dlat = common + 20.0 * math.sin(y_pi) + 40.0 * math.sin(y_pi / 3.0)
    dlon = common + 20.0 * math.sin(x_pi) + 40.0 * math.sin(x_pi / 3.0)
    dlat += 160.0 * math.sin(y_pi / 12.0) + 320.0 * math.sin(y_pi / 30.0)
    dlon += 150.0 * math.sin(x_pi / 12.0) + 300.0 * math.sin(x_pi / 30.0)
    dlat = dlat * 2.0 / 3.0 + (-100.0 + 2.0 * x + 3.0 * y + 0.2 * y * y + 0.1 * x * y + 0.2 * math.sqrt(abs(x)))
    dlon = dlon * 2.0 / 3.0 + (300.0 + x + 2.0 * y + 0.1 * x * x + 0.1 * x * y + 0.1 * math.sqrt(abs(x)))
    rad_lat = math.radians(lat)
    magic = 1.0 - _GCJ_EE * math.sin(rad_lat) ** 2
    sqrt_magic = math.sqrt(magic)
    dlat = (dlat * 180.0) / ((_GCJ_A * (1.0 - _GCJ_EE)) / (magic * sqrt_magic) * math.pi)
    dlon = (dlon * 180.0) / (_GCJ_A / sqrt_magic * math.cos(rad_lat) * math.pi)
    return dlat, dlon


def wgs84_to_gcj02(lat: float, lon: float) -> tuple[float, float]:
    """Convert a WGS-84 point to GCJ-02 (identity outside the mainland rectangle)."""
    if not in_gcj02_area(lat, lon):
        return lat, lon
    dlat, dlon = _gcj_offset(lat, lon)
    return lat + dlat, lon + dlon


def gcj02_to_wgs84(lat: float, lon: float) -> tuple[float, float]:
    """Convert a GCJ-02 point to WGS-84, exact to millimetres (iterative inverse)."""
    if not in_gcj02_area(lat, lon):
        return lat, lon
    wlat, wlon = lat, lon
    for _ in range(30):
        glat, glon = wgs84_to_gcj02(wlat, wlon)
        err_lat, err_lon = glat - lat, glon - lon
        wlat -= err_lat
        wlon -= err_lon
        if abs(err_lat) < 1e-10 and abs(err_lon) < 1e-10:
            break
    return wlat, wlon


def gcj02_to_bd09(lat: float, lon: float) -> tuple[float, float]:
    """Convert a GCJ-02 point to Baidu BD-09."""
    z = math.hypot(lon, lat) + 0.00002 * math.sin(lat * _BD_X_PI)
    theta = math.atan2(lat, lon) + 0.000003 * math.cos(lon * _BD_X_PI)
    return z * math.sin(theta) + 0.006, z * math.cos(theta) + 0.0065


def bd09_to_gcj02(lat: float, lon: float) -> tuple[float, float]:
    """Convert a Baidu BD-09 point to GCJ-02, exact to millimetres.

    Starts from the published closed-form inverse (about 10 cm off) and refines it by
    fixed-point iteration on :func:`gcj02_to_bd09`.
    """
    x = lon - 0.0065
    y = lat - 0.006
    z = math.hypot(x, y) - 0.00002 * math.sin(y * _BD_X_PI)
    theta = math.atan2(y, x) - 0.000003 * math.cos(x * _BD_X_PI)
    glat, glon = z * math.sin(theta), z * math.cos(theta)
    for _ in range(10):
        blat, blon = gcj02_to_bd09(glat, glon)
        err_lat, err_lon = blat - lat, blon - lon
        glat -= err_lat
        glon -= err_lon
        if abs(err_lat) < 1e-10 and abs(err_lon) < 1e-10:
            break
    return glat, glon


def wgs84_to_bd09(lat: float, lon: float) -> tuple[float, float]:
    """Convert a WGS-84 point to BD-09 (via GCJ-02)."""
    return gcj02_to_bd09(*wgs84_to_gcj02(lat, lon))


def bd09_to_wgs84(lat: float, lon: float) -> tuple[float, float]:
    """Convert a BD-09 point to WGS-84 (via GCJ-02, exact inverse)."""
    return gcj02_to_wgs84(*bd09_to_gcj02(lat, lon))


def to_wgs84(lat: float, lon: float, datum: str) -> tuple[float, float]:
    """Convert a point in ``datum`` (``wgs84``, ``gcj02`` or ``bd09``) to WGS-84.

    Raises:
        ValueError: the datum is not one of :data:`DATUMS`.
    """
    if datum == "wgs84":
        return lat, lon
    if datum == "gcj02":
        return gcj02_to_wgs84(lat, lon)
    if datum == "bd09":
        return bd09_to_wgs84(lat, lon)
    raise ValueError(f"datum {datum!r} is not one of {sorted(DATUMS)}")


def point_in_ring(lat: float, lon: float, ring: Sequence[tuple[float, float]]) -> bool:
    """Even-odd ray casting: is (lat, lon) inside the closed ring of (lat, lon) vertices?

    Works in plain degrees, which is fine for province-sized polygons away from the
    poles and the antimeridian.
    """
    inside = False
    n = len(ring)
    j = n - 1
    for i in range(n):
        lat_i, lon_i = ring[i]
        lat_j, lon_j = ring[j]
        if (lat_i > lat) != (lat_j > lat):
            cross_lon = lon_i + (lat - lat_i) * (lon_j - lon_i) / (lat_j - lat_i)
            if lon < cross_lon:
                inside = not inside
        j = i
    return inside
