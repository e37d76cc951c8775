"""Typed places the collector manages and pushes to the devices (used-car markets, pawn lots, ...).

One schema for both sides: every item is checked with :func:`protocol.places.load_places`
(the loader the agents run), so the collector never stores or signs a place a device would
refuse. Items are stored as given, in their declared datum (the agents convert to WGS-84
once); :func:`place_circles_wgs84` converts for the console map.

An item is ``{"id", "type", "name", "lat", "lon", "radius_m", "datum"}``; ``type`` is a
:class:`protocol.places.PlaceType` value. A deleted place stays as a tombstone
(``deleted_ms``), so ``max(updated_ms)`` over every row (:func:`places_revision`) changes on
every create, change and delete, wherever it was made (API or CLI), and the downlink
publisher knows to sign a new list.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from protocol.errors import PlacesError
from protocol.geo import to_wgs84
from protocol.places import PlaceType, decode_document, load_places

from ..errors import CollectorError
from ..files import FileReadError, read_bounded
from .tables import PlaceRecord

__all__ = [
    "MAX_PLACES",
    "MAX_PLACE_FILE_BYTES",
    "PLACE_ID_RE",
    "PlaceFileError",
    "check_place_item",
    "delete_place",
    "load_place_file",
    "place_circles_wgs84",
    "place_item",
    "place_items",
    "places_revision",
    "upsert_places",
]

#: Place ids the collector accepts (protocol.places' rule; also safe in a URL path).
PLACE_ID_RE = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
MAX_PLACE_FILE_BYTES = 4 * 1024 * 1024
MAX_PLACES = 10_000
MAX_NAME = 200  # the column's width (protocol.places allows 256)
_ITEM_KEYS = ("id", "type", "name", "lat", "lon", "radius_m", "datum")


class PlaceFileError(CollectorError):
    """A places file or item is unreadable, malformed, or holds a place the agents would refuse."""


def place_item(row: PlaceRecord) -> dict[str, Any]:
    """A stored place as an item (as stored, declared datum)."""
    return {"id": row.place_id, "type": row.type, "name": row.name, "lat": row.lat, "lon": row.lon,
            "radius_m": row.radius_m, "datum": row.datum}


def place_items(session: Session, types: Iterable[PlaceType | str] | None = None) -> list[dict[str, Any]]:
    """Every live place (of ``types``, if given) as an item, ordered by id, as stored."""
    query = sa.select(PlaceRecord).where(PlaceRecord.deleted_ms.is_(None))
    if types is not None:
        query = query.where(PlaceRecord.type.in_([PlaceType(t).value for t in types]))
    return [place_item(row) for row in session.scalars(query.order_by(PlaceRecord.place_id))]


def places_revision(session: Session) -> int | None:
    """The newest change (create, change or delete) of the place list; None if never had a place."""
    return session.scalar(sa.select(sa.func.max(PlaceRecord.updated_ms)))


def check_place_item(item: Mapping[str, Any], where: str = "place") -> dict[str, Any]:
    """Check one item with the agents' loader and the collector's own limits.

    Returns:
        The item with exactly the keys ``id, type, name, lat, lon, radius_m, datum`` (``type``
        defaults to ``used_car_market``, ``datum`` lower-cased, numbers as floats).

    Raises:
        PlaceFileError: the item breaks a rule of :func:`protocol.places.load_places`, or its
            name is over 200 characters (the message names the item and the key).
    """
    try:
        [place] = load_places([item], label=where)
    except PlacesError as exc:
        raise PlaceFileError(str(exc)) from exc
    name = item["name"]
    if len(name) > MAX_NAME:
        raise PlaceFileError(f"{where}: name is {len(name)} characters, over the limit of {MAX_NAME}")
    return {"id": place.id, "type": place.type.value, "name": name, "lat": float(item["lat"]),
            "lon": float(item["lon"]), "radius_m": float(item["radius_m"]), "datum": place.datum}


def load_place_file(path: Path, *, default_type: PlaceType | None = None) -> list[dict[str, Any]]:
    """Read a places file: TOML (``[[place]]`` or ``[[market]]`` tables) or JSON (a list or a map).

    Args:
        path: the file; its suffix (``.toml``, ``.json``, ``.geojson``) names the format.
        default_type: the type of items that name none (``None``: ``used_car_market``, the
            agents' default).

    Returns:
        Checked items (see :func:`check_place_item`), in file order.

    Raises:
        PlaceFileError: unreadable, over 4 MiB, not UTF-8 TOML/JSON, over 10,000 items, a
            repeated id, or an invalid item (the message names the file, the item and the key).
    """
    label = f"places file {path}"
    try:
        data = read_bounded(path, MAX_PLACE_FILE_BYTES, "places file")
        document = decode_document(data, path.suffix or ".json", label)
    except (FileReadError, PlacesError) as exc:
        raise PlaceFileError(str(exc)) from exc
    if isinstance(document, Mapping):
        key = next((k for k in ("place", "places", "market", "markets") if k in document), None)
        if key is None:
            raise PlaceFileError(f"{label} has no [[place]]/[[market]] array nor a 'places'/'markets' list")
        document = document[key]
    if not isinstance(document, list):
        raise PlaceFileError(f"{label} must hold a list of places, got {type(document).__name__}")
    if len(document) > MAX_PLACES:
        raise PlaceFileError(f"{label} has {len(document)} places, over the limit of {MAX_PLACES}")
    out: list[dict[str, Any]] = []
    seen: set[str] = set()
    for index, item in enumerate(document):
        where = f"{label} item {index}"
        if not isinstance(item, Mapping):
            raise PlaceFileError(f"{where} must be a table/map, got {type(item).__name__}")
        typed = {**item, "type": default_type.value} if default_type is not None and "type" not in item else item
        checked = check_place_item(typed, where)
        if checked["id"] in seen:
            raise PlaceFileError(f"{where}: id {checked['id']!r} is repeated")
        seen.add(checked["id"])
        out.append(checked)
    return out


def upsert_places(session: Session, items: Iterable[Mapping[str, Any]], *, now_ms: int) -> tuple[int, int]:
    """Create or replace places by id (checked items; the caller commits). Returns ``(created, changed)``.

    A live place stored with exactly these values is left alone (re-importing a file changes
    nothing and signs nothing); a tombstone with the id comes back to life (counted as created).
    """
    created = changed = 0
    for item in items:
        row = session.get(PlaceRecord, item["id"])
        values = tuple(item[k] for k in _ITEM_KEYS[1:])
        if row is not None and row.deleted_ms is None:
            if (row.type, row.name, row.lat, row.lon, row.radius_m, row.datum) == values:
                continue
            changed += 1
        else:
            created += 1
            if row is None:
                row = PlaceRecord(place_id=item["id"])
                session.add(row)
        row.type, row.name, row.lat, row.lon, row.radius_m, row.datum = values
        row.updated_ms, row.deleted_ms = now_ms, None
    session.flush()
    return created, changed


def delete_place(session: Session, place_id: str, *, now_ms: int) -> bool:
    """Delete a live place (a tombstone stays; the caller commits). False if there is none."""
    row = session.get(PlaceRecord, place_id)
    if row is None or row.deleted_ms is not None:
        return False
    row.deleted_ms = row.updated_ms = now_ms
    session.flush()
    return True


def place_circles_wgs84(session: Session) -> list[tuple[str, str, str, float, float, float]]:
    """Every live place as ``(id, type, name, lat, lon, radius_m)`` in WGS-84 (for maps)."""
    out = []
    for item in place_items(session):
        lat, lon = to_wgs84(item["lat"], item["lon"], item["datum"])
        out.append((item["id"], item["type"], item["name"], lat, lon, item["radius_m"]))
    return out
