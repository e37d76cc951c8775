"""Bearer API keys, console sessions and roles.

Each key maps to one role (``admin``, ``risk_analyst``, ``collections``, ``auditor``) in
``Settings.api_keys``, which holds SHA-256 hashes only. ``require_role(*roles)`` is a
FastAPI dependency: no key or an unknown key -> 401 (with ``WWW-Authenticate: Bearer``),
a known key of another role -> 403 (written to the audit log as ``access_denied``). It
returns the :class:`Principal` for auditing.

A request without a bearer key may carry a console session cookie instead
(:mod:`collector.people`): when the app has a ``session_principal`` resolver on its state
(the console installs one), that session's principal is used, and a write (any method but
GET/HEAD/OPTIONS) must then carry the session's CSRF token in ``X-CSRF-Token`` (403
otherwise). One :class:`Principal` type serves the API, the console and the audit log.
"""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from .settings import ROLES, Settings, get_settings, hash_api_key

__all__ = ["CSRF_HEADER", "ROLES", "Principal", "authenticate", "csrf_matches", "require_role", "session_principal"]

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


def _audit_denied(request: Request, principal: Principal, roles: tuple[str, ...]) -> None:
    """Write an ``access_denied`` audit row for a known key refused by its role.

    A key trying what its role may not do (a collections key asking for a track) is worth a
    record; the refusal stands even if the audit write fails (that is logged).
    """
    import sqlalchemy as sa
    from sqlalchemy.orm import Session

    from .audit import record_access

    engine = getattr(request.app.state, "engine", None)
    if engine is None:
        return
    clock = getattr(request.app.state, "clock_ms", None)
    now = clock() if clock is not None else time.time_ns() // 1_000_000
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


def session_principal(request: Request) -> Principal | None:
    """The principal of the request's console session, if the app resolves sessions."""
    resolver: Callable[[Request], Principal | None] | None = getattr(request.app.state, "session_principal", None)
    return resolver(request) if resolver is not None else None


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
    ) -> Principal:
        principal = authenticate(credentials.credentials, settings) if credentials is not None else None
        if principal is None and credentials is None:
            principal = session_principal(request)
            if principal is not None and request.method not in SAFE_METHODS and not csrf_matches(request, principal):
                raise HTTPException(status.HTTP_403_FORBIDDEN, "missing or wrong CSRF token")
        if principal is None:
            raise HTTPException(
                status_code=status.HTTP_401_UNAUTHORIZED,
                detail="missing or unknown API key",
                headers={"WWW-Authenticate": "Bearer"},
            )
        if principal.role not in roles:
            _audit_denied(request, principal, roles)
            raise HTTPException(
                status_code=status.HTTP_403_FORBIDDEN,
                detail=f"role {principal.role!r} may not do this (needs {' or '.join(roles)})",
            )
        return principal

    return dependency
