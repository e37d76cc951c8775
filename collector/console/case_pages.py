"""The console's case pages: the signed-in user's case list, a case with its actions, the action form.

Pages (``/console/cases``, ``/console/cases/{id}``) are readable by ``admin``,
``risk_analyst`` and ``collections``; the forms (record an action, assign to me, close) are
for ``collections`` and ``admin`` and carry the session's CSRF token like every console write.
Unassigned cases that came back to the queue because their assignee was disabled or lost the
role (:mod:`collector.cases.staff`) are marked, with a notice at the top of the list; so are
cases still held by such a user (assigned before the handover rule, or by a direct change).
A contact the rules refuse (:mod:`collector.cases.contact_rules`) is recorded and the page
says why and from when it is allowed, in the borrower's zone. Every page view and change
writes an audit row (``view_cases``, ``view_case`` and the case store's own rows). Mounted
like the other console router (``collector.api.app.OPTIONAL_ROUTER_MODULES``); the page
helpers are those of :mod:`collector.console.web`.
"""

from __future__ import annotations

import secrets
from datetime import date
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, HTTPException, Request, status
from fastapi.responses import RedirectResponse, Response
from sqlalchemy.orm import Session

from ..api.auth import Principal
from ..api.cases import ActionBody, action_from_body
from ..cases.store import (
    ACTION_KINDS,
    LADDER,
    OUTCOMES,
    RESOLUTIONS,
    Actor,
    CaseError,
    CaseNotFoundError,
    assign_case,
    assignees_who_cannot_act,
    case_details,
    case_zone,
    close_case,
    handed_back,
    list_cases,
    record_action,
)
from ..storage.tables import CaseActionRecord
from ..timefmt import iso_local
from .web import PagePrincipal, _allow, _audit, _checked_form, _engine, _now_ms, _render, _wire, _wiring

__all__ = ["router"]

router = APIRouter(prefix="/console", include_in_schema=False, dependencies=[Depends(_wire)])
MAX_CASE_ID = 2**63 - 1


def _case_id(raw: str) -> int:
    if not raw.isdigit() or not 0 < int(raw) <= MAX_CASE_ID:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"case {raw!r:.30} does not exist")
    return int(raw)


def _shown(iso: str | None) -> str:
    """``2026-11-28T17:40:00+08:00`` -> ``2026-11-28 17:40 +08:00`` (the zone is named on the page)."""
    if not iso:
        return ""
    return f"{iso[:10]} {iso[11:16]} {iso[19:]}"


@router.get("/cases", response_model=None)
def cases_page(request: Request, principal: PagePrincipal) -> Response:
    """The signed-in user's open cases, then the unassigned ones (the team's queue), then the rest."""
    _allow(principal, "cases")
    contact = _wiring(request).settings.contact
    with Session(_engine(request)) as session:
        open_cases = list_cases(session, contact, status="open", limit=1000)
        returned = handed_back(session, [c["case_id"] for c in open_cases if c["assignee"] is None])
        stranded = assignees_who_cannot_act(session, {c["assignee"] for c in open_cases if c["assignee"]})
        _audit(session, request, principal, "view_cases", "case", subject_id="*", rows=len(open_cases))
        session.commit()
    me = principal.username
    for case in open_cases:
        back = returned.get(case["case_id"])
        case["returned"] = None if back is None else back | {"at": iso_local(back["time_ms"], case["time_zone"])}
        case["stranded"] = case["assignee"] in stranded  # held by someone who can no longer act on it
    groups = [
        ("my_cases", [c for c in open_cases if me is not None and c["assignee"] == me]),
        ("unassigned_cases", [c for c in open_cases if c["assignee"] is None]),
        ("other_cases", [c for c in open_cases if c["assignee"] not in (None, me)]),
    ]
    notice = [c for c in open_cases if c["returned"] is not None]
    return _render(request, "cases.html", principal, {
        "groups": groups, "shown": _shown, "returned": notice,
        "stranded": [c for c in open_cases if c["stranded"]],
    })


def _refusal_of(session: Session, case_id: int, raw: str | None, zone_name: str) -> dict[str, Any] | None:
    if raw is None or not raw.isdigit() or int(raw) > MAX_CASE_ID:
        return None
    row = session.get(CaseActionRecord, int(raw))
    if row is None or row.case_id != case_id or row.status != "refused" or row.allowed_from_ms is None:
        return None
    return {"kind": row.kind, "reason": row.refused_reason, "allowed_from": iso_local(row.allowed_from_ms, zone_name)}


def _case_page(request: Request, principal: Principal, case_id: int, *, error: str | None = None,
               status_code: int = 200) -> Response:
    contact = _wiring(request).settings.contact
    with Session(_engine(request)) as session:
        try:
            case = case_details(session, case_id, contact)
        except CaseNotFoundError as exc:
            raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from exc
        refusal = _refusal_of(session, case_id, request.query_params.get("refused"), case["time_zone"])
        _audit(session, request, principal, "view_case", "loan", subject_id=case["loan_id"], case_id=case_id)
        session.commit()
    may_act = principal.role in ("admin", "collections") and case["status"] == "open"
    return _render(request, "case.html", principal, {
        "case": case,
        "refusal": refusal,
        "error": error,
        "may_act": may_act,
        "may_take": may_act and principal.username is not None and case["assignee"] != principal.username,
        "kinds": ACTION_KINDS,
        "outcomes": sorted({o for group in OUTCOMES.values() for o in group}),
        "ladder": LADDER,
        "resolutions": [r for r in RESOLUTIONS if r != "cured"],  # cure is the risk engine's to decide
        "today": date.today().isoformat(),
        # one key per rendered form: a form sent twice (double click, resend) records one action
        "client_ref": f"form-{secrets.token_hex(16)}",
        "shown": _shown,
    }, status_code=status_code)


@router.get("/cases/{raw_id}", response_model=None)
def case_page(raw_id: str, request: Request, principal: PagePrincipal) -> Response:
    """A case: level, assignee, SLA, next action, its actions (refusals too) and history; the forms."""
    _allow(principal, "cases")
    return _case_page(request, principal, _case_id(raw_id))


def _who(principal: Principal) -> Actor:
    return Actor(principal.key_id, principal.role)


def _form_action(fields: dict[str, str]) -> ActionBody:
    """The action form as the API's body (empty fields are absent)."""

    def get(name: str) -> str | None:
        value = fields.get(name, "").strip()
        return value or None

    promise_date = get("promise_date")
    return ActionBody(
        kind=get("kind") or "",
        outcome=get("outcome"),
        note=get("note"),
        promise_date=date.fromisoformat(promise_date) if promise_date else None,
        promise_amount=get("promise_amount"),
        next_action=get("next_action"),
        next_action_at=get("next_action_at"),
        client_ref=get("client_ref"),
    )


@router.post("/cases/{raw_id}/actions", response_model=None)
async def post_action(raw_id: str, request: Request, principal: PagePrincipal) -> Response:
    """Record an action from the form; a refused contact comes back to the page with why and from when."""
    _allow(principal, "act_on_case")
    case_id = _case_id(raw_id)
    fields = await _checked_form(request, principal)
    contact = _wiring(request).settings.contact
    with Session(_engine(request)) as session:
        try:
            zone_name = case_zone(session, case_id, contact)
        except CaseNotFoundError as exc:
            raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from exc
        try:
            action = action_from_body(_form_action(fields), zone_name)
            result = record_action(session, case_id, action, now_ms=_now_ms(request), who=_who(principal),
                                   contact=contact)
        except (CaseError, ValueError) as exc:  # ValueError: a field pydantic or the date parser refused
            session.rollback()
            return _case_page(request, principal, case_id, error=str(exc).splitlines()[0][:300],
                              status_code=status.HTTP_422_UNPROCESSABLE_CONTENT)
        session.commit()
        query = f"?{urlencode({'refused': result.action.id})}" if result.refused else ""
    return RedirectResponse(f"/console/cases/{case_id}{query}", status.HTTP_303_SEE_OTHER)


@router.post("/cases/{raw_id}/assign", response_model=None)
async def post_assign(raw_id: str, request: Request, principal: PagePrincipal) -> Response:
    """Assign the case to the signed-in user."""
    _allow(principal, "act_on_case")
    case_id = _case_id(raw_id)
    await _checked_form(request, principal)
    if principal.username is None:
        raise HTTPException(status.HTTP_403_FORBIDDEN, "an API key cannot be a case's assignee")
    with Session(_engine(request)) as session:
        try:
            assign_case(session, case_id, principal.username, _now_ms(request), _who(principal))
        except CaseError as exc:
            raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from exc
        session.commit()
    return RedirectResponse(f"/console/cases/{case_id}", status.HTTP_303_SEE_OTHER)


@router.post("/cases/{raw_id}/close", response_model=None)
async def post_close(raw_id: str, request: Request, principal: PagePrincipal) -> Response:
    """Close the case as settled or recovered."""
    _allow(principal, "act_on_case")
    case_id = _case_id(raw_id)
    fields = await _checked_form(request, principal)
    with Session(_engine(request)) as session:
        try:
            close_case(session, case_id, fields.get("resolution", ""), now_ms=_now_ms(request), who=_who(principal),
                       note=fields.get("note") or None)
        except CaseError as exc:
            session.rollback()
            return _case_page(request, principal, case_id, error=str(exc)[:300],
                              status_code=status.HTTP_422_UNPROCESSABLE_CONTENT)
        session.commit()
    return RedirectResponse(f"/console/cases/{case_id}", status.HTTP_303_SEE_OTHER)
