"""Schedule versions: a restructured or deferred loan gets a new schedule version, not an error.

The current schedule stays in ``installments`` (what the repayment facts are computed on);
``schedule_versions`` keeps every version: 1 is the schedule as first stored (written the
first time the schedule changes), then one row per change with its kind (``restructure``,
``deferral``), reason, author and time. ``loans.schedule_version`` names the current one.
Offering the current schedule again changes nothing (idempotent).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.orm import Session

from ..risk.assessment import LoanNotFoundError, load_schedule
from ..risk.repayments import Installment, LoanError
from ..storage.tables import InstallmentRecord, LoanRecord, ScheduleVersion

__all__ = ["KINDS", "MAX_INSTALLMENTS", "ScheduleChange", "ScheduleError", "revise_schedule", "schedule_history"]

KINDS = ("restructure", "deferral")
MAX_INSTALLMENTS = 600


class ScheduleError(LoanError, ValueError):
    """A schedule change is malformed (kind, reason, empty or unordered schedule)."""


@dataclass(frozen=True, slots=True)
class ScheduleChange:
    """What :func:`revise_schedule` did (``created`` False: the schedule was already current)."""

    loan_id: str
    version: int
    created: bool


def _as_json(schedule: Sequence[Installment]) -> list[list[object]]:
    return [[i.due_date.isoformat(), i.amount_cents] for i in schedule]


def revise_schedule(
    session: Session,
    loan_id: str,
    schedule: Sequence[Installment],
    *,
    kind: str,
    reason: str,
    actor: str,
    now_ms: int,
) -> ScheduleChange:
    """Make ``schedule`` the loan's current schedule as a new version (the caller reassesses and commits).

    Raises:
        LoanNotFoundError: no such loan.
        ScheduleError: unknown kind, no reason, or an empty, oversized or unordered schedule.
    """
    if kind not in KINDS:
        raise ScheduleError(f"schedule change kind {kind!r:.40} is not one of {list(KINDS)}")
    if not reason.strip() or len(reason) > 500:
        raise ScheduleError("a schedule change needs a reason of 1..500 characters")
    if not 1 <= len(schedule) <= MAX_INSTALLMENTS:
        raise ScheduleError(f"a schedule has 1..{MAX_INSTALLMENTS} instalments, got {len(schedule)}")
    dates = [i.due_date for i in schedule]
    if dates != sorted(set(dates)):
        raise ScheduleError("instalment due dates must be strictly increasing")
    loan = session.get(LoanRecord, loan_id, with_for_update=True)
    if loan is None:
        raise LoanNotFoundError(f"loan {loan_id!r:.80} does not exist")
    current = load_schedule(session, loan_id)
    if tuple(schedule) == current:
        return ScheduleChange(loan_id, loan.schedule_version, False)
    if session.get(ScheduleVersion, (loan_id, loan.schedule_version)) is None:
        session.add(ScheduleVersion(loan_id=loan_id, version=loan.schedule_version, kind="original",
                                    reason="as first stored", created_ms=loan.created_ms, created_by="import",
                                    installments=_as_json(current)))
    loan.schedule_version += 1
    session.add(ScheduleVersion(loan_id=loan_id, version=loan.schedule_version, kind=kind, reason=reason.strip(),
                                created_ms=now_ms, created_by=actor[:128], installments=_as_json(schedule)))
    session.execute(sa.delete(InstallmentRecord).where(InstallmentRecord.loan_id == loan_id))
    session.add_all(
        InstallmentRecord(loan_id=loan_id, seq=n, due_date=i.due_date, amount_cents=i.amount_cents)
        for n, i in enumerate(schedule, 1)
    )
    session.flush()
    return ScheduleChange(loan_id, loan.schedule_version, True)


def schedule_history(session: Session, loan_id: str) -> list[dict[str, object]]:
    """Every stored version of a loan's schedule, oldest first."""
    rows = session.scalars(
        sa.select(ScheduleVersion).where(ScheduleVersion.loan_id == loan_id).order_by(ScheduleVersion.version)
    )
    return [
        {"version": r.version, "kind": r.kind, "reason": r.reason, "created_ms": r.created_ms,
         "created_by": r.created_by, "installments": r.installments}
        for r in rows
    ]
