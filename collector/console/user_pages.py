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

A user who holds open cases gets a choice on the disable and role forms: who takes the cases
(an enabled collections or admin user) or the unassigned queue (the default).
:mod:`collector.cases.staff` moves them in the change's transaction, as the CLI does; the
change's audit row says how many and to whom (``open_cases``, ``reassigned_to``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, HTTPException, Request, status
from fastapi.responses import RedirectResponse, Response
from sqlalchemy.orm import Session

from ..api.auth import Principal
from ..cases import staff
from ..cases.store import ASSIGNABLE_ROLES, Actor, CaseError, open_case_counts
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
        held = open_case_counts(session)
        _audit(session, request, principal, "view_users", "user", subject_id="*", rows=len(users))
        session.commit()
    zone_name = principal.time_zone
    takers = [u["username"] for u in users if not u["disabled"] and u["role"] in ASSIGNABLE_ROLES]
    rows: list[dict[str, Any]] = [
        {**u, "last_sign_in": format_time(signed_in.get(u["username"]), zone_name),
         "me": u["username"] == principal.username, "open_cases": held.get(u["username"], 0),
         "takers": [name for name in takers if name != u["username"]]}
        for u in users
    ]
    return _render(request, "users.html", principal, {
        "rows": rows, "roles": ROLES, "user_locales": LOCALES, "zone": zone_name, "error": error,
        "error_for": error_for, "notice": notice, "form": form or {}, "default_zone": DEFAULT_TIME_ZONE,
        "handed_over": _handed_over(request),
    }, status_code=status_code)


def _handed_over(request: Request) -> dict[str, Any] | None:
    """What the last change did with the user's open cases (``?cases=N&to=USER``), for the notice."""
    count, to = request.query_params.get("cases", ""), request.query_params.get("to", "")
    if not count.isdigit() or not 0 < int(count) < 1_000_000:
        return None
    return {"count": int(count), "to": to[:64] or None}


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
        except (PeopleError, CaseError) as exc:  # CaseError: a reassignee who may not take cases
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
    query = {"done": done}
    if extra.get("open_cases"):
        query |= {"cases": str(extra["open_cases"]), "to": extra.get("reassigned_to") or ""}
    return RedirectResponse(f"/console/users?{urlencode(query)}", status.HTTP_303_SEE_OTHER)


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


def _reassignee(fields: dict[str, str]) -> str | None:
    """Who takes the user's open cases (the form's ``reassign_to``; empty: the unassigned queue)."""
    return _field(fields, "reassign_to").strip()[:64] or None


def _who(principal: Principal) -> Actor:
    return Actor(principal.key_id, principal.role)


@router.post("/users/{username}/role", response_model=None)
async def change_role(username: str, request: Request, principal: PagePrincipal) -> Response:
    """Give the user another role (their sessions end)."""
    _admin_only(request, principal, "set_user_role")
    fields = await _checked_form(request, principal)
    role = _field(fields, "role")

    def apply(session: Session) -> dict[str, Any]:
        old, handover = staff.change_role(
            session, _target(username), role, reassign_to=_reassignee(fields), now_ms=_now_ms(request),
            who=_who(principal), acting_username=principal.username)
        return {"old_role": old, **handover.audit_detail()}

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

    def apply(session: Session) -> dict[str, Any] | None:
        if not disabled:
            set_disabled(session, _target(username), False, now_ms=_now_ms(request))
            return None
        handover = staff.disable_user(session, _target(username), reassign_to=_reassignee(fields),
                                      now_ms=_now_ms(request), who=_who(principal), acting_username=principal.username)
        return handover.audit_detail()

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
