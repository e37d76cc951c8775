"""The collector's own database as a backtest book: every loan read as it stood at a past date.

How this works
--------------
:func:`stored_inputs_at` reads each stored loan the way the risk worker would have read it
at ``as_of_ms``, using only what existed then:

* repayment facts from the schedule and the payments value-dated by then;
* the alert episodes the device had raised by then and not cleared by then (a CLEARED
  record after the date does not count: the episode was open on the day);
* movement from the fixes up to then (last moving fix, newest fix: vehicle time);
* the device's status from its data: the newest fix or alert it sent by then is its last
  sign of life, so a box silent for more than ``offline_hours`` at the date is offline (the
  stored ``device_status`` row only says how it is *now*, so it is not used).

:func:`evaluate_stored_book` pairs them with an outcomes file for
:func:`collector.risk.backtest.evaluate_inputs`, so a lender's own history is backtested
with its vehicle signals, not only its repayments::

    lienwatch risk backtest --database --config collector.toml --outcomes outcomes.csv --as-of 2026-09-01

One pass per loan with a few indexed queries each (like a reassessment).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import sqlalchemy as sa
from sqlalchemy.orm import Session

from ..clock import utc_date
from ..storage.tables import AlertRecord, FixRecord, LoanRecord
from .assessment import loan_facts, movement, open_alerts
from .backtest import BookItem, Evaluated, evaluate_inputs
from .engine import DeviceStatus, RiskInput
from .features import exposure_of
from .repayments import DEFAULT_GRACE_DAYS

__all__ = ["device_status_at", "evaluate_stored_book", "stored_inputs_at"]


def device_status_at(session: Session, device_id: str, as_of_ms: int) -> DeviceStatus:
    """The device as its data shows it at ``as_of_ms``: last seen = its newest fix or alert by then.

    ``online`` is unknown (None), so the engines count it offline from that last sign of life.
    """
    fix = sa.select(sa.func.max(FixRecord.time_ms)).where(FixRecord.device_id == device_id,
                                                          FixRecord.time_ms <= as_of_ms)
    alert = sa.select(sa.func.max(AlertRecord.time_ms)).where(AlertRecord.device_id == device_id,
                                                              AlertRecord.time_ms <= as_of_ms)
    seen = [v for v in (session.scalar(fix), session.scalar(alert)) if v is not None]
    return DeviceStatus(online=None, last_seen_ms=int(max(seen)) if seen else None)


def stored_inputs_at(
    session: Session, as_of_ms: int, *, grace_days: int = DEFAULT_GRACE_DAYS
) -> Iterator[tuple[str, RiskInput, int]]:
    """``(loan id, engine input at as_of_ms, principal cents)`` of every stored loan, in loan id order."""
    day = utc_date(as_of_ms)
    for loan in session.scalars(sa.select(LoanRecord).order_by(LoanRecord.loan_id)):
        facts = loan_facts(session, loan.loan_id, day, grace_days=grace_days)
        inp = RiskInput(
            loan.loan_id,
            as_of_ms,
            facts,
            open_alerts(session, loan.device_id, as_of_ms),
            device_status_at(session, loan.device_id, as_of_ms),
            movement(session, loan.device_id, as_of_ms),
        )
        yield loan.loan_id, inp, loan.principal_cents


def evaluate_stored_book(
    session: Session, as_of_ms: int, outcomes: Mapping[str, tuple[str, int | None]], *,
    grace_days: int = DEFAULT_GRACE_DAYS,
) -> Evaluated:
    """The stored book at ``as_of_ms`` with its outcomes (a loan not in ``outcomes`` is good)."""

    def items() -> Iterator[BookItem]:
        for loan_id, inp, principal in stored_inputs_at(session, as_of_ms, grace_days=grace_days):
            yield loan_id, inp, exposure_of(principal, inp.facts), outcomes.get(loan_id, ("good", None))

    return evaluate_inputs(items(), as_of_ms)
