"""The console's user management (admins): list, create, change a role, disable/enable, reset a password.

``/console/users`` is the console's side of ``lienwatch collector users`` (docs/people.md):
the same table, the same checks (:mod:`collector.storage.people`) and the same rule for
passwords: the admin sets the initial password (typed twice), nothing is generated or
shown afterwards. A role change, a disable and a password reset end every session of that
user (a session carries the role it began with). Refused: another role than ``admin``
(403, with an audit row ``users_denied``), disabling yourself or taking away your own admin
role, leaving no enabled admin, and bad input (the typed :class:`PeopleError` comes back on
the page with 422). Every change is an audit row with the signed-in admin as actor and
subject ``user:{username}``: ``add_user``, ``set_user_role``, ``disable_user``,
``enable_user``, ``reset_password``; a refused change is ``{action}_refused`` with the reason.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Request, status
from fastapi.responses import RedirectResponse, Response
from sqlalchemy.orm import Session

from ..api.auth import Principal
from ..roles import ROLES
from ..storage.people import (
    DEFAULT_TIME_ZONE,
    LOCALES,
    PeopleError,
    add_user,
    last_sign_ins,
    list_users,
    set_disabled,
    set_password,
    set_role,
)
from ..timefmt import format_time
from .web import PAGE_ROLES, PagePrincipal, _audit, _checked_form, _engine, _now_ms, _render, _wire

__all__ = ["router"]

router = APIRouter(prefix="/console", include_in_schema=False, dependencies=[Depends(_wire)])
MAX_FIELD_CHARS = 1025


def _admin_only(request: Request, principal: Principal, what: str) -> None:
    """403 for every role but admin, with an audit row saying who tried what."""
    if principal.role in PAGE_ROLES["users"]:
        return
    with Session(_engine(request)) as session:
        _audit(session, request, principal, "users_denied", "user", subject_id="*", attempted=what)
        session.commit()
    raise HTTPException(status.HTTP_403_FORBIDDEN, f"role {principal.role!r} may not manage users")


def _page(request: Request, principal: Principal, *, error: str | None = None, error_for: str | None = None,
          notice: str | None = None, form: dict[str, str] | None = None, status_code: int = 200) -> Response:
    with Session(_engine(request)) as session:
        users = list_users(session)
        signed_in = last_sign_ins(session, [u["username"] for u in users])
        _audit(session, request, principal, "view_users", "user", subject_id="*", rows=len(users))
        session.commit()
    zone_name = principal.time_zone
    rows: list[dict[str, Any]] = [
        {**u, "last_sign_in": format_time(signed_in.get(u["username"]), zone_name),
         "me": u["username"] == principal.username}
        for u in users
    ]
    return _render(request, "users.html", principal, {
        "rows": rows, "roles": ROLES, "user_locales": LOCALES, "zone": zone_name, "error": error,
        "error_for": error_for, "notice": notice, "form": form or {}, "default_zone": DEFAULT_TIME_ZONE,
    }, status_code=status_code)


@router.get("/users", response_model=None)
def users_page(request: Request, principal: PagePrincipal) -> Response:
    """Every user: name, role, enabled or not, last sign-in; the forms to change them (admins)."""
    _admin_only(request, principal, "view_users")
    done = request.query_params.get("done", "")
    return _page(request, principal, notice=done if done in _NOTICES else None)


#: what the page says after a change (``?done=``), keys of the message catalog
_NOTICES = frozenset({"user_added", "role_changed", "user_disabled", "user_enabled", "password_reset"})


def _field(fields: dict[str, str], name: str) -> str:
    return fields.get(name, "")[:MAX_FIELD_CHARS]


def _two_passwords(fields: dict[str, str]) -> str:
    password = _field(fields, "password")
    if password != _field(fields, "password_again"):
        raise PeopleError("the two passwords differ")
    return password


Change = Callable[[Session], dict[str, Any] | None]


def _change(request: Request, principal: Principal, action: str, username: str, *, fields: dict[str, str],
            apply: Change, done: str, detail: dict[str, Any] | None = None) -> Response:
    """Run ``apply(session)`` as one audited change; a PeopleError comes back on the page (422)."""
    with Session(_engine(request)) as session:
        try:
            extra = apply(session) or {}
        except PeopleError as exc:
            session.rollback()
            _audit(session, request, principal, f"{action}_refused", "user", subject_id=username[:128],
                   error=type(exc).__name__, reason=str(exc)[:300], **(detail or {}))
            session.commit()
            safe_form = {k: v[:200] for k, v in fields.items() if k in ("username", "display_name", "role", "locale",
                                                                         "time_zone")}
            return _page(request, principal, error=str(exc)[:300], error_for=username[:64] or "new",
                         form=safe_form, status_code=status.HTTP_422_UNPROCESSABLE_CONTENT)
        _audit(session, request, principal, action, "user", subject_id=username, **(detail or {}), **extra)
        session.commit()
    return RedirectResponse(f"/console/users?done={done}", status.HTTP_303_SEE_OTHER)


@router.post("/users", response_model=None)
async def create_user(request: Request, principal: PagePrincipal) -> Response:
    """Add a user with the password the admin typed twice (like ``users add``)."""
    _admin_only(request, principal, "add_user")
    fields = await _checked_form(request, principal)
    username = _field(fields, "username").strip()
    role = _field(fields, "role")

    def apply(session: Session) -> None:
        add_user(session, username=username, display_name=_field(fields, "display_name").strip() or username,
                 role=role, password=_two_passwords(fields), now_ms=_now_ms(request),
                 locale=_field(fields, "locale") or "en",
                 time_zone=_field(fields, "time_zone").strip() or DEFAULT_TIME_ZONE)

    return _change(request, principal, "add_user", username, fields=fields, apply=apply, done="user_added",
                   detail={"role": role[:40]})


def _target(username: str) -> str:
    return username[:64]


@router.post("/users/{username}/role", response_model=None)
async def change_role(username: str, request: Request, principal: PagePrincipal) -> Response:
    """Give the user another role (their sessions end)."""
    _admin_only(request, principal, "set_user_role")
    fields = await _checked_form(request, principal)
    role = _field(fields, "role")

    def apply(session: Session) -> dict[str, Any]:
        old = set_role(session, _target(username), role, now_ms=_now_ms(request), acting_username=principal.username)
        return {"old_role": old}

    return _change(request, principal, "set_user_role", _target(username), fields=fields, apply=apply,
                   done="role_changed", detail={"role": role[:40]})


@router.post("/users/{username}/disabled", response_model=None)
async def change_disabled(username: str, request: Request, principal: PagePrincipal) -> Response:
    """Disable (``disabled=true``, their sessions end) or enable (``disabled=false``) the user."""
    _admin_only(request, principal, "set_user_disabled")
    fields = await _checked_form(request, principal)
    raw = _field(fields, "disabled")
    if raw not in ("true", "false"):
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, "disabled is true or false")
    disabled = raw == "true"
    action = "disable_user" if disabled else "enable_user"

    def apply(session: Session) -> None:
        set_disabled(session, _target(username), disabled, now_ms=_now_ms(request),
                     acting_username=principal.username)

    return _change(request, principal, action, _target(username), fields=fields, apply=apply,
                   done="user_disabled" if disabled else "user_enabled")


@router.post("/users/{username}/password", response_model=None)
async def reset_password(username: str, request: Request, principal: PagePrincipal) -> Response:
    """Set a new password typed twice by the admin (like ``users passwd``; their sessions end)."""
    _admin_only(request, principal, "reset_password")
    fields = await _checked_form(request, principal)

    def apply(session: Session) -> None:
        set_password(session, _target(username), _two_passwords(fields), now_ms=_now_ms(request))

    return _change(request, principal, "reset_password", _target(username), fields=fields, apply=apply,
                   done="password_reset")
