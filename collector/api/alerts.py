"""``GET /v1/alerts``: the alert feed across the whole book, newest first.

Filters: ``rule``, ``severity`` (``info``, ``warning``, ``high``, ``panic``), a time range
``from`` / ``to`` (ISO-8601 or epoch ms; a time without an offset is UTC), ``loan_id``;
paging with ``limit`` / ``offset``. Roles as the per-loan alerts, locations as the console's
alert feed (docs/compliance.md): evidence has no coordinate keys unless a ``risk_analyst`` or
``admin`` gave a ``reason`` (1..500 characters; empty is 422, any other role's reason 403,
both audited ``location_access_denied``); then each loan whose coordinates were returned gets
a ``view_alert_locations`` audit row (``access_basis``, ``grant_id``, ``access_reason``).
Every read writes a ``list_alerts`` audit row. Mounted by ``serve`` (``OPTIONAL_ROUTER_MODULES``).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, status

from ..jobs.redaction import redact_coordinates
from ..loans.queries import SEVERITIES, AlertFilter, QueryError, alert_row, alert_statement
from ..storage.audit import record_access
from .auth import Principal, require_role
from .dependencies import ClockDep, SessionDep
from .loans import ALERT_LOCATION_REFUSALS, FeedReason, audit_alert_locations, authorize_alert_locations, time_param

__all__ = ["router"]

router = APIRouter(prefix="/v1", tags=["alerts"])
LoanReader = Annotated[Principal, Depends(require_role("admin", "risk_analyst", "collections"))]


@router.get("/alerts", responses=ALERT_LOCATION_REFUSALS)
def list_alerts(
    *,
    session: SessionDep,
    principal: LoanReader,
    clock_ms: ClockDep,
    rule: Annotated[str | None, Query(max_length=64)] = None,
    severity: Annotated[str | None, Query(pattern="^(" + "|".join(SEVERITIES) + ")$")] = None,
    from_: Annotated[str | None, Query(alias="from", max_length=64, examples=["2026-12-01T00:00:00+08:00"])] = None,
    to: Annotated[str | None, Query(max_length=64, examples=["2026-12-02T00:00:00Z"])] = None,
    loan_id: Annotated[str | None, Query(max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0)] = 0,
    reason: FeedReason = None,
) -> list[dict[str, Any]]:
    """Alert records (raised and cleared) across every loan, newest first.

    Evidence coordinates only with a ``reason`` (``risk_analyst``/``admin``), audited per loan.
    """
    try:
        filters = AlertFilter(rule=rule, severity=severity, since_ms=time_param(from_, "from"),
                              until_ms=time_param(to, "to"), loan_id=loan_id)
    except QueryError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from exc
    access = authorize_alert_locations(session, clock_ms(), principal, reason)
    rows = [alert_row(r) for r in session.execute(alert_statement(filters).limit(limit).offset(offset)).mappings()]
    located = 0
    if access is None:
        rows = redact_coordinates(rows)
    else:
        located = audit_alert_locations(session, clock_ms(), principal, rows, access=access)
    record_access(
        session, actor=principal.key_id, role=principal.role, action="list_alerts", subject_type="alert",
        subject_id=loan_id or "*", time_ms=clock_ms(),
        detail={"rule": rule, "severity": severity, "from": filters.since_ms, "to": filters.until_ms,
                "count": len(rows), "located": located, **(access.audit_detail() if access is not None else {})},
    )
    session.commit()
    return rows
