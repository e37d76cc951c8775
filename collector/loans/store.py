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

from ..risk.assessment import LoanNotFoundError, load_payments, load_schedule, loan_facts
from ..risk.engine import RiskLevel
from ..risk.repayments import Installment, LoanError, Payment, format_cents
from ..storage.tables import DailyStatsRecord, InstallmentRecord, LoanRecord, RepaymentRecord, RiskStateRecord

__all__ = [
    "LoanNotFoundError",
    "LoanRow",
    "LoanSummary",
    "RepaymentConflictError",
    "RepaymentOutcome",
    "existing_loan_conflicts",
    "loan_details",
    "loan_summaries",
    "loans_with_risk",
    "record_repayment",
    "store_loan",
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
        ``None`` if the loan is stored with exactly these terms (and no conflicting payment);
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
            and load_schedule(session, row.loan_id) == row.schedule
        )
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
    """Loans with their stored risk state (None: never assessed, i.e. ``normal``).

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
    """One line of a loan list (``GET /v1/loans``, ``lienwatch collector loans list``).

    A loan never assessed is ``normal`` / ``monitor`` with no facts and no evaluation time.
    """

    loan_id: str
    device_id: str
    borrower_ref: str
    level: str
    next_step: str
    facts: dict[str, Any] | None
    evaluated_ms: int | None

    @classmethod
    def of(cls, loan: LoanRecord, state: RiskStateRecord | None) -> LoanSummary:
        """The summary of a stored loan and its risk state."""
        if state is None:
            return cls(loan.loan_id, loan.device_id, loan.borrower_ref, "normal", "monitor", None, None)
        loan_part = (loan.loan_id, loan.device_id, loan.borrower_ref)
        return cls(*loan_part, state.level, state.next_step, state.facts, state.evaluated_ms)

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
        "vin": loan.vin,
        "borrower_ref": loan.borrower_ref,
        "principal": format_cents(loan.principal_cents),
        "repayment": facts.as_dict(with_installments=True),
    }


def loan_summaries(
    session: Session,
    *,
    level: str | None = None,
    most_severe_first: bool = False,
    limit: int | None = None,
    offset: int = 0,
) -> list[LoanSummary]:
    """:func:`loans_with_risk` projected to :class:`LoanSummary` (same arguments)."""
    rows = loans_with_risk(session, level=level, most_severe_first=most_severe_first, limit=limit, offset=offset)
    return [LoanSummary.of(loan, state) for loan, state in rows]



# ------------------------------------------------------------------ vehicle condition


def vehicle_condition(session: Session, device_id: str, today: date, *, days: int = 30) -> dict[str, Any]:
    """Condition summary for the disposal team: the last ``days`` days of DailyStats.

    Returns per-day distance (km), driving time (h), harsh accelerations and brakings, the
    totals, and the last odometer reading known.
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
    odometer = session.execute(
        sa.select(DailyStatsRecord.odometer_km, DailyStatsRecord.day)
        .where(DailyStatsRecord.device_id == device_id, DailyStatsRecord.odometer_km.is_not(None))
        .order_by(DailyStatsRecord.day.desc())
        .limit(1)
    ).first()
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
    }
