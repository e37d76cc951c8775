"""HTTP API of the loan side: loans, repayments, risk, tracks, alerts, audit, SSE.

Mounted by ``collector.api.app.create_app`` (module-level :data:`router`). Role rules:

=================  =====================================================================
role               may
=================  =====================================================================
``admin``          everything
``risk_analyst``   loans, risk events, alerts with evidence, tracks and positions (with a
                   ``reason``; the book-wide feed and stream give evidence coordinates only
                   with one too), places (read; collector.api.places)
``collections``    loans, repayment facts, level and next step, record repayments;
                   evidence with coordinates removed; tracks and positions only under an
                   approved access grant (collector.loans.access, collector.api.access)
``auditor``        the audit log only
=================  =====================================================================

Every read of personal data writes an audit row (:mod:`collector.storage.audit`), committed
before the answer leaves. Routes take the settings (``[risk]`` thresholds and grace days,
``[webhooks] urls``), the database, the clock and the downlink wiring as FastAPI dependencies
(:mod:`collector.api.dependencies`), which ``collector.api.app.create_app`` provides.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import date
from typing import Annotated, Any

import sqlalchemy as sa
from fastapi import APIRouter, Depends, Header, HTTPException, Query, Request, Response, status
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field
from sqlalchemy.orm import Session

from ..clock import utc_date
from ..jobs.redaction import (
    located_subjects,
    reasons_for_collections,
    redact_coordinates,
    redact_for_collections,
    score_for_collections,
)
from ..loans.access import (
    AccessDeniedError,
    AccessRequestError,
    LocationAccess,
    authorize_book_location_read,
    authorize_location_read,
)
from ..loans.csv_import import loan_from_fields
from ..loans.feed import MAX_FEED_ENTRIES, apply_feed
from ..loans.lifecycle import STATUSES, LifecycleError, change_status
from ..loans.queries import alert_row, alert_statement_after
from ..loans.schedules import KINDS, ScheduleError, revise_schedule, schedule_history
from ..loans.store import (
    RepaymentConflictError,
    TrackerLinkError,
    link_second_tracker,
    loan_details,
    loan_summaries,
    record_repayment,
    refuse_future_payment,
    store_loan,
    unlink_second_tracker,
    vehicle_condition,
)
from ..risk.assessment import LoanNotFoundError, open_alerts, reassess_loan_as_configured
from ..risk.repayments import Installment, Payment, RepaymentError, format_cents, parse_amount
from ..storage.audit import entry_as_dict, query_audit_log
from ..storage.tables import DeviceStatus, FixRecord, LoanDeviceRecord, LoanRecord, RiskEventRecord, RiskStateRecord
from ..timefmt import TimeFormatError, parse_time, zone
from .auth import Principal, audit_principal, require_role
from .dependencies import ClockDep, DownlinkDep, EngineDep, SessionDep, SettingsDep

__all__ = [
    "ALERT_LOCATION_REFUSALS",
    "FeedReason",
    "audit_alert_locations",
    "authorize_alert_locations",
    "authorize_location",
    "redact_coordinates",
    "router",
    "sse_frame",
    "time_param",
]

MAX_TRACK_MS = 31 * 86_400_000
MAX_TRACK_POINTS = 20_000
#: query integers beyond these are refused with 422 (a database integer is 64-bit signed)
MAX_INT64 = 2**63 - 1


def _may_see_location(principal: Principal) -> bool:
    return principal.role in ("admin", "risk_analyst")


_audit = audit_principal


def authorize_location(
    session: Session, now_ms: int, principal: Principal, loan_id: str, *, scope: str, reason: str | None
) -> LocationAccess:
    """Allow a location read (approved grant, emergency, or an approver's reason) or refuse it.

    A refusal is an audit row (``location_access_denied``) committed before the 403/422 leaves;
    an allowed read's audit row carries :meth:`LocationAccess.audit_detail` (the grant id).
    """
    try:
        return authorize_location_read(
            session, loan_id=loan_id, actor=principal.key_id, role=principal.role, scope=scope, reason=reason,
            now_ms=now_ms,
        )
    except (AccessDeniedError, AccessRequestError) as exc:
        session.rollback()
        _audit(session, now_ms, principal, "location_access_denied", kind="loan", subject=loan_id, scope=scope,
               error=str(exc))
        session.commit()
        code = status.HTTP_403_FORBIDDEN if isinstance(exc, AccessDeniedError) else 422
        raise HTTPException(code, str(exc)) from exc


Reason = Annotated[
    str | None,
    Query(max_length=500, description="why you read this location (required for risk_analyst and admin; audited)"),
]

FeedReason = Annotated[
    str | None,
    Query(max_length=500, description="why you need the evidence coordinates (risk_analyst and admin; without a "
          "reason the evidence has no coordinate keys; with one, every loan located is audited)"),
]



class RefusalOut(BaseModel):
    """A refused request: ``detail`` says why (a sentence, or the list of parameter errors)."""

    detail: str | list[dict[str, Any]]


#: The refusals of the book-wide alert reads (``GET /v1/alerts``, the stream), for the OpenAPI.
ALERT_LOCATION_REFUSALS: dict[int | str, dict[str, Any]] = {
    403: {"model": RefusalOut, "description": "a reason from a role that never sees the book's locations "
          "(audited location_access_denied)"},
    422: {"model": RefusalOut, "description": "a malformed parameter, or an empty reason (audited "
          "location_access_denied)"},
}


def authorize_alert_locations(
    session: Session, now_ms: int, principal: Principal, reason: str | None
) -> LocationAccess | None:
    """May alert evidence across the book carry coordinates (``GET /v1/alerts``, the stream)?

    The console feed's rule (:func:`collector.loans.access.authorize_book_location_read`):
    no ``reason``, no coordinates (``None``, nothing refused); a ``reason`` from
    ``risk_analyst``/``admin`` opens them; an empty one is 422, any other role's 403 (a grant
    covers one loan, never the book), each refusal an audit row ``location_access_denied``
    committed before the answer leaves.
    """
    if reason is None:
        return None
    try:
        return authorize_book_location_read(role=principal.role, reason=reason)
    except (AccessDeniedError, AccessRequestError) as exc:
        session.rollback()
        _audit(session, now_ms, principal, "location_access_denied", kind="alert", subject="*", scope="alerts",
               error=str(exc))
        session.commit()
        code = status.HTTP_403_FORBIDDEN if isinstance(exc, AccessDeniedError) else 422
        raise HTTPException(code, str(exc)) from exc


def audit_alert_locations(
    session: Session, now_ms: int, principal: Principal, rows: list[dict[str, Any]], *, key: str = "evidence",
    count: str = "alerts", access: LocationAccess,
) -> int:
    """One ``view_alert_locations`` audit row per loan whose coordinates ``rows`` reveal (as the
    console feed writes them); the caller commits. Returns how many loans."""
    shown = located_subjects(rows, key)
    for (kind, subject), n in shown.items():
        _audit(session, now_ms, principal, "view_alert_locations", kind=kind, subject=subject, **{count: n},
               **access.audit_detail())
    return len(shown)


def time_param(value: str | None, name: str) -> int | None:
    """An ISO-8601 or epoch-ms query value as epoch ms (422 when it is neither)."""
    if value is None or value == "":
        return None
    try:
        return parse_time(value)
    except TimeFormatError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, f"{name}: {exc}") from exc


def _loan_or_404(session: Session, loan_id: str) -> LoanRecord:
    loan = session.get(LoanRecord, loan_id)
    if loan is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"loan {loan_id!r:.80} does not exist")
    return loan


def _score_dict(state: RiskStateRecord | None) -> dict[str, Any] | None:
    """The v2 score of a stored state: score, expected loss, both axes with their reasons and
    contributions, tier (None until the loan is reassessed by a v2 collector)."""
    if state is None or state.assessment is None:
        return None
    stored = state.assessment
    return {
        "model_version": state.model_version,
        "score": state.score,
        "expected_loss": format_cents(state.expected_loss_cents or 0),
        "outstanding": format_cents(int(stored.get("outstanding_cents", 0))),
        "level": stored.get("level"),
        "credit": stored.get("credit"),
        "collateral": stored.get("collateral"),
        "tier": state.tier,
        "monitoring": stored.get("monitoring"),
    }


def _state_dict(state: RiskStateRecord | None, principal: Principal) -> dict[str, Any]:
    if state is None:
        return {"level": "normal", "next_step": "monitor", "reasons": [], "evaluated_ms": None, "changed_ms": None,
                "score": None}
    analyst = _may_see_location(principal)
    return {
        "level": state.level,
        "next_step": state.next_step,
        "reasons": state.reasons if analyst else reasons_for_collections(state.reasons),
        "evaluated_ms": state.evaluated_ms,
        "changed_ms": state.changed_ms,
        # Scores are for admin and risk analysts (docs/people.md); collections see the levels.
        "score": _score_dict(state) if analyst else score_for_collections(_score_dict(state)),
    }


Analyst = Annotated[Principal, Depends(require_role("admin", "risk_analyst"))]
LoanReader = Annotated[Principal, Depends(require_role("admin", "risk_analyst", "collections"))]
Collector = Annotated[Principal, Depends(require_role("admin", "collections"))]
Admin = Annotated[Principal, Depends(require_role("admin"))]
Auditor = Annotated[Principal, Depends(require_role("admin", "auditor"))]
Db = SessionDep

router = APIRouter(prefix="/v1", tags=["loans"])


# ------------------------------------------------------------------ loans


class InstallmentIn(BaseModel):
    """One instalment of ``POST /v1/loans``."""

    due_date: date
    amount: str = Field(max_length=20, examples=["3500.00"])


class PaymentIn(BaseModel):
    """Body of ``POST /v1/loans/{loan_id}/repayments`` (``payment_id`` is the idempotency key)."""

    payment_id: str = Field(max_length=64)
    paid_on: date
    amount: str = Field(max_length=20, examples=["3500.00"])


class LoanIn(BaseModel):
    """Body of ``POST /v1/loans``: the CSV columns as JSON (same validation rules)."""

    loan_id: str = Field(max_length=64)
    device_id: str = Field(max_length=64)
    vin: str = Field(max_length=17)
    borrower_ref: str = Field(max_length=64)
    principal: str = Field(max_length=20)
    schedule: list[InstallmentIn] = Field(min_length=1, max_length=600)
    payments: list[PaymentIn] = Field(default_factory=list, max_length=2000)
    time_zone: str | None = Field(default=None, max_length=64, examples=["Asia/Shanghai"])
    jurisdiction: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.-]{1,32}$", examples=["CN-GD"])
    region: str | None = Field(default=None, max_length=64, examples=["Shanghai"])


@router.get("/loans")
def list_loans(
    *,
    session: Db,
    principal: LoanReader,
    clock_ms: ClockDep,
    level: Annotated[str | None, Query(pattern="^(normal|watch|high|critical)$")] = None,
    order: Annotated[str, Query(pattern="^(severity|expected_loss)$")] = "severity",
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=MAX_INT64)] = 0,
) -> list[dict[str, Any]]:
    """Loans with their risk level, next step and v2 score; most severe first, or with
    ``order=expected_loss`` largest expected loss first (the worklist)."""
    # collections get each axis's level and next step and the tier, not the score or expected loss
    hidden = {} if _may_see_location(principal) else {"score": None, "expected_loss": None}
    summaries = loan_summaries(session, level=level, order=order, limit=limit, offset=offset)
    out = [s.as_dict() | hidden for s in summaries]
    _audit(session, clock_ms(), principal, "list_loans", kind="loan", subject="*", level=level, order=order,
           count=len(out))
    session.commit()
    return out


@router.post("/loans", status_code=status.HTTP_201_CREATED)
def create_loan(
    body: LoanIn, *, session: Db, principal: Admin, settings: SettingsDep, clock_ms: ClockDep
) -> dict[str, Any]:
    """Create one loan (with its schedule and any payments already received)."""
    fields = {
        "loan_id": body.loan_id,
        "device_id": body.device_id,
        "vin": body.vin,
        "borrower_ref": body.borrower_ref,
        "principal": body.principal,
        "schedule": ";".join(f"{i.due_date.isoformat()}:{i.amount}" for i in body.schedule),
        "payments": ";".join(f"{p.payment_id}:{p.paid_on.isoformat()}:{p.amount}" for p in body.payments),
        "region": (body.region or "").strip(),
    }
    if body.time_zone is not None:
        try:
            zone(body.time_zone)
        except TimeFormatError as exc:
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, f"time_zone: {exc}") from exc
    row, errors = loan_from_fields(fields)
    if row is None:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, [e.as_dict() for e in errors])
    if session.get(LoanRecord, row.loan_id) is not None:
        raise HTTPException(status.HTTP_409_CONFLICT, f"loan {row.loan_id} already exists")
    for column, value in (("device_id", row.device_id), ("vin", row.vin)):
        other = session.scalar(sa.select(LoanRecord.loan_id).where(getattr(LoanRecord, column) == value))
        if other is not None:
            raise HTTPException(status.HTTP_409_CONFLICT, f"{column} {value} is already bound to loan {other}")
    now = clock_ms()
    loan = store_loan(session, row, now_ms=now)
    loan.time_zone, loan.jurisdiction = body.time_zone, body.jurisdiction  # None: the [contact] defaults
    for payment in row.payments:
        record_repayment(session, row.loan_id, payment, now_ms=now)
    assessment, _ = reassess_loan_as_configured(
        session, row.loan_id, now, settings.risk, settings.webhooks.urls, cases=settings.cases
    )
    _audit(session, clock_ms(), principal, "create_loan", kind="loan", subject=row.loan_id)
    session.commit()
    return {"loan_id": row.loan_id, "level": assessment.level.label, "next_step": assessment.next_step.label}


@router.get("/loans/{loan_id}")
def get_loan(
    loan_id: str, *, session: Db, principal: LoanReader, settings: SettingsDep, clock_ms: ClockDep
) -> dict[str, Any]:
    """A loan with its repayment facts (per instalment), risk level, next step and reasons."""
    loan = _loan_or_404(session, loan_id)
    out = loan_details(session, loan, utc_date(clock_ms()), grace_days=settings.risk.grace_days)
    out["risk"] = _state_dict(session.get(RiskStateRecord, loan_id), principal)
    out["lifecycle"] = {"status": loan.status, "closed_ms": loan.closed_ms}
    _audit(session, clock_ms(), principal, "read_loan", kind="loan", subject=loan_id)
    session.commit()
    return out


@router.post("/loans/{loan_id}/repayments")
def post_repayment(
    loan_id: str,
    body: PaymentIn,
    *,
    response: Response,
    session: Db,
    principal: Collector,
    settings: SettingsDep,
    clock_ms: ClockDep,
) -> dict[str, Any]:
    """Record a payment idempotently: 201 the first time, 200 on a replay, 409 on a conflict."""
    _loan_or_404(session, loan_id)
    try:
        payment = Payment(body.payment_id, body.paid_on, parse_amount(body.amount))
    except RepaymentError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from exc
    now = clock_ms()
    try:
        refuse_future_payment(payment, now)
        outcome = record_repayment(session, loan_id, payment, now_ms=now)
    except RepaymentConflictError as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from exc
    except RepaymentError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from exc
    assessment, _ = reassess_loan_as_configured(
        session, loan_id, now, settings.risk, settings.webhooks.urls, cases=settings.cases
    )
    _audit(session, clock_ms(), principal, "record_repayment", kind="loan", subject=loan_id,
           payment_id=payment.payment_id, created=outcome.created)
    session.commit()
    response.status_code = status.HTTP_201_CREATED if outcome.created else status.HTTP_200_OK
    return {
        "loan_id": loan_id,
        "payment_id": payment.payment_id,
        "created": outcome.created,
        "level": assessment.level.label,
        "next_step": assessment.next_step.label,
    }


class StatusIn(BaseModel):
    """Body of ``POST /v1/loans/{loan_id}/status``."""

    status: str = Field(pattern="^(" + "|".join(STATUSES) + ")$", examples=["settled"])
    closed_at: str | None = Field(default=None, max_length=64, description="ISO-8601 or epoch ms; default now")


@router.post("/loans/{loan_id}/status")
def set_status(
    loan_id: str, body: StatusIn, *, session: Db, principal: Admin, clock_ms: ClockDep, downlink: DownlinkDep
) -> dict[str, Any]:
    """Close a loan (settled, charged_off, repossessed, transferred; collector.loans.lifecycle).

    Settled and transferred loans stop tracking: the device's signed configuration is signed
    here and published after the commit.
    """
    now = clock_ms()
    effective = time_param(body.closed_at, "closed_at")
    try:
        change = change_status(session, loan_id, body.status, now_ms=now, effective_ms=effective,
                               signing_key=downlink.signing_key)
    except LoanNotFoundError as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from exc
    except LifecycleError as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from exc
    _audit(session, now, principal, "change_loan_status", kind="loan", subject=loan_id, old=change.old_status,
           new=change.new_status, closed_ms=change.closed_ms, configs=len(change.configs))
    session.commit()
    if change.configs and downlink.publish is not None:
        downlink.publish(change.configs)
    return change.as_dict()


class FeedIn(BaseModel):
    """Body of ``POST /v1/repayments/feed``: entries as in collector.loans.feed (checked one by one)."""

    entries: list[dict[str, Any]] = Field(min_length=1, max_length=MAX_FEED_ENTRIES)


@router.post("/repayments/feed")
def repayment_feed(body: FeedIn, *, session: Db, principal: Collector, settings: SettingsDep,
                   clock_ms: ClockDep) -> dict[str, Any]:
    """Payments and reversals in bulk, idempotent on the lender's ``txn_id`` (re-posting changes nothing).

    Each entry gets ``created``, ``duplicate``, ``conflict`` or ``error`` (with a reason); the
    loans an entry changed are reassessed (a reversal flips days past due back).
    """
    now = clock_ms()
    report = apply_feed(session, body.entries, now_ms=now)
    levels = {}
    for loan_id in report.touched_loans:
        assessment, _ = reassess_loan_as_configured(session, loan_id, now, settings.risk, settings.webhooks.urls)
        levels[loan_id] = {"level": assessment.level.label, "next_step": assessment.next_step.label}
    _audit(session, now, principal, "repayment_feed", kind="repayments", subject="*", counts=report.counts(),
           loans=list(report.touched_loans)[:1000])
    session.commit()
    return {"counts": report.counts(), "entries": [o.as_dict() for o in report.outcomes], "loans": levels}


class ScheduleIn(BaseModel):
    """Body of ``POST /v1/loans/{loan_id}/schedule``: the whole new schedule."""

    kind: str = Field(pattern="^(" + "|".join(KINDS) + ")$")
    reason: str = Field(min_length=1, max_length=500)
    schedule: list[InstallmentIn] = Field(min_length=1, max_length=600)


@router.post("/loans/{loan_id}/schedule")
def reschedule(loan_id: str, body: ScheduleIn, *, response: Response, session: Db, principal: Admin,
               settings: SettingsDep, clock_ms: ClockDep) -> dict[str, Any]:
    """Restructure or defer: the schedule becomes a new version (201; 200 if it is already current)."""
    _loan_or_404(session, loan_id)
    now = clock_ms()
    try:
        schedule = [Installment(i.due_date, parse_amount(i.amount)) for i in body.schedule]
        change = revise_schedule(session, loan_id, schedule, kind=body.kind, reason=body.reason,
                                 actor=principal.key_id, now_ms=now)
    except (RepaymentError, ScheduleError) as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from exc
    assessment, _ = reassess_loan_as_configured(session, loan_id, now, settings.risk, settings.webhooks.urls)
    _audit(session, now, principal, "revise_schedule", kind="loan", subject=loan_id, version=change.version,
           created=change.created, schedule_kind=body.kind)
    session.commit()
    response.status_code = status.HTTP_201_CREATED if change.created else status.HTTP_200_OK
    return {"loan_id": loan_id, "version": change.version, "created": change.created,
            "level": assessment.level.label, "next_step": assessment.next_step.label}


@router.get("/loans/{loan_id}/schedule-versions")
def schedule_versions(loan_id: str, *, session: Db, principal: LoanReader, clock_ms: ClockDep) -> list[dict[str, Any]]:
    """Every version of the loan's schedule, oldest first (empty until the schedule first changes)."""
    _loan_or_404(session, loan_id)
    out = schedule_history(session, loan_id)
    _audit(session, clock_ms(), principal, "read_schedule_versions", kind="loan", subject=loan_id, count=len(out))
    session.commit()
    return out


@router.post("/loans/{loan_id}/assess")
def assess_loan(
    loan_id: str, *, session: Db, principal: Analyst, settings: SettingsDep, clock_ms: ClockDep
) -> dict[str, Any]:
    """Re-evaluate a loan now (the periodic job does this for every loan)."""
    _loan_or_404(session, loan_id)
    assessment, change = reassess_loan_as_configured(
        session, loan_id, clock_ms(), settings.risk, settings.webhooks.urls, cases=settings.cases
    )
    _audit(session, clock_ms(), principal, "assess_loan", kind="loan", subject=loan_id)
    session.commit()
    score = _score_dict(session.get(RiskStateRecord, loan_id))
    return assessment.as_dict() | {"changed": change is not None, "score": score}


@router.get("/loans/{loan_id}/risk-events")
def risk_events(
    loan_id: str, *, session: Db, principal: LoanReader, clock_ms: ClockDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[dict[str, Any]]:
    """Level changes of a loan, newest first."""
    _loan_or_404(session, loan_id)
    rows = session.scalars(
        sa.select(RiskEventRecord).where(RiskEventRecord.loan_id == loan_id)
        .order_by(RiskEventRecord.time_ms.desc(), RiskEventRecord.id.desc()).limit(limit)
    )
    out = [_event_dict(r, principal) for r in rows]
    _audit(session, clock_ms(), principal, "read_risk_events", kind="loan", subject=loan_id, count=len(out))
    session.commit()
    return out


def _event_dict(row: RiskEventRecord, principal: Principal) -> dict[str, Any]:
    return {
        "id": row.id,
        "event_id": row.event_id,
        "loan_id": row.loan_id,
        "time_ms": row.time_ms,
        "old_level": row.old_level,
        "new_level": row.new_level,
        "next_step": row.next_step,
        "reasons": row.reasons if _may_see_location(principal) else reasons_for_collections(row.reasons),
    }


@router.get("/loans/{loan_id}/track")
def track(
    loan_id: str,
    *,
    session: Db,
    principal: LoanReader,
    clock_ms: ClockDep,
    reason: Reason = None,
    from_ms: Annotated[str | None, Query(max_length=64, description="epoch ms or ISO-8601")] = None,
    to_ms: Annotated[str | None, Query(max_length=64, description="epoch ms or ISO-8601")] = None,
    from_: Annotated[str | None, Query(alias="from", max_length=64, examples=["2026-12-01T00:00:00+08:00"])] = None,
    to: Annotated[str | None, Query(max_length=64, examples=["2026-12-02T00:00:00Z"])] = None,
) -> dict[str, Any]:
    """Fixes of the loan's vehicle in ``[from, to]`` (at most 31 days, 20,000 points).

    ``from``/``to`` (or ``from_ms``/``to_ms``) take ISO-8601 (UTC when no offset is written)
    or epoch ms; ``to`` defaults to now and ``from`` to 24 hours before ``to``. Collections need
    an approved ``track`` access grant for the loan; ``risk_analyst`` and ``admin`` a ``reason``.
    """
    loan = _loan_or_404(session, loan_id)
    access = authorize_location(session, clock_ms(), principal, loan_id, scope="track", reason=reason)
    end = time_param(to if to is not None else to_ms, "to")
    end_ms = end if end is not None else clock_ms()
    start = time_param(from_ if from_ is not None else from_ms, "from")
    start_ms = start if start is not None else end_ms - 86_400_000
    if not 0 <= end_ms - start_ms <= MAX_TRACK_MS:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, "to - from must be within 0..31 days")
    rows = session.execute(
        sa.select(FixRecord.time_ms, FixRecord.lat, FixRecord.lon, FixRecord.speed_mps)
        .where(FixRecord.device_id == loan.device_id, FixRecord.time_ms >= start_ms, FixRecord.time_ms <= end_ms)
        .order_by(FixRecord.time_ms)
        .limit(MAX_TRACK_POINTS + 1)
    ).all()
    _audit(
        session, clock_ms(), principal, "read_track", kind="loan", subject=loan_id,
        from_ms=start_ms, to_ms=end_ms, points=len(rows), **access.audit_detail(),
    )
    session.commit()
    return {
        "loan_id": loan_id,
        "device_id": loan.device_id,
        "truncated": len(rows) > MAX_TRACK_POINTS,
        "points": [
            {"time_ms": t, "lat": lat, "lon": lon, "speed_mps": speed} for t, lat, lon, speed in rows[:MAX_TRACK_POINTS]
        ],
    }


@router.get("/loans/{loan_id}/position")
def position(
    loan_id: str, *, session: Db, principal: LoanReader, clock_ms: ClockDep, reason: Reason = None
) -> dict[str, Any]:
    """The last known position of the loan's vehicle (a ``position`` grant, or a reason)."""
    loan = _loan_or_404(session, loan_id)
    access = authorize_location(session, clock_ms(), principal, loan_id, scope="position", reason=reason)
    row = session.get(DeviceStatus, loan.device_id)
    _audit(session, clock_ms(), principal, "read_position", kind="loan", subject=loan_id, **access.audit_detail())
    session.commit()
    return {
        "loan_id": loan_id,
        "device_id": loan.device_id,
        "time_ms": row.last_fix_ms if row else None,
        "lat": row.last_lat if row else None,
        "lon": row.last_lon if row else None,
        "speed_mps": row.last_speed_mps if row else None,
    }


@router.get("/loans/{loan_id}/alerts")
def alerts(loan_id: str, session: Db, principal: LoanReader, clock_ms: ClockDep) -> list[dict[str, Any]]:
    """Open alert episodes of the loan's trackers (evidence without coordinates for collections)."""
    loan = _loan_or_404(session, loan_id)
    devices = [loan.device_id, *session.scalars(
        sa.select(LoanDeviceRecord.device_id).where(LoanDeviceRecord.loan_id == loan_id)
    )]
    out = [a.as_dict() for device in devices for a in open_alerts(session, device, clock_ms())]
    if not _may_see_location(principal):
        out = redact_for_collections(out)
    _audit(session, clock_ms(), principal, "read_alerts", kind="loan", subject=loan_id, count=len(out))
    session.commit()
    return out


class TrackerIn(BaseModel):
    """Body of ``PUT /v1/loans/{id}/second-tracker``."""

    device_id: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")


@router.put("/loans/{loan_id}/second-tracker")
def put_second_tracker(
    loan_id: str, *, body: TrackerIn, session: Db, principal: Admin, clock_ms: ClockDep, settings: SettingsDep
) -> dict[str, Any]:
    """Link a second tracker (e.g. a hidden backup) to the loan's car, then reassess the loan."""
    try:
        changed = link_second_tracker(session, loan_id, body.device_id, now_ms=clock_ms())
    except LoanNotFoundError as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from exc
    except TrackerLinkError as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from exc
    _audit(session, clock_ms(), principal, "link_second_tracker", kind="loan", subject=loan_id,
           device_id=body.device_id, changed=changed)
    reassess_loan_as_configured(session, loan_id, clock_ms(), settings.risk, settings.webhooks.urls)
    session.commit()
    return {"loan_id": loan_id, "second_tracker": body.device_id, "changed": changed}


@router.delete("/loans/{loan_id}/second-tracker")
def delete_second_tracker(
    loan_id: str, session: Db, principal: Admin, clock_ms: ClockDep, settings: SettingsDep
) -> dict[str, Any]:
    """Unlink the loan's second tracker, then reassess the loan."""
    _loan_or_404(session, loan_id)
    removed = unlink_second_tracker(session, loan_id)
    if removed is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"loan {loan_id!r:.80} has no second tracker")
    _audit(session, clock_ms(), principal, "unlink_second_tracker", kind="loan", subject=loan_id, device_id=removed)
    reassess_loan_as_configured(session, loan_id, clock_ms(), settings.risk, settings.webhooks.urls)
    session.commit()
    return {"loan_id": loan_id, "second_tracker": None, "removed": removed}


@router.get("/loans/{loan_id}/condition")
def condition(loan_id: str, session: Db, principal: LoanReader, clock_ms: ClockDep) -> dict[str, Any]:
    """Vehicle condition over the last 30 days (daily distance, driving time, harsh events, odometer)."""
    loan = _loan_or_404(session, loan_id)
    out = vehicle_condition(session, loan.device_id, utc_date(clock_ms()))
    _audit(session, clock_ms(), principal, "read_condition", kind="loan", subject=loan_id)
    session.commit()
    return out


# ------------------------------------------------------------------ audit log


@router.get("/audit")
def audit_log(
    *,
    session: Db,
    principal: Auditor,
    since_ms: Annotated[str | None, Query(max_length=64, description="epoch ms or ISO-8601")] = None,
    until_ms: Annotated[str | None, Query(max_length=64, description="epoch ms or ISO-8601")] = None,
    actor: Annotated[str | None, Query(max_length=128)] = None,
    subject_id: Annotated[str | None, Query(max_length=128)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[dict[str, Any]]:
    """The audit log, newest first (times as ISO-8601 or epoch ms)."""
    rows = query_audit_log(
        session, since_ms=time_param(since_ms, "since_ms"), until_ms=time_param(until_ms, "until_ms"), actor=actor,
        subject_id=subject_id, limit=limit,
    )
    return [entry_as_dict(r) for r in rows]


# ------------------------------------------------------------------ server-sent events


#: How often an idle stream looks for new events (a change reaches the page within about this).
STREAM_POLL_S = 0.4


def sse_frame(event_id: int | str, event: str, data: Any) -> bytes:
    """One text/event-stream frame (``id``, ``event``, one ``data`` line of compact JSON)."""
    text = json.dumps(data, separators=(",", ":"), sort_keys=True)
    return f"id: {event_id}\nevent: {event}\ndata: {text}\n\n".encode()


@router.get("/risk/stream", responses=ALERT_LOCATION_REFUSALS)
async def risk_stream(
    request: Request,
    *,
    principal: LoanReader,
    engine: EngineDep,
    clock_ms: ClockDep,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID", max_length=41)] = None,
    after_id: Annotated[int | None, Query(ge=0, le=MAX_INT64)] = None,
    follow: bool = True,
    alerts: bool = False,
    alert_after_id: Annotated[int | None, Query(ge=0, le=MAX_INT64)] = None,
    reason: FeedReason = None,
) -> StreamingResponse:
    """Risk level changes (``event: risk``) as server-sent events (resume with ``Last-Event-ID``).

    ``alerts=true`` also sends every new alert record (``event: alert``, the ``GET /v1/alerts``
    row); event ids are then ``{risk id}:{alert id}`` and ``alert_after_id`` is where the
    alerts start. ``follow=false`` sends the backlog after ``after_id`` and ends (handy for
    scripts). Evidence (of alerts, and of the alerts behind a risk event's reasons) has no
    coordinates unless a ``risk_analyst``/``admin`` gave a ``reason`` (as ``GET /v1/alerts``);
    then every batch sent writes a ``view_alert_locations`` audit row per loan it locates.
    Collections also lose place names and score figures from risk events.
    """
    start = after_id if after_id is not None else 0
    alert_start = alert_after_id if alert_after_id is not None else 0
    if last_event_id is not None:
        risk_part, _, alert_part = last_event_id.partition(":")
        if risk_part.isdigit():
            start = int(risk_part)
        if alert_part.isdigit():
            alert_start = int(alert_part)
        if max(start, alert_start) > MAX_INT64:
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, "Last-Event-ID is beyond any event id")

    def shown(rows: list[dict[str, Any]], key: str, count: str, access: LocationAccess | None) -> list[dict[str, Any]]:
        """``rows`` as sent: coordinates only under ``access``, audited per loan (committed before sending)."""
        if access is None:
            return list(redact_coordinates(rows))
        with Session(engine) as session:
            if audit_alert_locations(session, clock_ms(), principal, rows, key=key, count=count, access=access):
                session.commit()
        return rows

    def subscribe() -> LocationAccess | None:
        with Session(engine) as session:
            access = authorize_alert_locations(session, clock_ms(), principal, reason)
            _audit(session, clock_ms(), principal, "subscribe_risk_stream", kind="loan", subject="*", after_id=start,
                   alerts=alerts, **(access.audit_detail() if access is not None else {}))
            session.commit()
        return access

    access = await run_in_threadpool(subscribe)

    def fetch(after: int) -> list[dict[str, Any]]:
        with Session(engine) as session:
            rows = [
                _event_dict(r, principal) for r in session.scalars(
                    sa.select(RiskEventRecord).where(RiskEventRecord.id > after).order_by(RiskEventRecord.id).limit(500)
                )
            ]
        return shown(rows, "reasons", "risk_events", access)

    def fetch_alerts(after: int) -> list[dict[str, Any]]:
        with Session(engine) as session:
            rows = [alert_row(r) for r in session.execute(alert_statement_after(after, 500)).mappings()]
        return shown(rows, "evidence", "alerts", access)

    async def frames() -> AsyncIterator[bytes]:
        after, alert_after = start, alert_start
        yield b"retry: 2000\n\n"
        while True:
            rows = await run_in_threadpool(fetch, after)
            for row in rows:
                after = row["id"]
                frame_id: int | str = f"{after}:{alert_after}" if alerts else after
                yield sse_frame(frame_id, "risk", row)
            alert_rows = await run_in_threadpool(fetch_alerts, alert_after) if alerts else []
            for alert in alert_rows:
                alert_after = alert["id"]
                yield sse_frame(f"{after}:{alert_after}", "alert", alert)
            if not follow and not rows and not alert_rows:
                return
            if not rows and not alert_rows:
                if await request.is_disconnected():
                    return
                await asyncio.sleep(STREAM_POLL_S)

    return StreamingResponse(frames(), media_type="text/event-stream", headers={"Cache-Control": "no-store"})
