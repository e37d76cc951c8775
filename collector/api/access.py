"""HTTP API of location access requests (collector.loans.access; docs/compliance.md).

=========================================  ==================  ====================================
route                                      who                 what
=========================================  ==================  ====================================
``POST /v1/loans/{id}/access-requests``    collections         file a request (reason, scope, minutes)
``POST /v1/loans/{id}/emergency-access``   collections         granted at once on a theft signature,
                                                               flagged for review
``GET /v1/access-requests``                admin, risk_analyst, the requests (filter by loan, status)
                                           auditor
``POST /v1/access-requests/{id}/approve``  admin, risk_analyst  not the requester (four eyes)
``POST /v1/access-requests/{id}/deny``     admin, risk_analyst
``POST /v1/access-requests/{id}/review``   admin, risk_analyst  review an emergency access
``GET /v1/compliance/report``              admin, auditor      the compliance report (from, to)
=========================================  ==================  ====================================

Every request, decision, refusal and review is an audit row committed with it.
"""

from __future__ import annotations

from typing import Annotated, Any, NoReturn

from fastapi import APIRouter, Depends, HTTPException, Query, status
from pydantic import BaseModel, Field
from sqlalchemy.orm import Session

from ..loans.access import (
    MAX_DURATION_MS,
    MIN_DURATION_MS,
    SCOPES,
    AccessDecisionError,
    AccessDeniedError,
    AccessError,
    AccessRequestError,
    SelfApprovalError,
    decide_access,
    grant_as_dict,
    list_access_requests,
    request_access,
    request_emergency_access,
    review_emergency,
)
from ..loans.compliance import compliance_report
from ..risk.assessment import LoanNotFoundError
from ..storage.tables import AccessGrant
from ..timefmt import TimeFormatError, parse_time
from .auth import Principal, audit_principal, require_role
from .dependencies import ClockDep, SessionDep

__all__ = ["router"]

router = APIRouter(prefix="/v1", tags=["access"])

Requester = Annotated[Principal, Depends(require_role("collections"))]
Approver = Annotated[Principal, Depends(require_role("admin", "risk_analyst"))]
Reader = Annotated[Principal, Depends(require_role("admin", "risk_analyst", "auditor"))]
ComplianceReader = Annotated[Principal, Depends(require_role("admin", "auditor"))]


class AccessRequestIn(BaseModel):
    """Body of ``POST /v1/loans/{loan_id}/access-requests``."""

    reason: str = Field(min_length=1, max_length=500, examples=["recovery visit booked for 2026-12-03"])
    scope: list[str] = Field(min_length=1, max_length=len(SCOPES), examples=[["track", "position"]])
    duration_minutes: int = Field(ge=MIN_DURATION_MS // 60_000, le=MAX_DURATION_MS // 60_000)


class EmergencyIn(BaseModel):
    """Body of ``POST /v1/loans/{loan_id}/emergency-access``."""

    reason: str = Field(min_length=1, max_length=500)


class DecisionIn(BaseModel):
    """Body of approve / deny (a note for the record)."""

    note: str | None = Field(default=None, max_length=500)


def _refuse(
    session: Session, now_ms: int, principal: Principal, action: str, *, subject: str, exc: Exception
) -> NoReturn:
    """Audit a refused access operation, commit, and raise the matching HTTP error."""
    session.rollback()
    audit_principal(session, now_ms, principal, action, kind="access_request", subject=subject, error=str(exc))
    session.commit()
    if isinstance(exc, LoanNotFoundError):
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from exc
    if isinstance(exc, (SelfApprovalError, AccessDeniedError)):
        raise HTTPException(status.HTTP_403_FORBIDDEN, str(exc)) from exc
    if isinstance(exc, AccessRequestError):
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from exc
    raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from exc


def _done(session: Session, now_ms: int, principal: Principal, action: str, grant: AccessGrant) -> dict[str, Any]:
    audit_principal(session, now_ms, principal, action, kind="loan", subject=grant.loan_id, grant_id=grant.id,
                    status=grant.status, emergency=grant.emergency)
    session.commit()
    return grant_as_dict(grant)


@router.post("/loans/{loan_id}/access-requests", status_code=status.HTTP_201_CREATED)
def file_access_request(
    loan_id: str, body: AccessRequestIn, *, session: SessionDep, principal: Requester, clock_ms: ClockDep
) -> dict[str, Any]:
    """File a location access request for one loan (pending until another person approves it)."""
    now = clock_ms()
    try:
        grant = request_access(
            session, loan_id=loan_id, requester=principal.key_id, requester_role=principal.role, reason=body.reason,
            scope=body.scope, duration_ms=body.duration_minutes * 60_000, now_ms=now,
        )
    except (AccessError, LoanNotFoundError) as exc:
        _refuse(session, now, principal, "access_request_refused", subject=loan_id, exc=exc)
    return _done(session, now, principal, "request_location_access", grant)


@router.post("/loans/{loan_id}/emergency-access", status_code=status.HTTP_201_CREATED)
def take_emergency_access(
    loan_id: str, body: EmergencyIn, *, session: SessionDep, principal: Requester, clock_ms: ClockDep
) -> dict[str, Any]:
    """Emergency access while the vehicle shows a theft signature: granted now, reviewed later."""
    now = clock_ms()
    try:
        grant = request_emergency_access(
            session, loan_id=loan_id, requester=principal.key_id, requester_role=principal.role, reason=body.reason,
            now_ms=now,
        )
    except (AccessError, LoanNotFoundError) as exc:
        _refuse(session, now, principal, "emergency_access_refused", subject=loan_id, exc=exc)
    return _done(session, now, principal, "emergency_location_access", grant)


@router.get("/access-requests")
def access_requests(
    *,
    session: SessionDep,
    principal: Reader,
    clock_ms: ClockDep,
    loan_id: Annotated[str | None, Query(max_length=64)] = None,
    state: Annotated[str | None, Query(alias="status", pattern="^(pending|approved|denied|review_needed)$")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[dict[str, Any]]:
    """Access requests, newest first (``status=review_needed``: emergencies awaiting review)."""
    out = [grant_as_dict(g) for g in list_access_requests(session, loan_id=loan_id, status=state, limit=limit)]
    audit_principal(session, clock_ms(), principal, "list_access_requests", kind="access_request",
                    subject=loan_id or "*", count=len(out))
    session.commit()
    return out


def _decide(
    request_id: int, session: Session, principal: Principal, now: int, *, approve: bool, note: str | None
) -> dict[str, Any]:
    try:
        grant = decide_access(session, request_id, actor=principal.key_id, role=principal.role, approve=approve,
                              note=note, now_ms=now)
    except AccessError as exc:
        _refuse(session, now, principal, "access_decision_refused", subject=str(request_id), exc=exc)
    return _done(session, now, principal, "approve_location_access" if approve else "deny_location_access", grant)


@router.post("/access-requests/{request_id}/approve")
def approve(
    request_id: int, body: DecisionIn, *, session: SessionDep, principal: Approver, clock_ms: ClockDep
) -> dict[str, Any]:
    """Approve a pending request; the grant runs from now for the requested duration."""
    return _decide(request_id, session, principal, clock_ms(), approve=True, note=body.note)


@router.post("/access-requests/{request_id}/deny")
def deny(
    request_id: int, body: DecisionIn, *, session: SessionDep, principal: Approver, clock_ms: ClockDep
) -> dict[str, Any]:
    """Deny a pending request."""
    return _decide(request_id, session, principal, clock_ms(), approve=False, note=body.note)


@router.post("/access-requests/{request_id}/review")
def review(request_id: int, *, session: SessionDep, principal: Approver, clock_ms: ClockDep) -> dict[str, Any]:
    """Record that an emergency access was reviewed."""
    now = clock_ms()
    try:
        grant = review_emergency(session, request_id, actor=principal.key_id, role=principal.role, now_ms=now)
    except (AccessDecisionError, SelfApprovalError) as exc:
        _refuse(session, now, principal, "access_review_refused", subject=str(request_id), exc=exc)
    return _done(session, now, principal, "review_emergency_access", grant)


@router.get("/compliance/report")
def compliance(
    *,
    session: SessionDep,
    principal: ComplianceReader,
    clock_ms: ClockDep,
    from_: Annotated[str, Query(alias="from", max_length=64, examples=["2026-12-01T00:00:00+08:00"])],
    to: Annotated[str, Query(max_length=64)],
) -> dict[str, Any]:
    """Access requests, approvals, location reads, refusals, refused contacts and purges of a period."""
    try:
        start, end = parse_time(from_), parse_time(to)
    except TimeFormatError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from exc
    if end < start:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, "'to' is before 'from'")
    report = compliance_report(session, start, end)
    audit_principal(session, clock_ms(), principal, "compliance_report", kind="compliance",
                    subject=f"{start}-{end}", **report["summary"])
    session.commit()
    return report
