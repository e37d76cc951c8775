"""Bearer API keys, console sessions and roles.

Each key maps to one role (``admin``, ``risk_analyst``, ``collections``, ``auditor``) in
``Settings.api_keys``, which holds SHA-256 hashes only. ``require_role(*roles)`` is a
FastAPI dependency: no key or an unknown key -> 401 (with ``WWW-Authenticate: Bearer``),
a known key of another role -> 403 (written to the audit log as ``access_denied``). It
returns the :class:`Principal` for auditing.

A request without a bearer key may carry a console session cookie instead
(:mod:`collector.storage.people`, resolved by :func:`session_principal`): that session's
principal is used, and a write (any method but
GET/HEAD/OPTIONS) must then carry the session's CSRF token in ``X-CSRF-Token`` (403
otherwise). One :class:`Principal` type serves the API, the console and the audit log.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from http.cookies import CookieError, SimpleCookie
from typing import Annotated, Any

import sqlalchemy as sa
from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from ..settings import ROLES, Settings, get_settings, hash_api_key
from ..storage.audit import record_access
from ..storage.people import SESSION_COOKIE, find_session
from .dependencies import ClockDep, EngineDep

__all__ = [
    "CSRF_HEADER",
    "ROLES",
    "Principal",
    "audit_principal",
    "authenticate",
    "bearer_accepted",
    "console_session",
    "csrf_matches",
    "require_role",
    "session_principal",
]

log = logging.getLogger(__name__)
_bearer = HTTPBearer(auto_error=False, description="LienWatch API key")
MAX_KEY_CHARS = 512


SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
CSRF_HEADER = "X-CSRF-Token"


@dataclass(frozen=True, slots=True)
class Principal:
    """Who called, for authorisation and audit.

    Attributes:
        role: one of :data:`ROLES`.
        key_id: the audit actor: a short, non-secret key id (hash prefix) for an API key,
            ``user:{username}`` for a named user.
        username: the named user, if any (docs/people.md).
        display_name: shown in the console.
        locale: ``en`` or ``zh-CN`` (the console's message catalog).
        time_zone: the user's IANA zone (loans are shown in the borrower's zone).
        csrf_token: the console session's CSRF token (``None`` for a bearer key).
    """

    role: str
    key_id: str
    username: str | None = None
    display_name: str | None = None
    locale: str = "en"
    time_zone: str = "Asia/Shanghai"
    csrf_token: str | None = field(default=None, repr=False)

    @property
    def via_session(self) -> bool:
        """True when the principal came from a console session cookie."""
        return self.csrf_token is not None


def authenticate(api_key: str, settings: Settings) -> Principal | None:
    """The principal for ``api_key``, or ``None`` when the key is not configured."""
    if not api_key or len(api_key) > MAX_KEY_CHARS:
        return None
    digest = hash_api_key(api_key)
    for known, role in settings.api_keys.items():
        if hmac.compare_digest(known, digest):
            return Principal(role=role, key_id=digest[:12])
    return None


def bearer_accepted(
    settings: Settings, engine: Engine | None = None, clock_ms: Callable[[], int] | None = None
) -> Callable[[list[tuple[bytes, bytes]]], bool]:
    """A header-only check for :class:`collector.api.request_guard.RequestGuard`.

    True when the ``Authorization: Bearer`` header holds a configured key (any role: the
    route still checks the role), or, given the database, when the console session cookie
    names a live session; nothing of the body is needed to decide.
    """

    def live_session(cookie_header: bytes) -> bool:
        if engine is None or clock_ms is None or len(cookie_header) > 4096:
            return False
        jar = SimpleCookie()
        try:
            jar.load(cookie_header.decode("latin-1"))
        except CookieError:
            return False
        morsel = jar.get(SESSION_COOKIE)
        if morsel is None:
            return False
        idle_ms = int(settings.console.session_idle_minutes * 60_000)
        with Session(engine) as session:
            found = find_session(session, morsel.value, now_ms=clock_ms(), idle_ms=idle_ms)
            session.commit()
        return found is not None

    def accepted(headers: list[tuple[bytes, bytes]]) -> bool:
        for name, value in headers:
            lowered = name.lower()
            if lowered == b"authorization" and len(value) <= MAX_KEY_CHARS + 7:
                scheme, _, token = value.decode("latin-1").partition(" ")
                if scheme.lower() == "bearer" and authenticate(token.strip(), settings) is not None:
                    return True
            elif lowered == b"cookie" and live_session(value):
                return True
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


def session_principal(request: Request, settings: Settings, engine: Engine, now_ms: int) -> Principal | None:
    """The principal of the request's console session cookie (``lw_session``), if it is live.

    Looked up once per request (cached on ``request.state``); an idle or expired session is
    ended by :func:`collector.storage.people.find_session`.
    """
    if hasattr(request.state, "console_principal"):
        cached: Principal | None = request.state.console_principal
        return cached
    token = request.cookies.get(SESSION_COOKIE)
    principal = None
    if token:
        idle_ms = int(settings.console.session_idle_minutes * 60_000)
        with Session(engine) as session:
            found = find_session(session, token, now_ms=now_ms, idle_ms=idle_ms)
            session.commit()
        if found is not None:
            principal = Principal(
                role=found.role,
                key_id=found.actor,
                username=found.username,
                display_name=found.display_name,
                locale=found.locale,
                time_zone=found.time_zone,
                csrf_token=found.csrf_token,
            )
    request.state.console_principal = principal
    return principal


def console_session(
    request: Request, settings: Annotated[Settings, Depends(get_settings)], engine: EngineDep, clock_ms: ClockDep
) -> Principal | None:
    """A dependency: the principal of the request's console session, or ``None``."""
    return session_principal(request, settings, engine, clock_ms())


def csrf_matches(request: Request, principal: Principal, form_token: str | None = None) -> bool:
    """True when the request carries the session's CSRF token (header or form field)."""
    sent = form_token if form_token is not None else request.headers.get(CSRF_HEADER, "")
    return principal.csrf_token is not None and hmac.compare_digest(sent.encode(), principal.csrf_token.encode())


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
        if principal is None and credentials is None:
            principal = session_principal(request, settings, engine, clock_ms())
            if principal is not None and request.method not in SAFE_METHODS and not csrf_matches(request, principal):
                raise HTTPException(status.HTTP_403_FORBIDDEN, "missing or wrong CSRF token")
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


def audit_principal(
    session: Session, now_ms: int, principal: Principal, action: str, *, kind: str, subject: str, **detail: Any
) -> None:
    """Append one audit row for what ``principal`` did (the caller commits)."""
    record_access(
        session,
        actor=principal.key_id,
        role=principal.role,
        action=action,
        subject_type=kind,
        subject_id=subject,
        time_ms=now_ms,
        detail=detail,
    )
