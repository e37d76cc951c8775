"""Used-car markets and allowed regions: validated, converted to WGS-84 on load.

Loaders are layered (file -> parsed document -> items): :func:`load_markets` and
:func:`load_regions` take a path (TOML, JSON or GeoJSON) or already-parsed items (for
example the ``markets`` section of a collector-pushed DeviceConfig). Every item declares
its datum (``wgs84``, ``gcj02`` or ``bd09``); positions are converted to WGS-84 once, here,
so the rules only ever compare WGS-84 with WGS-84.
"""

from __future__ import annotations

import json
import math
import re
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from .errors import PlacesError
from .geo import DATUMS, point_in_ring, to_wgs84

__all__ = ["MAX_PLACES", "MAX_RING_POINTS", "PLACE_TYPES", "Market", "Region", "load_markets", "load_regions"]

MAX_PLACES = 100_000
MAX_RING_POINTS = 20_000
MAX_FILE_BYTES = 32 * 1024 * 1024
_ID_RE = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
#: kinds of watched place (#17); each has its own dwell threshold and severity in
#: ``[rules.stationary_near_market.place_types]``. A market item without ``type`` is a used-car market.
PLACE_TYPES = ("used_car_market", "pawn_lot", "impound_yard", "auction", "port", "border_crossing")


def _check_id(what: str, value: object) -> None:
    if not isinstance(value, str) or not _ID_RE.fullmatch(value):
        raise ValueError(f"{what} id {value!r} must match [A-Za-z0-9_.:-]{{1,64}}")


def _check_name(what: str, value: object) -> None:
    if not isinstance(value, str) or not 0 < len(value) <= 256:
        raise ValueError(f"{what} name must be text of 1..256 characters, got {value!r:.60}")


def _check_lat_lon(what: str, lat: object, lon: object) -> None:
    for label, value, limit in (("lat", lat, 90.0), ("lon", lon, 180.0)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"{what} {label} must be a number, got {value!r:.40}")
        if not -limit <= value <= limit:
            raise ValueError(f"{what} {label}={value} is outside [-{limit}, {limit}]")


@dataclass(frozen=True, slots=True)
class Market:
    """A used-car market (a place where a financed car must not sit for days).

    Attributes:
        id: stable identifier, ``[A-Za-z0-9_.:-]{1,64}``.
        name: human-readable name.
        lat: WGS-84 latitude of the centre (converted from the declared datum).
        lon: WGS-84 longitude of the centre.
        radius_m: the market's extent around its centre, metres (1 .. 50 km).
        datum: the datum the source declared (kept for evidence and audits).
        type: the kind of place, one of :data:`PLACE_TYPES` (default ``used_car_market``).
    """

    id: str
    name: str
    lat: float
    lon: float
    radius_m: float
    datum: str = "wgs84"
    type: str = "used_car_market"

    def __post_init__(self) -> None:
        _check_id("market", self.id)
        _check_name(f"market {self.id}", self.name)
        _check_lat_lon(f"market {self.id}", self.lat, self.lon)
        radius = self.radius_m
        if isinstance(radius, bool) or not isinstance(radius, (int, float)) or not 1.0 <= radius <= 50_000.0:
            raise ValueError(f"market {self.id} radius_m={radius!r} must be a number in [1, 50000]")
        if self.datum not in DATUMS:
            raise ValueError(f"market {self.id} datum {self.datum!r} must be one of {sorted(DATUMS)}")
        if self.type not in PLACE_TYPES:
            raise ValueError(f"market {self.id} type {self.type!r} must be one of {list(PLACE_TYPES)}")


@dataclass(frozen=True, slots=True)
class Region:
    """An allowed region: one or more polygons (outer ring, then holes) in WGS-84.

    Attributes:
        id: stable identifier.
        name: human-readable name.
        polygons: tuple of polygons; each polygon is a tuple of rings, the first the outer
            boundary, the rest holes; each ring a tuple of (lat, lon) WGS-84 vertices.
        datum: the datum the source declared.
    """

    id: str
    name: str
    polygons: tuple[tuple[tuple[tuple[float, float], ...], ...], ...]
    datum: str = "wgs84"

    def __post_init__(self) -> None:
        _check_id("region", self.id)
        _check_name(f"region {self.id}", self.name)
        if self.datum not in DATUMS:
            raise ValueError(f"region {self.id} datum {self.datum!r} must be one of {sorted(DATUMS)}")
        if not self.polygons:
            raise ValueError(f"region {self.id} has no polygon")
        for polygon in self.polygons:
            if not polygon:
                raise ValueError(f"region {self.id} has a polygon without rings")
            for ring in polygon:
                if not 3 <= len(ring) <= MAX_RING_POINTS:
                    raise ValueError(
                        f"region {self.id} ring has {len(ring)} points; a ring needs 3..{MAX_RING_POINTS}"
                    )
                for lat, lon in ring:
                    _check_lat_lon(f"region {self.id}", lat, lon)

    @property
    def bbox(self) -> tuple[float, float, float, float]:
        """(min_lat, min_lon, max_lat, max_lon) of all outer rings."""
        lats = [p[0] for poly in self.polygons for p in poly[0]]
        lons = [p[1] for poly in self.polygons for p in poly[0]]
        return min(lats), min(lons), max(lats), max(lons)

    def contains(self, lat: float, lon: float) -> bool:
        """True if the WGS-84 point is inside any polygon (and in none of its holes)."""
        for polygon in self.polygons:
            if point_in_ring(lat, lon, polygon[0]) and not any(point_in_ring(lat, lon, h) for h in polygon[1:]):
                return True
        return False


def _read_document(path: Path, what: str) -> object:
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise PlacesError(f"{what} file {path} is {size} bytes, over the {MAX_FILE_BYTES} byte limit")
        raw = path.read_bytes()
    except OSError as exc:
        raise PlacesError(f"cannot read {what} file {path}: {exc.strerror or exc}") from exc
    try:
        text = raw.decode("utf-8")
        if path.suffix.lower() == ".toml":
            return tomllib.loads(text)
        return json.loads(text)
    except (UnicodeDecodeError, tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        raise PlacesError(f"{what} file {path} is not valid {path.suffix.lstrip('.') or 'JSON'}: {exc}") from exc


def _items_of(document: object, keys: Sequence[str], where: str) -> list[object]:
    if isinstance(document, Mapping):
        for key in keys:
            if key in document:
                document = document[key]
                break
        else:
            raise PlacesError(f"{where} has none of the keys {list(keys)}")
    if not isinstance(document, (list, tuple)):
        raise PlacesError(f"{where} must hold a list, got {type(document).__name__}")
    if len(document) > MAX_PLACES:
        raise PlacesError(f"{where} has {len(document)} items, over the limit of {MAX_PLACES}")
    return list(document)


def _get(item: Mapping[str, object], key: str, where: str) -> object:
    if key not in item:
        raise PlacesError(f"{where} lacks required key {key!r}")
    return item[key]


def _datum(item: Mapping[str, object], where: str, default: str | None) -> str:
    datum = item.get("datum", default)
    if datum is None:
        raise PlacesError(f"{where} lacks required key 'datum' (wgs84, gcj02 or bd09)")
    if not isinstance(datum, str) or datum.lower() not in DATUMS:
        raise PlacesError(f"{where} datum {datum!r} must be one of {sorted(DATUMS)}")
    return datum.lower()


_MARKET_KEYS = frozenset({"id", "name", "lat", "lon", "radius_m", "datum", "type"})


def _market(item: object, where: str) -> Market:
    if isinstance(item, Market):
        return item
    if not isinstance(item, Mapping):
        raise PlacesError(f"{where} must be a table/map, got {type(item).__name__}")
    unknown = sorted(set(item) - _MARKET_KEYS)
    if unknown:
        raise PlacesError(f"{where} has unknown key {unknown[0]!r} (known: {', '.join(sorted(_MARKET_KEYS))})")
    datum = _datum(item, where, None)
    lat, lon = _get(item, "lat", where), _get(item, "lon", where)
    try:
        _check_lat_lon(where, lat, lon)
        wlat, wlon = to_wgs84(float(lat), float(lon), datum)  # type: ignore[arg-type]
        return Market(
            id=_get(item, "id", where),  # type: ignore[arg-type]
            name=_get(item, "name", where),  # type: ignore[arg-type]
            lat=wlat,
            lon=wlon,
            radius_m=_get(item, "radius_m", where),  # type: ignore[arg-type]
            datum=datum,
            type=item.get("type", "used_car_market"),
        )
    except ValueError as exc:
        raise PlacesError(f"{where}: {exc}") from exc


def load_markets(source: str | Path | Iterable[Mapping[str, object] | Market]) -> list[Market]:
    """Load a market list and convert every position to WGS-84.

    Args:
        source: a ``.toml`` file (``[[market]]`` tables), a ``.json`` file (a list or
            ``{"markets": [...]}``), or already-parsed items, each with ``id``, ``name``,
            ``lat``, ``lon``, ``radius_m`` and ``datum`` (``wgs84`` | ``gcj02`` | ``bd09``), and
            optionally ``type`` (one of :data:`PLACE_TYPES`, default ``used_car_market``).

    Returns:
        Markets with WGS-84 centres, in input order.

    Raises:
        PlacesError: unreadable file, malformed document, a missing/unknown key, a bad
            value, or a repeated id (the message names the file/item and the key).
    """
    if isinstance(source, (str, Path)):
        path = Path(source)
        items = _items_of(_read_document(path, "markets"), ("market", "markets"), f"markets file {path}")
        label = str(path)
    else:
        items = _items_of(list(source), (), "markets")
        label = "markets"
    markets: list[Market] = []
    seen: set[str] = set()
    for index, item in enumerate(items):
        market = _market(item, f"{label} item {index}")
        if market.id in seen:
            raise PlacesError(f"{label} item {index}: market id {market.id!r} is repeated")
        seen.add(market.id)
        markets.append(market)
    return markets


def _ring(points: object, datum: str, where: str) -> tuple[tuple[float, float], ...]:
    """A ring from [[lon, lat], ...] (GeoJSON order) or a flat [lon, lat, lon, lat, ...]."""
    if not isinstance(points, (list, tuple)):
        raise PlacesError(f"{where} must be a list of [lon, lat] points")
    pairs: list[object]
    if points and all(isinstance(p, (int, float)) and not isinstance(p, bool) for p in points):
        if len(points) % 2:
            raise PlacesError(f"{where}: a flat coordinate list needs an even count, got {len(points)}")
        pairs = [points[i : i + 2] for i in range(0, len(points), 2)]
    else:
        pairs = list(points)
    if len(pairs) > MAX_RING_POINTS + 1:
        raise PlacesError(f"{where} has {len(pairs)} points, over the limit of {MAX_RING_POINTS}")
    ring: list[tuple[float, float]] = []
    for i, pair in enumerate(pairs):
        if not isinstance(pair, (list, tuple)) or len(pair) < 2:
            raise PlacesError(f"{where}[{i}] must be [lon, lat], got {pair!r:.40}")
        lon, lat = pair[0], pair[1]
        try:
            _check_lat_lon(f"{where}[{i}]", lat, lon)
        except ValueError as exc:
            raise PlacesError(str(exc)) from exc
        ring.append(to_wgs84(float(lat), float(lon), datum))
    if len(ring) > 1 and ring[0] == ring[-1]:
        ring.pop()  # GeoJSON closes rings explicitly; the ray test does not need it
    if len(ring) < 3:
        raise PlacesError(f"{where} needs at least 3 distinct points, got {len(ring)}")
    return tuple(ring)


_REGION_KEYS = frozenset({"id", "name", "datum", "polygon", "holes", "coords"})


def _region_from_table(item: Mapping[str, object], where: str) -> Region:
    unknown = sorted(set(item) - _REGION_KEYS)
    if unknown:
        raise PlacesError(f"{where} has unknown key {unknown[0]!r} (known: {', '.join(sorted(_REGION_KEYS))})")
    datum = _datum(item, where, None)
    if "polygon" in item:
        outer = _ring(item["polygon"], datum, f"{where}.polygon")
    elif "coords" in item:
        outer = _ring(item["coords"], datum, f"{where}.coords")
    else:
        raise PlacesError(f"{where} lacks required key 'polygon' (or a flat 'coords' list)")
    holes_raw = item.get("holes", [])
    if not isinstance(holes_raw, (list, tuple)):
        raise PlacesError(f"{where}.holes must be a list of rings")
    holes = tuple(_ring(h, datum, f"{where}.holes[{i}]") for i, h in enumerate(holes_raw))
    try:
        return Region(
            id=_get(item, "id", where),  # type: ignore[arg-type]
            name=_get(item, "name", where),  # type: ignore[arg-type]
            polygons=((outer, *holes),),
            datum=datum,
        )
    except ValueError as exc:
        raise PlacesError(f"{where}: {exc}") from exc


def _region_from_feature(item: Mapping[str, object], where: str) -> Region:
    props = item.get("properties") or {}
    geometry = item.get("geometry")
    if not isinstance(props, Mapping) or not isinstance(geometry, Mapping):
        raise PlacesError(f"{where} must have 'properties' and 'geometry' objects")
    datum = _datum(props, f"{where}.properties", "wgs84")  # RFC 7946 says WGS-84 unless declared
    kind, coords = geometry.get("type"), geometry.get("coordinates")
    if kind == "Polygon":
        raw_polygons = [coords]
    elif kind == "MultiPolygon" and isinstance(coords, list):
        raw_polygons = coords
    else:
        raise PlacesError(f"{where}.geometry type {kind!r} must be Polygon or MultiPolygon")
    polygons = []
    for p, raw in enumerate(raw_polygons):
        if not isinstance(raw, list) or not raw:
            raise PlacesError(f"{where}.geometry polygon {p} must be a non-empty list of rings")
        polygons.append(tuple(_ring(r, datum, f"{where}.geometry[{p}][{i}]") for i, r in enumerate(raw)))
    try:
        return Region(
            id=_get(props, "id", f"{where}.properties"),  # type: ignore[arg-type]
            name=props.get("name", props.get("id")),
            polygons=tuple(polygons),
            datum=datum,
        )
    except ValueError as exc:
        raise PlacesError(f"{where}: {exc}") from exc


def load_regions(source: str | Path | Iterable[Mapping[str, object] | Region]) -> list[Region]:
    """Load allowed regions and convert every vertex to WGS-84.

    Args:
        source: a ``.toml`` file (``[[region]]`` tables with ``id``, ``name``, ``datum``
            and ``polygon = [[lon, lat], ...]``, optional ``holes``), a ``.json``/``.geojson``
            file (a GeoJSON FeatureCollection of Polygon/MultiPolygon features with ``id``,
            ``name`` and optional ``datum`` properties, or a list of tables), or items.
            A flat ``coords = [lon, lat, lon, lat, ...]`` replaces ``polygon`` where nesting
            is limited (DeviceConfig bodies allow depth 4).

    Raises:
        PlacesError: unreadable or malformed input (the message names the item and key).
    """
    if isinstance(source, (str, Path)):
        path = Path(source)
        document = _read_document(path, "regions")
        if isinstance(document, Mapping) and document.get("type") == "FeatureCollection":
            items = _items_of(document, ("features",), f"regions file {path}")
        else:
            items = _items_of(document, ("region", "regions"), f"regions file {path}")
        label = str(path)
    else:
        items = _items_of(list(source), (), "regions")
        label = "regions"
    regions: list[Region] = []
    seen: set[str] = set()
    for index, item in enumerate(items):
        where = f"{label} item {index}"
        if isinstance(item, Region):
            region = item
        elif isinstance(item, Mapping) and item.get("type") == "Feature":
            region = _region_from_feature(item, where)
        elif isinstance(item, Mapping):
            region = _region_from_table(item, where)
        else:
            raise PlacesError(f"{where} must be a table/map, got {type(item).__name__}")
        if region.id in seen:
            raise PlacesError(f"{where}: region id {region.id!r} is repeated")
        seen.add(region.id)
        regions.append(region)
    return regions
