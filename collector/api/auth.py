"""Bearer API keys and roles.

Each key maps to one role (``admin``, ``risk_analyst``, ``collections``, ``auditor``) in
``Settings.api_keys``, which holds SHA-256 hashes only. ``require_role(*roles)`` is a
FastAPI dependency: no key or an unknown key -> 401 (with ``WWW-Authenticate: Bearer``),
a known key of another role -> 403 (written to the audit log as ``access_denied``). It
returns the :class:`Principal` for auditing.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated

import sqlalchemy as sa
from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from ..settings import ROLES, Settings, get_settings, hash_api_key
from ..storage.audit import record_access
from .dependencies import ClockDep, EngineDep

__all__ = ["ROLES", "Principal", "authenticate", "bearer_accepted", "require_role"]

log = logging.getLogger(__name__)
_bearer = HTTPBearer(auto_error=False, description="LienWatch API key")
MAX_KEY_CHARS = 512


@dataclass(frozen=True, slots=True)
class Principal:
    """Who called: the role of the key and a short, non-secret key id (hash prefix)."""

    role: str
    key_id: str


def authenticate(api_key: str, settings: Settings) -> Principal | None:
    """The principal for ``api_key``, or ``None`` when the key is not configured."""
    if not api_key or len(api_key) > MAX_KEY_CHARS:
        return None
    digest = hash_api_key(api_key)
    for known, role in settings.api_keys.items():
        if hmac.compare_digest(known, digest):
            return Principal(role=role, key_id=digest[:12])
    return None


def bearer_accepted(settings: Settings) -> Callable[[list[tuple[bytes, bytes]]], bool]:
    """A header-only check for :class:`collector.api.request_guard.RequestGuard`.

    True when the ``Authorization: Bearer`` header holds a configured key (any role: the
    route still checks the role); nothing of the body is needed to decide.
    """

    def accepted(headers: list[tuple[bytes, bytes]]) -> bool:
        for name, value in headers:
            if name.lower() == b"authorization" and len(value) <= MAX_KEY_CHARS + 7:
                scheme, _, token = value.decode("latin-1").partition(" ")
                return scheme.lower() == "bearer" and authenticate(token.strip(), settings) is not None
        return False

    return accepted


def _audit_denied(request: Request, engine: Engine, now: int, principal: Principal, roles: tuple[str, ...]) -> None:
    """Write an ``access_denied`` audit row for a known key refused by its role.

    A key trying what its role may not do (a collections key asking for a track) is worth a
    record; the refusal stands even if the audit write fails (that is logged).
    """
    try:
        with Session(engine) as session:
            record_access(
                session,
                actor=principal.key_id,
                role=principal.role,
                action="access_denied",
                subject_type="route",
                subject_id=request.url.path[:128],
                time_ms=now,
                detail={"method": request.method, "needs": list(roles)},
            )
            session.commit()
    except sa.exc.SQLAlchemyError:
        log.exception("could not audit a refused %s %s by key %s", request.method, request.url.path, principal.key_id)


def require_role(*roles: str) -> Callable[..., Principal]:
    """A dependency admitting only bearer keys whose role is one of ``roles``.

    Raises:
        ValueError: a role name that does not exist (a bug in the route declaration).
    """
    unknown = [r for r in roles if r not in ROLES]
    if unknown or not roles:
        raise ValueError(f"require_role needs roles from {ROLES}, got {roles!r}")

    def dependency(
        request: Request,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
        settings: Annotated[Settings, Depends(get_settings)],
        engine: EngineDep,
        clock_ms: ClockDep,
    ) -> Principal:
        principal = authenticate(credentials.credentials, settings) if credentials is not None else None
        if principal is None:
            raise HTTPException(
                status_code=status.HTTP_401_UNAUTHORIZED,
                detail="missing or unknown API key",
                headers={"WWW-Authenticate": "Bearer"},
            )
        if principal.role not in roles:
            _audit_denied(request, engine, clock_ms(), principal, roles)
            raise HTTPException(
                status_code=status.HTTP_403_FORBIDDEN,
                detail=f"role {principal.role!r} may not do this (needs {' or '.join(roles)})",
            )
        return principal

    return dependency
