"""Repayment facts: a pure function of a loan's schedule, its payments and an as-of date.

How this works
--------------
Money is integer minor units (cents) everywhere, so no float ever touches a balance.

Payments are allocated oldest-installment-first (a waterfall): cumulative paid is compared
with cumulative due. That makes partial payments, catch-up payments and prepayments fall
out of one rule without bookkeeping per installment:

* installment *k* is **covered by day D** when the sum of payments made on or before D is
  at least the sum of installments 1..k;
* installment *k* is **late** when it was not covered by ``due_date + grace_days`` (a
  payment on the last grace day is on time). Lateness is history: a late installment paid
  afterwards stays late;
* an installment is **assessable** on ``as_of`` once its grace has ended
  (``as_of > due_date + grace_days``);
* **consecutive late installments** = the length of the trailing run of late installments
  among the assessable ones, ending with the most recent assessable installment (0 when that
  one was on time);
* **days past due** = days from the due date of the oldest installment still not covered on
  ``as_of`` (industry-style DPD, counted from the due date, grace does not shift it);
* **total overdue** = what is still unpaid on ``as_of`` of the assessable installments
  (inside the grace window an unpaid installment is *due*, not *overdue*);
* **next due** = the first installment due on or after ``as_of`` that is not yet covered
  (prepaid installments are skipped), with the amount still open on it.

Payments dated after ``as_of`` are ignored, so evaluating the past gives the same answer
later: the function is pure and idempotent.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta
from decimal import Decimal, InvalidOperation
from itertools import pairwise

from ..errors import CollectorError

__all__ = [
    "DEFAULT_GRACE_DAYS",
    "MAX_AMOUNT_CENTS",
    "Installment",
    "InstallmentStatus",
    "LoanError",
    "Payment",
    "RepaymentError",
    "RepaymentFacts",
    "format_cents",
    "parse_amount",
    "repayment_facts",
]

DEFAULT_GRACE_DAYS = 3
#: One billion in major units: far above any auto loan, low enough to catch unit mix-ups.
MAX_AMOUNT_CENTS = 100_000_000_000
PAYMENT_ID_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_AMOUNT_RE = re.compile(r"\d{1,12}(\.\d{1,2})?")


class LoanError(CollectorError):
    """Root of the loan and repayment errors (CSV import, repayments, loan lookups)."""


class RepaymentError(LoanError, ValueError):
    """A schedule, payment or amount is not acceptable (the message names the value and the limit)."""


def parse_amount(text: str, *, what: str = "amount") -> int:
    """Parse a decimal amount such as ``3500.00`` into integer cents.

    Args:
        text: digits with at most two decimals; no sign, no exponent, no thousands separator.
        what: name of the field, used in the error message.

    Raises:
        RepaymentError: when the text is not such an amount, or is zero/over the limit.
    """
    stripped = text.strip()
    if not _AMOUNT_RE.fullmatch(stripped):
        raise RepaymentError(f"{what} {text!r:.40} must be a positive decimal with at most 2 decimals, like 3500.00")
    try:
        cents = int(Decimal(stripped) * 100)
    except InvalidOperation as exc:  # pragma: no cover - the regex already excludes this
        raise RepaymentError(f"{what} {text!r:.40} is not a number") from exc
    _check_cents(what, cents)
    return cents


def format_cents(cents: int) -> str:
    """``350000`` -> ``"3500.00"`` (negative values keep their sign)."""
    sign = "-" if cents < 0 else ""
    whole, frac = divmod(abs(cents), 100)
    return f"{sign}{whole}.{frac:02d}"


def _check_cents(what: str, cents: object) -> None:
    if isinstance(cents, bool) or not isinstance(cents, int):
        raise RepaymentError(f"{what} must be integer cents, got {cents!r:.40}")
    if not 0 < cents <= MAX_AMOUNT_CENTS:
        raise RepaymentError(f"{what}={format_cents(cents)} must be > 0 and <= {format_cents(MAX_AMOUNT_CENTS)}")


@dataclass(frozen=True, slots=True)
class Installment:
    """One scheduled instalment: pay ``amount_cents`` by ``due_date``."""

    due_date: date
    amount_cents: int

    def __post_init__(self) -> None:
        if not isinstance(self.due_date, date):
            raise RepaymentError(f"installment due_date {self.due_date!r:.40} must be a date")
        _check_cents(f"installment {self.due_date} amount", self.amount_cents)


@dataclass(frozen=True, slots=True)
class Payment:
    """One received payment.

    Attributes:
        payment_id: client-supplied idempotency key, ``[A-Za-z0-9_.-]{1,64}``.
        paid_on: value date of the payment.
        amount_cents: amount received, cents.
    """

    payment_id: str
    paid_on: date
    amount_cents: int

    def __post_init__(self) -> None:
        if not isinstance(self.payment_id, str) or not PAYMENT_ID_RE.fullmatch(self.payment_id):
            raise RepaymentError(f"payment id {self.payment_id!r:.80} must match [A-Za-z0-9_.-]{{1,64}}")
        if not isinstance(self.paid_on, date):
            raise RepaymentError(f"payment {self.payment_id} paid_on {self.paid_on!r:.40} must be a date")
        _check_cents(f"payment {self.payment_id} amount", self.amount_cents)


@dataclass(frozen=True, slots=True)
class InstallmentStatus:
    """How one instalment stands on the as-of date (part of :class:`RepaymentFacts`)."""

    due_date: date
    amount_cents: int
    covered_on: date | None
    late: bool
    assessable: bool

    def as_dict(self) -> dict[str, object]:
        """JSON-ready form."""
        return {
            "due_date": self.due_date.isoformat(),
            "amount": format_cents(self.amount_cents),
            "covered_on": self.covered_on.isoformat() if self.covered_on else None,
            "late": self.late,
            "assessable": self.assessable,
        }


@dataclass(frozen=True, slots=True)
class RepaymentFacts:
    """Derived repayment facts of one loan on ``as_of`` (see the module docstring for definitions)."""

    as_of: date
    grace_days: int
    days_past_due: int
    consecutive_late: int
    late_installments: int
    total_overdue_cents: int
    total_due_cents: int
    total_paid_cents: int
    next_due_date: date | None
    next_due_cents: int
    installments: tuple[InstallmentStatus, ...] = field(default=())

    @property
    def overdue(self) -> bool:
        """True when an instalment whose grace has ended is still not fully paid."""
        return self.total_overdue_cents > 0

    @property
    def prepaid_cents(self) -> int:
        """Paid beyond everything due so far (0 if not ahead)."""
        return max(0, self.total_paid_cents - self.total_due_cents)

    def as_dict(self, *, with_installments: bool = False) -> dict[str, object]:
        """JSON-ready form (amounts as decimal strings, dates as ISO text)."""
        out: dict[str, object] = {
            "as_of": self.as_of.isoformat(),
            "grace_days": self.grace_days,
            "overdue": self.overdue,
            "days_past_due": self.days_past_due,
            "consecutive_late": self.consecutive_late,
            "late_installments": self.late_installments,
            "total_overdue": format_cents(self.total_overdue_cents),
            "total_due": format_cents(self.total_due_cents),
            "total_paid": format_cents(self.total_paid_cents),
            "prepaid": format_cents(self.prepaid_cents),
            "next_due_date": self.next_due_date.isoformat() if self.next_due_date else None,
            "next_due_amount": format_cents(self.next_due_cents),
        }
        if with_installments:
            out["installments"] = [i.as_dict() for i in self.installments]
        return out


def _dedupe_payments(payments: Iterable[Payment]) -> list[Payment]:
    seen: dict[str, Payment] = {}
    for payment in payments:
        previous = seen.get(payment.payment_id)
        if previous is None:
            seen[payment.payment_id] = payment
        elif previous != payment:
            raise RepaymentError(
                f"payment id {payment.payment_id} is used twice with different content "
                f"({previous.paid_on} {format_cents(previous.amount_cents)} vs "
                f"{payment.paid_on} {format_cents(payment.amount_cents)})"
            )
    return sorted(seen.values(), key=lambda p: (p.paid_on, p.payment_id))


def _check_schedule(schedule: Sequence[Installment]) -> None:
    if not schedule:
        raise RepaymentError("a schedule needs at least one installment")
    for before, after in pairwise(schedule):
        if after.due_date <= before.due_date:
            raise RepaymentError(
                f"installment due dates must strictly increase: {before.due_date} then {after.due_date}"
            )


def _installment_statuses(
    schedule: Sequence[Installment], paid: Sequence[Payment], as_of: date, grace: timedelta
) -> list[InstallmentStatus]:
    """Each instalment: when cumulative payments covered it, and whether it was late by its deadline."""

    def paid_by(day: date) -> int:
        return sum(p.amount_cents for p in paid if p.paid_on <= day)

    def covered_on(cumulative_due: int) -> date | None:
        running = 0
        for p in paid:
            running += p.amount_cents
            if running >= cumulative_due:
                return p.paid_on
        return None

    statuses: list[InstallmentStatus] = []
    cumulative_due = 0
    for inst in schedule:
        cumulative_due += inst.amount_cents
        deadline = inst.due_date + grace
        assessable = as_of > deadline
        statuses.append(
            InstallmentStatus(
                due_date=inst.due_date,
                amount_cents=inst.amount_cents,
                covered_on=covered_on(cumulative_due),
                late=assessable and paid_by(deadline) < cumulative_due,
                assessable=assessable,
            )
        )
    return statuses


def _consecutive_late(assessed: Sequence[InstallmentStatus]) -> int:
    """Late instalments in a row, counted back from the latest assessable one."""
    consecutive = 0
    for status in reversed(assessed):
        if not status.late:
            break
        consecutive += 1
    return consecutive


def _next_due(statuses: Sequence[InstallmentStatus], as_of: date, total_paid: int) -> tuple[date | None, int]:
    """The first uncovered instalment due on or after ``as_of``, and what is still owed on it."""
    cumulative_due = 0
    for status in statuses:
        cumulative_due += status.amount_cents
        if status.due_date >= as_of and status.covered_on is None:
            return status.due_date, min(status.amount_cents, cumulative_due - total_paid)
    return None, 0


def repayment_facts(
    schedule: Sequence[Installment],
    payments: Iterable[Payment],
    as_of: date,
    *,
    grace_days: int = DEFAULT_GRACE_DAYS,
) -> RepaymentFacts:
    """Derive the repayment facts of a loan on ``as_of``.

    Args:
        schedule: instalments in strictly increasing due-date order.
        payments: received payments, any order; a repeated payment id with identical content
            counts once (idempotency), with different content it is an error.
        as_of: the evaluation date; payments after it are ignored.
        grace_days: days after a due date on which a payment still counts as on time (0..60).

    Raises:
        RepaymentError: unordered schedule, conflicting payment ids, bad grace.
    """
    if isinstance(grace_days, bool) or not isinstance(grace_days, int) or not 0 <= grace_days <= 60:
        raise RepaymentError(f"grace_days={grace_days!r} must be an int in 0..60")
    _check_schedule(schedule)
    paid = [p for p in _dedupe_payments(payments) if p.paid_on <= as_of]
    total_paid = sum(p.amount_cents for p in paid)
    statuses = _installment_statuses(schedule, paid, as_of, timedelta(days=grace_days))
    assessed = [s for s in statuses if s.assessable]
    oldest_open = next((s for s in statuses if s.covered_on is None), None)
    days_past_due = max(0, (as_of - oldest_open.due_date).days) if oldest_open else 0
    total_overdue = max(0, sum(s.amount_cents for s in assessed) - total_paid)
    total_due = sum(s.amount_cents for s in statuses if s.due_date <= as_of)
    next_due_date, next_due_cents = _next_due(statuses, as_of, total_paid)

    return RepaymentFacts(
        as_of=as_of,
        grace_days=grace_days,
        days_past_due=days_past_due,
        consecutive_late=_consecutive_late(assessed),
        late_installments=sum(1 for s in assessed if s.late),
        total_overdue_cents=total_overdue,
        total_due_cents=total_due,
        total_paid_cents=total_paid,
        next_due_date=next_due_date,
        next_due_cents=next_due_cents,
        installments=tuple(statuses),
    )
