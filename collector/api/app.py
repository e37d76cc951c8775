"""The collector's HTTP API (FastAPI): health, metrics, the device registry for admins.

``create_app(settings, routers=[...])`` is the one place routers are mounted: the loans,
repayments and risk routers of other modules are passed in (the ``serve`` command passes
every module named in :data:`OPTIONAL_ROUTER_MODULES` that is installed). Routes take the
settings, the database, the clock and the downlink wiring through the dependencies of
:mod:`collector.api.dependencies`, which ``create_app`` overrides with its arguments.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from typing import Annotated, Any

import sqlalchemy as sa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Response, status
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from pydantic import BaseModel, Field
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from ..clock import ClockMs, wall_clock_ms
from ..errors import DeviceExistsError, DeviceNotFoundError, InvalidPublicKeyError, RegistryError
from ..ingest.health import IngestHealth
from ..ingest.ingestor import DEAD_LETTER_REASONS
from ..ingest.registry import DeviceRegistry
from ..jobs.downlink import ConfigMessage, build_device_configs, load_signing_key
from ..jobs.receipts import device_gaps, fleet_gap_totals, fleet_gaps
from ..settings import Settings, get_settings
from ..storage.database import open_database
from ..storage.places import places_revision
from ..storage.tables import Base
from .api_schema import document_refusals
from .auth import Principal, audit_principal, bearer_accepted, require_role
from .dependencies import (
    ClockDep,
    Downlink,
    DownlinkDep,
    EngineDep,
    get_clock,
    get_downlink,
    get_engine,
)
from .offline_docs import install_offline_docs
from .request_guard import RequestGuard

__all__ = ["OPTIONAL_ROUTER_MODULES", "create_app", "discover_routers"]

log = logging.getLogger(__name__)

#: Modules whose ``router`` (an APIRouter) ``serve`` mounts when the module exists.
OPTIONAL_ROUTER_MODULES: tuple[str, ...] = (
    "collector.api.loans",
    "collector.api.access",
    "collector.api.places",
    "collector.api.alerts",
    "collector.api.cases",
    "collector.console.web",
    "collector.console.case_pages",
    "collector.console.user_pages",
)

_status = Base.metadata.tables["device_status"]
#: The device state columns that locate the car (given only with a reason).
POSITION_COLUMNS = frozenset({"last_lat", "last_lon", "last_speed_mps"})
_dead = Base.metadata.tables["dead_letters"]


#: The caller, admitted only with an ``admin`` key.
AdminPrincipal = Annotated[Principal, Depends(require_role("admin"))]


class DeviceIn(BaseModel):
    """Body of ``POST /v1/devices``."""

    device_id: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    public_key_pem: str = Field(max_length=4096)
    label: str | None = Field(default=None, max_length=200)


def discover_routers(modules: Iterable[str] = OPTIONAL_ROUTER_MODULES) -> list[APIRouter]:
    """Import each module that exists and return its ``router``.

    A module that is not installed is skipped; one that exists but fails to import raises.
    """
    routers = []
    for name in modules:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            continue
        routers.append(module.router)
    return routers


def _send_current_places(engine: Engine, downlink: Downlink, now_ms: int, device_id: str) -> int:
    """Sign the current place list for a newly registered device; publish it after the commit.

    Nothing when no signing key is configured or the collector never had a place (the
    device keeps its local places file). Returns how many configurations were signed.
    """
    if downlink.signing_key is None:
        return 0
    with Session(engine) as session:
        if places_revision(session) is None:
            return 0
        messages = build_device_configs(session, downlink.signing_key, [device_id], now_ms)
        session.commit()
    if downlink.publish is not None:
        downlink.publish(messages)
    return len(messages)


def _audit(
    engine: Engine, now_ms: int, principal: Principal, action: str, *, kind: str, subject: str, **detail: Any
) -> None:
    """Append one audit row and commit it (before the answer leaves)."""
    with Session(engine) as session:
        audit_principal(session, now_ms, principal, action, kind=kind, subject=subject, **detail)
        session.commit()


def _devices_router() -> APIRouter:
    router = APIRouter(prefix="/v1/devices", tags=["devices"])

    @router.get("")
    def list_devices(engine: EngineDep, clock_ms: ClockDep, principal: AdminPrincipal) -> list[dict[str, Any]]:
        """Every registered device with its newest key."""
        devices = [d.as_dict() for d in DeviceRegistry(engine).list_devices()]
        _audit(engine, clock_ms(), principal, "list_devices", kind="device", subject="*", count=len(devices))
        return devices

    @router.post("", status_code=status.HTTP_201_CREATED)
    def add_device(
        body: DeviceIn,
        engine: EngineDep,
        clock_ms: ClockDep,
        downlink: DownlinkDep,
        principal: AdminPrincipal,
    ) -> dict[str, Any]:
        """Register a device with its PEM Ed25519 public key."""
        try:
            info = DeviceRegistry(engine, clock_ms=clock_ms).add(
                body.device_id, body.public_key_pem, label=body.label
            )
        except DeviceExistsError as exc:
            raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from exc
        except (InvalidPublicKeyError, RegistryError) as exc:
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from exc
        log.info("device %s added by key %s", body.device_id, principal.key_id)
        _audit(engine, clock_ms(), principal, "add_device", kind="device", subject=body.device_id)
        signed = _send_current_places(engine, downlink, clock_ms(), body.device_id)
        return info.as_dict() | {"configs_signed": signed}

    @router.get("/gaps")
    def list_gaps(
        engine: EngineDep,
        clock_ms: ClockDep,
        principal: AdminPrincipal,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        all_devices: Annotated[bool, Query(alias="all")] = False,
    ) -> dict[str, Any]:
        """Devices with missing batch seqs (most missing first) and the fleet totals."""
        with Session(engine) as session:
            devices = fleet_gaps(session, limit=limit, include_complete=all_devices)
            totals = fleet_gap_totals(session)
        _audit(engine, clock_ms(), principal, "read_gaps", kind="device", subject="*", count=len(devices))
        return {**totals, "devices": devices}

    @router.get("/{device_id}")
    def get_device(
        device_id: str,
        engine: EngineDep,
        clock_ms: ClockDep,
        principal: AdminPrincipal,
        reason: Annotated[str | None, Query(max_length=500)] = None,
    ) -> dict[str, Any]:
        """A device, its key and its latest state.

        Its last position (``last_lat``, ``last_lon``, ``last_speed_mps``) is given only with a
        ``reason``, which the audit row records (docs/compliance.md, location access).
        """
        try:
            info = DeviceRegistry(engine).get(device_id)
        except DeviceNotFoundError as exc:
            raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from exc
        with engine.connect() as conn:
            row = conn.execute(sa.select(_status).where(_status.c.device_id == device_id)).mappings().first()
        state = None
        if row is not None:
            hidden = {"device_id"} if reason and reason.strip() else {"device_id", *POSITION_COLUMNS}
            state = {k: (v.hex() if isinstance(v, bytes) else v) for k, v in row.items() if k not in hidden}
        with Session(engine) as session:
            ledger = device_gaps(session, device_id)
        with_position = bool(reason and reason.strip())
        _audit(engine, clock_ms(), principal, "read_device", kind="device", subject=device_id,
               position=with_position, access_reason=reason.strip() if with_position and reason else None)
        return {**info.as_dict(), "status": state, "seq_ledger": ledger}

    @router.post("/{device_id}/revoke")
    def revoke_device(
        device_id: str,
        engine: EngineDep,
        clock_ms: ClockDep,
        principal: AdminPrincipal,
    ) -> dict[str, Any]:
        """Revoke the device's key; its messages are dead-lettered from then on."""
        try:
            info = DeviceRegistry(engine).revoke(device_id)
        except DeviceNotFoundError as exc:
            raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from exc
        log.info("device %s revoked by key %s", device_id, principal.key_id)
        _audit(engine, clock_ms(), principal, "revoke_device", kind="device", subject=device_id)
        return info.as_dict()

    return router


def _dead_letters_router() -> APIRouter:
    router = APIRouter(prefix="/v1/dead-letters", tags=["ingest"])

    @router.get("")
    def list_dead_letters(
        engine: EngineDep,
        clock_ms: ClockDep,
        principal: AdminPrincipal,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        reason: Annotated[str | None, Query(max_length=64)] = None,
    ) -> list[dict[str, Any]]:
        """Newest dead letters first (without their raw bytes); an unknown ``reason`` is a 422."""
        if reason is not None and reason not in DEAD_LETTER_REASONS:
            raise HTTPException(
                status.HTTP_422_UNPROCESSABLE_CONTENT,
                f"unknown reason {reason!r}; one of: {', '.join(DEAD_LETTER_REASONS)}",
            )
        stmt = (
            sa.select(
                _dead.c.id,
                _dead.c.received_ms,
                _dead.c.topic,
                _dead.c.device_id,
                _dead.c.reason,
                _dead.c.detail,
                _dead.c.payload_bytes,
            )
            .order_by(_dead.c.id.desc())
            .limit(limit)
        )
        if reason is not None:
            stmt = stmt.where(_dead.c.reason == reason)
        with engine.connect() as conn:
            letters = [dict(row) for row in conn.execute(stmt).mappings()]
        subject = reason or "*"
        count = len(letters)
        _audit(engine, clock_ms(), principal, "read_dead_letters", kind="dead_letter", subject=subject, count=count)
        return letters

    return router


def create_app(
    settings: Settings,
    *,
    engine: Engine | None = None,
    metrics_registry: CollectorRegistry | None = None,
    routers: Iterable[APIRouter] = (),
    clock_ms: ClockMs | None = None,
    signing_key: Ed25519PrivateKey | None = None,
    config_publisher: Callable[[Sequence[ConfigMessage]], None] | None = None,
    ingest_health: Callable[[], IngestHealth] | None = None,
) -> FastAPI:
    """Build the collector API.

    Every route gets its wiring through the dependencies of :mod:`collector.api.dependencies`,
    overridden here with the arguments: ``get_settings``, ``get_engine``, ``get_clock`` and
    ``get_downlink``.

    Args:
        settings: injected as the ``get_settings`` dependency.
        engine: the database; when ``None`` one is opened (and migrated) from ``settings``
            and disposed when the app shuts down.
        metrics_registry: served at ``/metrics`` (the ingest's, when both run in one process).
        routers: further routers to mount (loans, repayments, risk, ...).
        clock_ms: the collector clock (wall clock when ``None``).
        signing_key: the downlink signing key; when ``None`` it is loaded from
            ``[downlink] signing_key`` if that is set.
        config_publisher: called with the configurations signed by a request, after its
            commit (``serve`` passes :meth:`collector.jobs.downlink.ConfigPublisher.submit`).
        ingest_health: the ingest's health (broker link, lag, last message age) for
            ``/healthz``; ``None`` when this process runs no ingest (``--api-only``).

    Raises:
        ConfigError: ``[downlink] signing_key`` is set but cannot be loaded.
    """
    if signing_key is None and settings.downlink.signing_key is not None:
        signing_key = load_signing_key(settings.downlink.signing_key)
    owns_engine = engine is None
    if engine is None:
        engine = open_database(
            settings.resolved_database_url, sqlite_busy_timeout_ms=settings.limits.sqlite_busy_timeout_ms
        )
    db = engine
    registry = metrics_registry if metrics_registry is not None else CollectorRegistry()

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        if owns_engine:
            db.dispose()

    # /docs is served from local files (collector.api.offline_docs); ReDoc would need a CDN.
    app = FastAPI(title="LienWatch collector", version="0.1.0", lifespan=lifespan, docs_url=None, redoc_url=None)
    clock = clock_ms if clock_ms is not None else wall_clock_ms
    downlink = Downlink(signing_key, config_publisher)
    app.dependency_overrides[get_settings] = lambda: settings
    app.dependency_overrides[get_engine] = lambda: db
    app.dependency_overrides[get_clock] = lambda: clock
    app.dependency_overrides[get_downlink] = lambda: downlink

    @app.get("/healthz", tags=["ops"])
    def healthz(response: Response) -> dict[str, Any]:
        """``ok``, ``degraded`` (serving, but with problems; 200) or ``failed`` (503), with reasons.

        ``failed``: the database is unreachable. ``degraded``: the ingest of this process is
        not connected to the broker, lags, or has heard nothing for a long time. No
        authentication.
        """
        body: dict[str, Any] = {"status": "ok", "reasons": [], "database": "ok"}
        try:
            with db.connect() as conn:
                conn.execute(sa.text("SELECT 1"))
        except sa.exc.SQLAlchemyError as exc:
            body["database"] = f"unreachable: {type(exc).__name__}"
            body["reasons"].append(f"database unreachable ({type(exc).__name__})")
            body["status"] = "failed"
        if ingest_health is not None:
            ingest = ingest_health()
            body["ingest"] = ingest.as_dict()
            body["reasons"].extend(ingest.reasons)
            if ingest.status != "ok" and body["status"] == "ok":
                body["status"] = "degraded"
        if body["status"] == "failed":
            response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
        return body

    @app.get("/metrics", tags=["ops"])
    def metrics() -> Response:
        """Prometheus text exposition (no personal data in it, no authentication)."""
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    app.include_router(_devices_router())
    app.include_router(_dead_letters_router())
    for router in routers:
        app.include_router(router)
    install_offline_docs(app)
    document_refusals(app)
    app.add_middleware(
        RequestGuard,
        max_body_bytes=settings.api.max_body_bytes,
        is_authenticated=bearer_accepted(settings, db, clock),
        # the sign-in form carries the password or key it is checking
        open_paths=("/console/sign-in",),
    )
    return app
