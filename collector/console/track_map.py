"""The track map: a server-rendered SVG on a plain projected background, no network needed.

Pure. :func:`find_stops` groups fixes into stops (the vehicle stayed within ``radius_m`` for
at least ``min_stop_s``); :func:`render_track_svg` projects every position (WGS-84) onto a
local equirectangular plane in metres around the middle of the drawn area, scales it into the
SVG and draws: a metre grid and a scale bar, used-car markets as circles of their real
radius, allowed regions, the path, the stops with their durations, the alert positions, the
start and the end. Every element carries its data (``data-*``) so tests and scripts can
check the geometry; text is escaped.

Markets and regions arrive in WGS-84 (the caller converts a GCJ-02/BD-09 market once with
the datum conversion code).

Optional map tiles (:class:`TileLayer`, ``[console] tile_url``): the slippy-map tiles
covering the drawing are placed under everything else, each stretched between its corners.
Tiles of Chinese providers are drawn in GCJ-02; the layer's ``to_wgs84`` moves each tile
corner to where that place really is (WGS-84), so the GNSS track lands on the right street
(the offset is 300-700 m).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from html import escape

__all__ = ["MapMarket", "MapPoint", "Stop", "TileLayer", "find_stops", "render_track_svg", "tile_images"]

EARTH_RADIUS_M = 6_371_008.8
WIDTH, HEIGHT, MARGIN = 880, 560, 24


@dataclass(frozen=True, slots=True)
class MapPoint:
    """A fix: time (epoch ms), WGS-84 position, speed (m/s, may be unknown)."""

    time_ms: int
    lat: float
    lon: float
    speed_mps: float | None = None


@dataclass(frozen=True, slots=True)
class MapMarket:
    """A circle drawn on the map (a used-car market or an allowed region), WGS-84."""

    ident: str
    name: str
    lat: float
    lon: float
    radius_m: float
    kind: str = "market"  # or "region"


@dataclass(frozen=True, slots=True)
class MapAlert:
    """An alert drawn where it happened."""

    rule: str
    time_ms: int
    lat: float
    lon: float


def _same_place(lat: float, lon: float) -> tuple[float, float]:
    return lat, lon


@dataclass(frozen=True, slots=True)
class TileLayer:
    """A slippy-map tile server drawn under the track.

    Attributes:
        url: template with ``{z}``, ``{x}`` and ``{y}``.
        to_wgs84: converts a position of the tiles' datum to WGS-84 (identity for WGS-84 tiles,
            the GCJ-02 inverse for Chinese providers).
        max_tiles: at most this many tiles per map.
    """

    url: str
    to_wgs84: Callable[[float, float], tuple[float, float]] = field(default=_same_place)
    max_tiles: int = 64


@dataclass(frozen=True, slots=True)
class Stop:
    """The vehicle stayed within ``radius_m`` of ``(lat, lon)`` from ``start_ms`` to ``end_ms``."""

    lat: float
    lon: float
    start_ms: int
    end_ms: int
    fixes: int

    @property
    def duration_s(self) -> float:
        """How long the stop lasted."""
        return (self.end_ms - self.start_ms) / 1000


def distance_m(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance (haversine)."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_M * math.asin(min(1.0, math.sqrt(a)))


def find_stops(points: Sequence[MapPoint], *, radius_m: float = 60.0, min_stop_s: float = 300.0) -> list[Stop]:
    """Stops along a time-ordered track.

    A stop starts at a fix and takes every following fix within ``radius_m`` of it; it counts
    when it lasts at least ``min_stop_s``. Its position is the mean of its fixes.
    """
    stops: list[Stop] = []
    i = 0
    while i < len(points):
        anchor = points[i]
        j = i
        while j + 1 < len(points):
            following = points[j + 1]
            if distance_m(anchor.lat, anchor.lon, following.lat, following.lon) > radius_m:
                break
            j += 1
        if (points[j].time_ms - anchor.time_ms) / 1000 >= min_stop_s:
            members = points[i : j + 1]
            stops.append(Stop(
                sum(p.lat for p in members) / len(members),
                sum(p.lon for p in members) / len(members),
                anchor.time_ms,
                points[j].time_ms,
                len(members),
            ))
            i = j + 1
        else:
            i += 1
    return stops


@dataclass(frozen=True, slots=True)
class _Projection:
    lat0: float
    lon0: float
    scale: float  # pixels per metre
    cx: float
    cy: float
    mx: float
    my: float

    def xy(self, lat: float, lon: float) -> tuple[float, float]:
        x_m = math.radians(lon - self.lon0) * EARTH_RADIUS_M * math.cos(math.radians(self.lat0))
        y_m = math.radians(lat - self.lat0) * EARTH_RADIUS_M
        return (self.cx + (x_m - self.mx) * self.scale, self.cy - (y_m - self.my) * self.scale)

    def latlon(self, x: float, y: float) -> tuple[float, float]:
        """Inverse of :meth:`xy`."""
        x_m = (x - self.cx) / self.scale + self.mx
        y_m = (self.cy - y) / self.scale + self.my
        lat = self.lat0 + math.degrees(y_m / EARTH_RADIUS_M)
        lon = self.lon0 + math.degrees(x_m / (EARTH_RADIUS_M * math.cos(math.radians(self.lat0))))
        return lat, lon


def _tile_corner(x: int, y: int, z: int) -> tuple[float, float]:
    """North-west corner (lat, lon) of slippy tile ``x, y`` at zoom ``z`` (Web Mercator)."""
    n = 2.0**z
    return math.degrees(math.atan(math.sinh(math.pi * (1 - 2 * y / n)))), x / n * 360.0 - 180.0


def _tile_index(lat: float, lon: float, z: int) -> tuple[int, int]:
    n = 2.0**z
    lat = max(-85.0511, min(85.0511, lat))
    x = int((lon + 180.0) / 360.0 * n)
    y = int((1 - math.asinh(math.tan(math.radians(lat))) / math.pi) / 2 * n)
    return max(0, min(int(n) - 1, x)), max(0, min(int(n) - 1, y))


def tile_images(proj: _Projection, layer: TileLayer) -> list[tuple[str, float, float, float, float]]:
    """``(url, x, y, width, height)`` of every tile covering the drawing (SVG pixels)."""
    z = round(math.log2(156_543.034 * math.cos(math.radians(proj.lat0)) * proj.scale))
    z = max(1, min(19, z))
    corners = [proj.latlon(0, 0), proj.latlon(WIDTH, HEIGHT)]
    # The tiles' datum is off by up to ~700 m: widen by a tile on every side.
    (x0, y0), (x1, y1) = (_tile_index(lat, lon, z) for lat, lon in corners)
    out = []
    for tx in range(x0 - 1, x1 + 2):
        for ty in range(y0 - 1, y1 + 2):
            nw = proj.xy(*layer.to_wgs84(*_tile_corner(tx, ty, z)))
            se = proj.xy(*layer.to_wgs84(*_tile_corner(tx + 1, ty + 1, z)))
            if se[0] < 0 or se[1] < 0 or nw[0] > WIDTH or nw[1] > HEIGHT:
                continue
            url = layer.url.replace("{z}", str(z)).replace("{x}", str(tx)).replace("{y}", str(ty))
            out.append((url, nw[0], nw[1], se[0] - nw[0], se[1] - nw[1]))
            if len(out) >= layer.max_tiles:
                return out
    return out


def _projection(points: Sequence[tuple[float, float, float]]) -> _Projection:
    """Fit ``(lat, lon, radius_m)`` items into the drawing area (at least 400 m across)."""
    lat0 = sum(p[0] for p in points) / len(points)
    lon0 = sum(p[1] for p in points) / len(points)
    k = EARTH_RADIUS_M * math.cos(math.radians(lat0))
    xs_lo, xs_hi, ys_lo, ys_hi = [], [], [], []
    for lat, lon, r in points:
        x, y = math.radians(lon - lon0) * k, math.radians(lat - lat0) * EARTH_RADIUS_M
        xs_lo.append(x - r)
        xs_hi.append(x + r)
        ys_lo.append(y - r)
        ys_hi.append(y + r)
    span_x = max(400.0, max(xs_hi) - min(xs_lo)) * 1.08
    span_y = max(400.0, max(ys_hi) - min(ys_lo)) * 1.08
    scale = min((WIDTH - 2 * MARGIN) / span_x, (HEIGHT - 2 * MARGIN - 30) / span_y)
    return _Projection(lat0, lon0, scale, WIDTH / 2, (HEIGHT - 30) / 2,
                       (max(xs_hi) + min(xs_lo)) / 2, (max(ys_hi) + min(ys_lo)) / 2)


def _nice_length(max_m: float) -> float:
    """The largest 1/2/5 x 10^k metres not above ``max_m``."""
    exponent = math.floor(math.log10(max_m))
    best = 10.0**exponent
    for step in (2, 5, 10):
        if step * 10.0**exponent <= max_m:
            best = step * 10.0**exponent
    return best


def _length_text(metres: float) -> str:
    return f"{metres / 1000:g} km" if metres >= 1000 else f"{metres:g} m"


def _f(value: float) -> str:
    return f"{value:.1f}"


def render_track_svg(
    points: Sequence[MapPoint],
    *,
    markets: Sequence[MapMarket] = (),
    alerts: Sequence[MapAlert] = (),
    stops: Sequence[Stop] = (),
    stop_labels: Sequence[str] = (),
    title: str = "track",
    tiles: TileLayer | None = None,
) -> str:
    """The SVG document fragment of the map (``<svg class="track-map" ...>``)."""
    items = [(p.lat, p.lon, 0.0) for p in points]
    items += [(m.lat, m.lon, m.radius_m) for m in markets]
    items += [(a.lat, a.lon, 0.0) for a in alerts]
    if not items:
        return ""
    proj = _projection(items)
    parts = [
        f'<svg class="track-map" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" '
        f'width="{WIDTH}" height="{HEIGHT}" role="img" aria-label="{escape(title)}" '
        f'data-metres-per-px="{1 / proj.scale:.4f}">',
        f'<rect class="map-bg" x="0" y="0" width="{WIDTH}" height="{HEIGHT}"/>',
    ]
    if tiles is not None:
        parts.extend(
            f'<image class="tile" href="{escape(url)}" x="{_f(x)}" y="{_f(y)}" width="{_f(w)}" height="{_f(h)}" '
            f'preserveAspectRatio="none"/>'
            for url, x, y, w, h in tile_images(proj, tiles)
        )
    grid_m = _nice_length((WIDTH / proj.scale) / 6)
    grid_px = grid_m * proj.scale
    offset_x = (proj.cx - proj.mx * proj.scale) % grid_px
    offset_y = (proj.cy + proj.my * proj.scale) % grid_px
    x = offset_x
    while x < WIDTH:
        parts.append(f'<line class="grid" x1="{_f(x)}" y1="0" x2="{_f(x)}" y2="{HEIGHT}"/>')
        x += grid_px
    y = offset_y
    while y < HEIGHT:
        parts.append(f'<line class="grid" x1="0" y1="{_f(y)}" x2="{WIDTH}" y2="{_f(y)}"/>')
        y += grid_px
    for m in markets:
        mx, my = proj.xy(m.lat, m.lon)
        parts.append(
            f'<g class="{escape(m.kind)}"><circle class="{escape(m.kind)}-area" cx="{_f(mx)}" cy="{_f(my)}" '
            f'r="{_f(m.radius_m * proj.scale)}" data-id="{escape(m.ident)}" data-radius-m="{m.radius_m:g}">'
            f"<title>{escape(m.name)}</title></circle>"
            f'<text class="label" x="{_f(mx)}" y="{_f(my - m.radius_m * proj.scale - 4)}">{escape(m.name)}</text></g>'
        )
    if points:
        path = " ".join(f"{_f(px)},{_f(py)}" for px, py in (proj.xy(p.lat, p.lon) for p in points))
        parts.append(f'<polyline class="track" points="{path}" data-points="{len(points)}"/>')
        sx, sy = proj.xy(points[0].lat, points[0].lon)
        ex, ey = proj.xy(points[-1].lat, points[-1].lon)
        parts.append(f'<circle class="start" cx="{_f(sx)}" cy="{_f(sy)}" r="5"><title>start</title></circle>')
        parts.append(
            f'<rect class="end" x="{_f(ex - 5)}" y="{_f(ey - 5)}" width="10" height="10"><title>end</title></rect>'
        )
    for i, stop in enumerate(stops):
        px, py = proj.xy(stop.lat, stop.lon)
        label = stop_labels[i] if i < len(stop_labels) else f"{stop.duration_s:.0f} s"
        parts.append(
            f'<g class="stop-group"><circle class="stop" cx="{_f(px)}" cy="{_f(py)}" r="7" '
            f'data-duration-s="{stop.duration_s:.0f}" data-fixes="{stop.fixes}"><title>{escape(label)}</title></circle>'
            f'<text class="stop-label" x="{_f(px + 10)}" y="{_f(py + 4)}">{escape(label)}</text></g>'
        )
    for a in alerts:
        px, py = proj.xy(a.lat, a.lon)
        parts.append(
            f'<path class="alert-marker" d="M{_f(px)},{_f(py - 9)} L{_f(px + 8)},{_f(py + 6)} '
            f'L{_f(px - 8)},{_f(py + 6)} Z" '
            f'data-rule="{escape(a.rule)}" data-x="{_f(px)}" data-y="{_f(py)}"><title>{escape(a.rule)}</title></path>'
        )
    bar_m = _nice_length((WIDTH / proj.scale) / 4)
    bar_px = bar_m * proj.scale
    by = HEIGHT - 18
    parts.append(
        f'<g class="scale-bar" data-metres="{bar_m:g}" data-px="{_f(bar_px)}">'
        f'<line x1="{MARGIN}" y1="{by}" x2="{_f(MARGIN + bar_px)}" y2="{by}"/>'
        f'<line x1="{MARGIN}" y1="{by - 5}" x2="{MARGIN}" y2="{by + 5}"/>'
        f'<line x1="{_f(MARGIN + bar_px)}" y1="{by - 5}" x2="{_f(MARGIN + bar_px)}" y2="{by + 5}"/>'
        f'<text x="{_f(MARGIN + bar_px + 8)}" y="{by + 4}">{_length_text(bar_m)} '
        f'(grid {_length_text(grid_m)})</text></g>'
        f'<text class="north" x="{WIDTH - 20}" y="24">N</text>'
    )
    parts.append("</svg>")
    return "".join(parts)
