"""HTTP API of collections cases: list, read, act, assign, close (docs/compliance.md).

Mounted by ``collector.api.app.create_app`` (module-level :data:`router`). Roles
(docs/people.md): ``collections`` and ``admin`` act on cases, ``risk_analyst`` reads them,
``auditor`` reads only the audit log (``GET /v1/audit``). Every read and change is an audit
row; a contact the rules refuse is recorded (and audited as ``contact_refused``) before the
``409`` saying why and from when it is allowed leaves. Times are ISO-8601 with the
borrower's offset.
"""

from __future__ import annotations

from datetime import date
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Path, Query, status
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from ..cases.store import (
    ACTION_KINDS,
    LADDER,
    RESOLUTIONS,
    ActionIn,
    Actor,
    CaseClosedError,
    CaseError,
    CaseNotFoundError,
    assign_case,
    case_details,
    case_zone,
    close_case,
    list_cases,
    record_action,
)
from ..risk.repayments import RepaymentError, parse_amount
from ..timefmt import TimeFormatError, iso_local, parse_time
from .auth import Principal, audit_principal, require_role
from .dependencies import ClockDep, SessionDep, SettingsDep

__all__ = ["ActionBody", "action_from_body", "router"]

CaseReader = Annotated[Principal, Depends(require_role("admin", "risk_analyst", "collections"))]
CaseWorker = Annotated[Principal, Depends(require_role("admin", "collections"))]

router = APIRouter(prefix="/v1/cases", tags=["cases"])


class ActionBody(BaseModel):
    """Body of ``POST /v1/cases/{case_id}/actions``."""

    kind: str = Field(max_length=24, examples=list(ACTION_KINDS))
    outcome: str | None = Field(default=None, max_length=24, examples=["promise_to_pay"])
    note: str | None = Field(default=None, max_length=1000)
    promise_date: date | None = None
    promise_amount: str | None = Field(default=None, max_length=20, examples=["3500.00"])
    next_action: str | None = Field(default=None, max_length=24, examples=list(LADDER))
    next_action_at: str | None = Field(default=None, max_length=64, examples=["2026-11-30T10:00:00+08:00"])
    client_ref: str | None = Field(default=None, max_length=64, examples=["tablet-7f3a-0001"],
                                   description="idempotency key: a replay returns the first answer")


class AssignBody(BaseModel):
    """Body of ``POST /v1/cases/{case_id}/assign``."""

    assignee: str = Field(max_length=64)


class CloseBody(BaseModel):
    """Body of ``POST /v1/cases/{case_id}/close``."""

    resolution: str = Field(max_length=16, examples=list(RESOLUTIONS))
    note: str | None = Field(default=None, max_length=1000)


def _actor(principal: Principal) -> Actor:
    return Actor(principal.key_id, principal.role)


def _http_error(exc: CaseError) -> HTTPException:
    if isinstance(exc, CaseNotFoundError):
        return HTTPException(status.HTTP_404_NOT_FOUND, str(exc))
    if isinstance(exc, CaseClosedError):
        return HTTPException(status.HTTP_409_CONFLICT, str(exc))
    return HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc))


def action_from_body(body: ActionBody, zone_name: str) -> ActionIn:
    """The store's :class:`ActionIn` of a body (amount in cents; a time without offset is the borrower's).

    Raises:
        CaseError: an amount or a time that does not parse.
    """
    try:
        cents = parse_amount(body.promise_amount) if body.promise_amount is not None else None
        next_ms = parse_time(body.next_action_at, default_zone=zone_name) if body.next_action_at else None
    except (RepaymentError, TimeFormatError) as exc:
        raise CaseError(str(exc)) from exc
    return ActionIn(
        body.kind, body.outcome, body.note, body.promise_date, cents, body.next_action, next_ms, body.client_ref
    )


#: a case id in a path: a positive 64-bit integer (anything else is 422)
CaseId = Annotated[int, Path(ge=1, le=2**63 - 1)]


@router.get("")
def get_cases(
    *,
    session: SessionDep,
    principal: CaseReader,
    settings: SettingsDep,
    clock_ms: ClockDep,
    case_status: Annotated[str, Query(alias="status", pattern="^(open|closed|all)$")] = "open",
    assignee: Annotated[str | None, Query(max_length=64)] = None,
    level: Annotated[str | None, Query(pattern="^(watch|high|critical)$")] = None,
    loan_id: Annotated[str | None, Query(max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 200,
) -> list[dict[str, Any]]:
    """Cases, most urgent SLA first; ``assignee=me`` is the signed-in user's; ``loan_id`` one loan's cases."""
    if assignee == "me":
        assignee = principal.username or "\x00"  # an API key is nobody's assignee
    cases = list_cases(
        session, settings.contact, status=None if case_status == "all" else case_status, assignee=assignee,
        level=level, loan_id=loan_id, limit=limit,
    )
    audit_principal(session, clock_ms(), principal, "list_cases", kind="case", subject="*", count=len(cases))
    session.commit()
    return cases


@router.get("/{case_id}")
def get_case(
    case_id: CaseId,
    *,
    session: SessionDep,
    principal: CaseReader,
    settings: SettingsDep,
    clock_ms: ClockDep,
) -> dict[str, Any]:
    """A case with its actions (refused contacts too) and events."""
    try:
        details = case_details(session, case_id, settings.contact)
    except CaseError as exc:
        raise _http_error(exc) from exc
    audit_principal(session, clock_ms(), principal, "read_case", kind="loan", subject=details["loan_id"],
                    case_id=case_id)
    session.commit()
    return details


@router.post("/{case_id}/actions", status_code=status.HTTP_201_CREATED, response_model=None)
def post_action(
    case_id: CaseId, body: ActionBody, *, session: SessionDep, principal: CaseWorker, settings: SettingsDep,
    clock_ms: ClockDep,
) -> dict[str, Any] | JSONResponse:
    """Record an action; a contact outside the rules is recorded as refused and answered 409."""
    try:
        zone_name = case_zone(session, case_id, settings.contact)
        action = action_from_body(body, zone_name)
        result = record_action(
            session, case_id, action, now_ms=clock_ms(), who=_actor(principal), contact=settings.contact
        )
    except CaseError as exc:
        raise _http_error(exc) from exc
    session.commit()
    row = result.action
    if result.refused:
        message = result.decision.message if result.decision is not None else f"refused: {row.refused_reason}"
        return JSONResponse(
            status_code=status.HTTP_409_CONFLICT,
            content={"detail": {
                "error": "contact_refused",
                "reason": row.refused_reason,
                "message": message,
                "allowed_from": iso_local(row.allowed_from_ms or row.time_ms, zone_name),
                "action_id": row.id,
                "replayed": result.replayed,
            }},
        )
    answer = {"action_id": row.id, "status": row.status, "at": iso_local(row.time_ms, zone_name),
              "replayed": result.replayed}
    return JSONResponse(status_code=status.HTTP_200_OK, content=answer) if result.replayed else answer


@router.post("/{case_id}/assign")
def post_assign(
    case_id: CaseId, body: AssignBody, *, session: SessionDep, principal: CaseWorker, settings: SettingsDep,
    clock_ms: ClockDep,
) -> dict[str, Any]:
    """Assign the case to a user (collections or admin role)."""
    try:
        assign_case(session, case_id, body.assignee, clock_ms(), _actor(principal))
        session.commit()
        return case_details(session, case_id, settings.contact)
    except CaseError as exc:
        raise _http_error(exc) from exc


@router.post("/{case_id}/close")
def post_close(
    case_id: CaseId, body: CloseBody, *, session: SessionDep, principal: CaseWorker, settings: SettingsDep,
    clock_ms: ClockDep,
) -> dict[str, Any]:
    """Close the case as cured, settled or recovered."""
    try:
        close_case(session, case_id, body.resolution, now_ms=clock_ms(), who=_actor(principal), note=body.note)
        session.commit()
        return case_details(session, case_id, settings.contact)
    except CaseError as exc:
        raise _http_error(exc) from exc

