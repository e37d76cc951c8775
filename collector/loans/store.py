"""Operations on the loan book: store a loan, record a payment, list loans with their risk.

The tables are in :mod:`collector.storage.tables`; importing a CSV loan book is
:mod:`collector.loans.csv_import`; assessing a stored loan is :mod:`collector.risk.assessment`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from protocol import check_device_id
from protocol.errors import InvalidRecord
from protocol.rule_names import RuleName

from ..clock import utc_date
from ..risk.assessment import LoanNotFoundError, load_payments, loan_facts
from ..risk.engine import RiskLevel
from ..risk.repayments import Installment, LoanError, Payment, RepaymentError, format_cents
from ..storage.tables import (
    FINAL_LOAN_STATUSES,
    AlertRecord,
    DailyStatsRecord,
    InstallmentRecord,
    LoanDeviceRecord,
    LoanRecord,
    RepaymentRecord,
    RiskStateRecord,
)

__all__ = [
    "LoanNotFoundError",
    "LoanRow",
    "LoanSummary",
    "RepaymentConflictError",
    "RepaymentOutcome",
    "TrackerLinkError",
    "battery_health",
    "existing_loan_conflicts",
    "link_second_tracker",
    "loan_details",
    "loan_summaries",
    "loans_with_risk",
    "record_repayment",
    "refuse_future_payment",
    "store_loan",
    "unlink_second_tracker",
    "vehicle_condition",
]


class RepaymentConflictError(LoanError):
    """A payment id was recorded before with a different date or amount."""


@dataclass(frozen=True, slots=True)
class LoanRow:
    """One valid loan, as parsed from a CSV row or an API body (``line`` 0 for the API)."""

    line: int
    loan_id: str
    device_id: str
    vin: str
    borrower_ref: str
    principal_cents: int
    schedule: tuple[Installment, ...]
    payments: tuple[Payment, ...] = ()
    region: str | None = None


def store_loan(session: Session, row: LoanRow, *, now_ms: int) -> LoanRecord:
    """Insert a loan and its schedule (the caller checked :func:`existing_loan_conflicts`)."""
    loan = LoanRecord(
        loan_id=row.loan_id,
        device_id=row.device_id,
        vin=row.vin,
        borrower_ref=row.borrower_ref,
        principal_cents=row.principal_cents,
        created_ms=now_ms,
        region=row.region,
    )
    session.add(loan)
    session.flush()  # no ORM relationship: the parent row must exist before its children
    session.add_all(
        InstallmentRecord(loan_id=row.loan_id, seq=i, due_date=inst.due_date, amount_cents=inst.amount_cents)
        for i, inst in enumerate(row.schedule, 1)
    )
    session.flush()
    return loan



def existing_loan_conflicts(session: Session, row: LoanRow) -> list[tuple[str | None, str, str]] | None:
    """Compare an imported row with what is stored.

    Returns:
        ``None`` if the loan is stored with these terms (device, VIN, borrower, principal; the
        schedule may differ: the import makes it a new version) and no conflicting payment;
        an empty list if it is new and nothing stored conflicts; otherwise
        ``(column, reason, message)`` tuples.
    """
    problems: list[tuple[str | None, str, str]] = []
    stored = session.get(LoanRecord, row.loan_id)
    if stored is not None:
        same = (
            stored.device_id == row.device_id
            and stored.vin == row.vin
            and stored.borrower_ref == row.borrower_ref
            and stored.principal_cents == row.principal_cents
            and stored.region == row.region
        )  # a changed schedule is a new schedule version (collector.loans.schedules), not a conflict
        if not same:
            problems.append(("loan_id", "loan_exists", f"loan {row.loan_id} is already stored with different terms"))
    for column, attr, value in (("device_id", LoanRecord.device_id, row.device_id), ("vin", LoanRecord.vin, row.vin)):
        other = session.scalar(sa.select(LoanRecord.loan_id).where(attr == value, LoanRecord.loan_id != row.loan_id))
        if other is not None:
            problems.append((column, f"{column}_in_use", f"{column} {value} is already bound to loan {other}"))
    if stored is not None:
        known = {p.payment_id: p for p in load_payments(session, row.loan_id)}
        problems.extend(
            ("payments", "payment_conflict", f"payment {p.payment_id} is stored with a different date/amount")
            for p in row.payments
            if p.payment_id in known and known[p.payment_id] != p
        )
    if problems:
        return problems
    return None if stored is not None else []


@dataclass(frozen=True, slots=True)
class RepaymentOutcome:
    """Result of :func:`record_repayment`: ``created`` is False for an idempotent replay."""

    payment: Payment
    created: bool
    recorded_ms: int


def refuse_future_payment(payment: Payment, now_ms: int) -> None:
    """A payment reported one at a time (``POST .../repayments``, ``repayments add``) is already paid.

    Tomorrow (UTC) is allowed: east of UTC it may already be today.

    Raises:
        RepaymentError: ``paid_on`` is after tomorrow, UTC.
    """
    today = utc_date(now_ms)
    if payment.paid_on > today + timedelta(days=1):
        raise RepaymentError(
            f"paid_on {payment.paid_on.isoformat()} is in the future (today is {today.isoformat()} UTC): "
            "record a repayment once it is paid"
        )


def record_repayment(session: Session, loan_id: str, payment: Payment, *, now_ms: int) -> RepaymentOutcome:
    """Record a payment once per ``(loan_id, payment_id)``.

    A replay with the same date and amount returns the stored record (``created=False``); a
    replay with different content raises :class:`RepaymentConflictError`. Concurrent replays are
    settled by the unique key (the loser re-reads inside a savepoint).

    Raises:
        LoanNotFoundError: no such loan.
        RepaymentConflictError: the payment id is taken by a different payment.
    """
    if session.get(LoanRecord, loan_id) is None:
        raise LoanNotFoundError(f"loan {loan_id!r:.80} does not exist")

    def existing() -> RepaymentRecord | None:
        return session.scalar(
            sa.select(RepaymentRecord).where(
                RepaymentRecord.loan_id == loan_id, RepaymentRecord.payment_id == payment.payment_id
            )
        )

    def outcome(record: RepaymentRecord) -> RepaymentOutcome:
        stored = Payment(record.payment_id, record.paid_on, record.amount_cents)
        if stored != payment:
            raise RepaymentConflictError(
                f"payment {payment.payment_id} of loan {loan_id} was recorded as {stored.paid_on} "
                f"{format_cents(stored.amount_cents)}, not {payment.paid_on} {format_cents(payment.amount_cents)}"
            )
        return RepaymentOutcome(stored, False, record.recorded_ms)

    found = existing()
    if found is not None:
        return outcome(found)
    try:
        with session.begin_nested():
            session.add(
                RepaymentRecord(
                    loan_id=loan_id,
                    payment_id=payment.payment_id,
                    paid_on=payment.paid_on,
                    amount_cents=payment.amount_cents,
                    recorded_ms=now_ms,
                )
            )
    except sa.exc.IntegrityError:
        found = existing()
        if found is None:
            raise
        return outcome(found)
    return RepaymentOutcome(payment, True, now_ms)


def loans_with_risk(
    session: Session,
    *,
    level: str | None = None,
    most_severe_first: bool = False,
    largest_expected_loss_first: bool = False,
    limit: int | None = None,
    offset: int = 0,
) -> list[tuple[LoanRecord, RiskStateRecord | None]]:
    """Loans with their stored risk state (None: never assessed, i.e. ``normal``); settled and
    transferred loans are left out (collector.loans.lifecycle).

    Args:
        level: only loans at this level (``normal`` includes loans never assessed).
        most_severe_first: order by level (critical first), then loan id; else by loan id.
        largest_expected_loss_first: order by the v2 expected loss (largest first, loans
            without a score last), before any level order.
        limit: at most this many rows.
        offset: rows to skip (paging).
    """
    order: list[Any] = [LoanRecord.loan_id]
    if most_severe_first:
        rank = sa.case({label.label: int(label) for label in RiskLevel}, value=RiskStateRecord.level, else_=0)
        order.insert(0, rank.desc())
    if largest_expected_loss_first:
        missing = sa.case((RiskStateRecord.expected_loss_cents.is_(None), 1), else_=0)
        order[:0] = [missing, RiskStateRecord.expected_loss_cents.desc()]
    query = (
        sa.select(LoanRecord, RiskStateRecord)
        .outerjoin(RiskStateRecord, RiskStateRecord.loan_id == LoanRecord.loan_id)
        .where(LoanRecord.status.not_in(FINAL_LOAN_STATUSES))
        .order_by(*order)
        .offset(offset)
    )
    if limit is not None:
        query = query.limit(limit)
    if level == "normal":
        query = query.where(sa.or_(RiskStateRecord.level.is_(None), RiskStateRecord.level == "normal"))
    elif level is not None:
        query = query.where(RiskStateRecord.level == level)
    return [(loan, state) for loan, state in session.execute(query).all()]


@dataclass(frozen=True, slots=True)
class LoanSummary:
    """One line of a loan list: ``GET /v1/loans`` and ``lienwatch collector loans list`` print
    exactly this, in the same order (:func:`loan_summaries`).

    A loan never assessed is ``normal`` / ``monitor`` with no facts and no evaluation time;
    the v2 score columns are None until a v2 collector reassessed the loan.
    """

    loan_id: str
    device_id: str
    borrower_ref: str
    level: str
    next_step: str
    facts: dict[str, Any] | None
    evaluated_ms: int | None
    score: float | None = None
    expected_loss_cents: int | None = None
    credit: dict[str, Any] | None = None
    collateral: dict[str, Any] | None = None
    tier: str | None = None

    @classmethod
    def of(cls, loan: LoanRecord, state: RiskStateRecord | None) -> LoanSummary:
        """The summary of a stored loan and its risk state."""
        if state is None:
            return cls(loan.loan_id, loan.device_id, loan.borrower_ref, "normal", "monitor", None, None)
        loan_part = (loan.loan_id, loan.device_id, loan.borrower_ref)
        return cls(
            *loan_part,
            state.level,
            state.next_step,
            state.facts,
            state.evaluated_ms,
            score=state.score,
            expected_loss_cents=state.expected_loss_cents,
            credit={"level": state.credit_level, "next_step": state.credit_next_step} if state.credit_level else None,
            collateral=(
                {"level": state.collateral_level, "next_step": state.collateral_next_step}
                if state.collateral_level
                else None
            ),
            tier=state.tier,
        )

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "loan_id": self.loan_id,
            "device_id": self.device_id,
            "borrower_ref": self.borrower_ref,
            "level": self.level,
            "next_step": self.next_step,
            "facts": self.facts,
            "evaluated_ms": self.evaluated_ms,
            "score": self.score,
            "expected_loss": None if self.expected_loss_cents is None else format_cents(self.expected_loss_cents),
            "credit": self.credit,
            "collateral": self.collateral,
            "tier": self.tier,
        }


def loan_details(session: Session, loan: LoanRecord, as_of: date, *, grace_days: int) -> dict[str, Any]:
    """A loan with its repayment facts on ``as_of`` (per instalment), JSON-ready.

    What ``GET /v1/loans/{id}`` and ``loans show`` share; each adds the risk state as its
    reader may see it.
    """
    facts = loan_facts(session, loan.loan_id, as_of, grace_days=grace_days)
    return {
        "loan_id": loan.loan_id,
        "device_id": loan.device_id,
        "second_tracker": session.scalar(
            sa.select(LoanDeviceRecord.device_id).where(LoanDeviceRecord.loan_id == loan.loan_id)
        ),
        "vin": loan.vin,
        "borrower_ref": loan.borrower_ref,
        "principal": format_cents(loan.principal_cents),
        "repayment": facts.as_dict(with_installments=True),
    }


def loan_summaries(
    session: Session,
    *,
    level: str | None = None,
    order: str = "severity",
    limit: int | None = None,
    offset: int = 0,
) -> list[LoanSummary]:
    """The loan list of the API and the CLI: :func:`loans_with_risk` projected to :class:`LoanSummary`.

    ``order``: ``severity`` (most severe first, then loan id) or ``expected_loss`` (largest
    v2 expected loss first, then by severity: the worklist).
    """
    rows = loans_with_risk(
        session,
        level=level,
        most_severe_first=True,
        largest_expected_loss_first=order == "expected_loss",
        limit=limit,
        offset=offset,
    )
    return [LoanSummary.of(loan, state) for loan, state in rows]

# ------------------------------------------------------------------ second trackers


class TrackerLinkError(LoanError):
    """A second tracker cannot be linked: the device already tracks a car, or the id is malformed."""


def link_second_tracker(session: Session, loan_id: str, device_id: str, *, now_ms: int) -> bool:
    """Link ``device_id`` as the second tracker of a loan's car (replacing any other; the caller commits).

    Returns:
        False when it was linked already (nothing changed), True otherwise.

    Raises:
        LoanNotFoundError: no such loan.
        TrackerLinkError: a malformed id, the loan's own main device, or a device that is
            another loan's main or second tracker.
    """
    loan = session.get(LoanRecord, loan_id)
    if loan is None:
        raise LoanNotFoundError(f"loan {loan_id!r:.80} does not exist")
    try:
        check_device_id(device_id)
    except InvalidRecord as exc:
        raise TrackerLinkError(str(exc)) from exc
    if device_id == loan.device_id:
        raise TrackerLinkError(f"{device_id} is already the main tracker of loan {loan_id}")
    other = session.scalar(sa.select(LoanRecord.loan_id).where(LoanRecord.device_id == device_id))
    if other is not None:
        raise TrackerLinkError(f"{device_id} is the main tracker of loan {other}")
    row = session.get(LoanDeviceRecord, device_id)
    if row is not None and row.loan_id != loan_id:
        raise TrackerLinkError(f"{device_id} is the second tracker of loan {row.loan_id}")
    if row is not None:
        return False
    unlink_second_tracker(session, loan_id)
    session.add(LoanDeviceRecord(device_id=device_id, loan_id=loan_id, added_ms=now_ms))
    session.flush()
    return True


def unlink_second_tracker(session: Session, loan_id: str) -> str | None:
    """Remove a loan's second tracker (the caller commits); returns its device id, None if it had none.

    Raises:
        LoanNotFoundError: no such loan.
    """
    if session.get(LoanRecord, loan_id) is None:
        raise LoanNotFoundError(f"loan {loan_id!r:.80} does not exist")
    row = session.scalar(sa.select(LoanDeviceRecord).where(LoanDeviceRecord.loan_id == loan_id))
    if row is None:
        return None
    session.delete(row)
    session.flush()
    return row.device_id


# ------------------------------------------------------------------ vehicle condition


def vehicle_condition(session: Session, device_id: str, today: date, *, days: int = 30) -> dict[str, Any]:
    """Condition summary for the disposal team: the last ``days`` days of DailyStats.

    Returns per-day distance (km), driving time (h), harsh accelerations and brakings, the
    traction-battery figures (EVs; None otherwise), the totals, the last odometer reading
    known, and ``battery`` (:func:`battery_health`; None for a car that never reported any).
    """
    first = (today - timedelta(days=days - 1)).isoformat()
    rows = list(
        session.scalars(
            sa.select(DailyStatsRecord)
            .where(
                DailyStatsRecord.device_id == device_id,
                DailyStatsRecord.day >= first,
                DailyStatsRecord.day <= today.isoformat(),
            )
            .order_by(DailyStatsRecord.day)
        )
    )
    odometer = _newest_reading(session, device_id, DailyStatsRecord.odometer_km)
    return {
        "device_id": device_id,
        "from": first,
        "to": today.isoformat(),
        "days": [
            {
                "day": r.day,
                "distance_km": round(r.distance_m / 1000, 3),
                "driving_h": round(r.driving_s / 3600, 3),
                "harsh_accel": r.harsh_accel,
                "harsh_brake": r.harsh_brake,
                "energy_used_kwh": r.energy_used_kwh,
                "energy_charged_kwh": r.energy_charged_kwh,
                "charging_sessions": r.charging_sessions,
                "soh_percent": r.soh_percent,
                "final": r.final,
            }
            for r in rows
        ],
        "total_distance_km": round(sum(r.distance_m for r in rows) / 1000, 3),
        "total_driving_h": round(sum(r.driving_s for r in rows) / 3600, 3),
        "harsh_accel": sum(r.harsh_accel for r in rows),
        "harsh_brake": sum(r.harsh_brake for r in rows),
        "last_odometer_km": odometer[0] if odometer else None,
        "last_odometer_day": odometer[1] if odometer else None,
        "battery": battery_health(session, device_id, rows, first, today),
    }


_EPOCH = date(1970, 1, 1)


def _newest_reading(session: Session, device_id: str, column: Any) -> Any:
    """``(value, day)`` of the newest day with ``column`` reported (any day), or None."""
    return session.execute(
        sa.select(column, DailyStatsRecord.day)
        .where(DailyStatsRecord.device_id == device_id, column.is_not(None))
        .order_by(DailyStatsRecord.day.desc())
        .limit(1)
    ).first()


def _sum_or_none(values: list[float | int | None]) -> float | int | None:
    known = [v for v in values if v is not None]
    return sum(known) if known else None


def battery_health(
    session: Session, device_id: str, rows: list[DailyStatsRecord], first: str, today: date
) -> dict[str, Any] | None:
    """The traction battery over the window: state of health, its change, energy, HV disconnects.

    ``soh_percent`` is the newest state of health ever reported (with its day), ``soh_change``
    the newest minus the oldest within the window (percentage points, negative = lost health);
    ``hv_disconnects`` and ``soh_drop_alerts`` count the raised ``hv_disconnect`` / ``soh_drop``
    alerts with a device time inside the window (UTC days). None when the car never reported
    a battery figure nor raised one of those alerts (not an EV, or an older agent).
    """
    soh_rows = [(r.day, r.soh_percent) for r in rows if r.soh_percent is not None]
    latest = _newest_reading(session, device_id, DailyStatsRecord.soh_percent)
    start_ms = (date.fromisoformat(first) - _EPOCH).days * 86_400_000
    end_ms = (today + timedelta(days=1) - _EPOCH).days * 86_400_000
    alerts = session.execute(
        sa.select(AlertRecord.rule, sa.func.count(), sa.func.max(AlertRecord.time_ms))
        .where(
            AlertRecord.device_id == device_id,
            AlertRecord.rule.in_([RuleName.HV_DISCONNECT.value, RuleName.SOH_DROP.value]),
            AlertRecord.state == 0,  # RAISED
            AlertRecord.time_ms >= start_ms,
            AlertRecord.time_ms < end_ms,
        )
        .group_by(AlertRecord.rule)
    ).all()
    counts = {rule: (int(n), last) for rule, n, last in alerts}
    energy_used = _sum_or_none([r.energy_used_kwh for r in rows])
    if latest is None and energy_used is None and not counts:
        return None
    hv = counts.get(RuleName.HV_DISCONNECT.value, (0, None))
    return {
        "soh_percent": latest[0] if latest else None,
        "soh_day": latest[1] if latest else None,
        "soh_change": round(soh_rows[-1][1] - soh_rows[0][1], 2) if len(soh_rows) >= 2 else None,
        "energy_used_kwh": _round_or_none(energy_used),
        "energy_charged_kwh": _round_or_none(_sum_or_none([r.energy_charged_kwh for r in rows])),
        "charging_sessions": _sum_or_none([r.charging_sessions for r in rows]),
        "hv_disconnects": hv[0],
        "last_hv_disconnect_ms": hv[1],
        "soh_drop_alerts": counts.get(RuleName.SOH_DROP.value, (0, None))[0],
    }


def _round_or_none(value: float | int | None) -> float | None:
    return None if value is None else round(float(value), 3)
