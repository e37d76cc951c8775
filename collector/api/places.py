"""``/v1/places``: the typed places the devices watch (used-car markets, pawn lots, ports, ...).

=======================  ==========================  =====================================
route                    role                        does
=======================  ==========================  =====================================
``GET /v1/places``       admin, risk_analyst         every place (``?type=`` filters)
``GET /v1/places/{id}``  admin, risk_analyst         one place
``PUT /v1/places/{id}``  admin                       create or replace; signs the new list
``DELETE ...{id}``       admin                       delete; signs the new list
``/v1/markets...``       as above                    the same for places of type
                                                     ``used_car_market`` (no ``type`` key)
=======================  ==========================  =====================================

Every item is checked with the agents' own loader (:func:`protocol.places.load_places`)
before it is stored; a change signs the new configuration for every target device in the
request's transaction (:func:`collector.jobs.downlink.build_device_configs`) and publishes
after the commit. Every change writes an audit row. Mounted by ``serve``
(``OPTIONAL_ROUTER_MODULES``).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, status
from pydantic import BaseModel, Field
from sqlalchemy.orm import Session

from protocol.places import PlaceType

from ..jobs.downlink import build_device_configs, config_targets
from ..storage.places import (
    PLACE_ID_RE,
    PlaceFileError,
    check_place_item,
    delete_place,
    place_item,
    place_items,
    upsert_places,
)
from ..storage.tables import PlaceRecord
from .auth import Principal, audit_principal, require_role
from .dependencies import ClockDep, Downlink, DownlinkDep, SessionDep

__all__ = ["PlaceIn", "router"]

router = APIRouter(prefix="/v1", tags=["places"])
PlaceReader = Annotated[Principal, Depends(require_role("admin", "risk_analyst"))]
PlaceKeeper = Annotated[Principal, Depends(require_role("admin"))]
_TYPES = "^(" + "|".join(t.value for t in PlaceType) + ")$"


class PlaceIn(BaseModel):
    """Body of ``PUT /v1/places/{id}`` (the keys of a place item but ``id``)."""

    type: str = Field(default=PlaceType.USED_CAR_MARKET.value, pattern=_TYPES)
    name: str = Field(min_length=1, max_length=200)
    lat: float = Field(ge=-90, le=90)
    lon: float = Field(ge=-180, le=180)
    radius_m: float = Field(ge=1, le=50_000)
    datum: str = Field(pattern="^(wgs84|gcj02|bd09)$")


def _push(session: Session, downlink: Downlink, now_ms: int) -> dict[str, Any]:
    """Sign the new list for every target device (outbox rows in this transaction), commit, publish."""
    if downlink.signing_key is None:
        session.commit()
        return {"configs_signed": 0, "note": "no collector signing key configured; devices not updated"}
    messages = build_device_configs(session, downlink.signing_key, config_targets(session), now_ms)
    session.commit()
    if downlink.publish is not None:
        downlink.publish(messages)
    return {"configs_signed": len(messages), "published": downlink.publish is not None}


def _check_id(place_id: str) -> None:
    if not PLACE_ID_RE.fullmatch(place_id):
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, "place id must match [A-Za-z0-9_.:-]{1,64}")


def _put(
    session: Session, principal: Principal, now_ms: int, downlink: Downlink, item: dict[str, Any]
) -> dict[str, Any]:
    _check_id(item["id"])
    try:
        checked = check_place_item(item, f"place {item['id']}")
    except PlaceFileError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from exc
    created, changed = upsert_places(session, [checked], now_ms=now_ms)
    audit_principal(session, now_ms, principal, "put_place", kind="place", subject=checked["id"],
                    type=checked["type"], created=bool(created))
    if not (created or changed):
        session.commit()
        return {"place_id": checked["id"], "unchanged": True, "configs_signed": 0}
    return {"place_id": checked["id"]} | _push(session, downlink, now_ms)


def _delete(
    session: Session, principal: Principal, now_ms: int, downlink: Downlink, place_id: str,
    *, place_type: PlaceType | None = None,
) -> dict[str, Any]:
    row = session.get(PlaceRecord, place_id)
    if row is None or row.deleted_ms is not None or (place_type is not None and row.type != place_type.value):
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"{(place_type or 'place')!s} {place_id!r:.64} does not exist")
    delete_place(session, place_id, now_ms=now_ms)
    audit_principal(session, now_ms, principal, "delete_place", kind="place", subject=place_id)
    return {"place_id": place_id, "deleted": True} | _push(session, downlink, now_ms)


@router.get("/places")
def list_places(
    session: SessionDep,
    principal: PlaceReader,
    type: Annotated[str | None, Query(pattern=_TYPES)] = None,
) -> list[dict[str, Any]]:
    """Every live place (of one type with ``?type=``), ordered by id, as stored (declared datum)."""
    return place_items(session, None if type is None else [type])


@router.get("/places/{place_id}")
def get_place(place_id: str, session: SessionDep, principal: PlaceReader) -> dict[str, Any]:
    """One live place."""
    row = session.get(PlaceRecord, place_id)
    if row is None or row.deleted_ms is not None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"place {place_id!r:.64} does not exist")
    return place_item(row)


@router.put("/places/{place_id}")
def put_place(
    place_id: str, *, body: PlaceIn, session: SessionDep, principal: PlaceKeeper, clock_ms: ClockDep,
    downlink: DownlinkDep,
) -> dict[str, Any]:
    """Create or replace a place, then sign the new list for every target device."""
    return _put(session, principal, clock_ms(), downlink, {"id": place_id, **body.model_dump()})


@router.delete("/places/{place_id}")
def remove_place(
    place_id: str, *, session: SessionDep, principal: PlaceKeeper, clock_ms: ClockDep, downlink: DownlinkDep
) -> dict[str, Any]:
    """Delete a place, then sign the new list for every target device."""
    return _delete(session, principal, clock_ms(), downlink, place_id)


class MarketIn(BaseModel):
    """Body of ``PUT /v1/markets/{id}`` (a used-car market; the keys of the old markets API)."""

    name: str = Field(min_length=1, max_length=200)
    lat: float = Field(ge=-90, le=90)
    lon: float = Field(ge=-180, le=180)
    radius_m: float = Field(ge=1, le=50_000)
    datum: str = Field(pattern="^(wgs84|gcj02|bd09)$")


_MARKET = PlaceType.USED_CAR_MARKET


@router.get("/markets")
def list_markets(session: SessionDep, principal: PlaceReader) -> list[dict[str, Any]]:
    """Every used-car market, in the shape of the old markets API (no ``type``)."""
    return [{k: v for k, v in p.items() if k != "type"} for p in place_items(session, [_MARKET])]


@router.put("/markets/{market_id}")
def put_market(
    market_id: str, *, body: MarketIn, session: SessionDep, principal: PlaceKeeper, clock_ms: ClockDep,
    downlink: DownlinkDep,
) -> dict[str, Any]:
    """Create or replace a used-car market (a place of that type)."""
    answer = _put(session, principal, clock_ms(), downlink, {"id": market_id, "type": _MARKET.value,
                                                             **body.model_dump()})
    return {"market_id": answer.pop("place_id")} | answer


@router.delete("/markets/{market_id}")
def delete_market(
    market_id: str, *, session: SessionDep, principal: PlaceKeeper, clock_ms: ClockDep, downlink: DownlinkDep
) -> dict[str, Any]:
    """Delete a used-car market."""
    answer = _delete(session, principal, clock_ms(), downlink, market_id, place_type=_MARKET)
    return {"market_id": answer.pop("place_id")} | answer
