"""Repayment facts: grace boundaries, partial payments, prepayments, streaks, idempotency."""

from __future__ import annotations

from datetime import date

import pytest

from collector.risk.repayments import (
    Installment,
    Payment,
    RepaymentError,
    format_cents,
    parse_amount,
    repayment_facts,
)

D = date
MONTHLY = (
    Installment(D(2026, 1, 1), 350_000),
    Installment(D(2026, 2, 1), 350_000),
    Installment(D(2026, 3, 1), 350_000),
    Installment(D(2026, 4, 1), 350_000),
)


def pay(pid: str, day: date, cents: int = 350_000) -> Payment:
    return Payment(pid, day, cents)


def test_nothing_due_yet() -> None:
    f = repayment_facts(MONTHLY, [], D(2025, 12, 15))
    assert (f.days_past_due, f.consecutive_late, f.total_overdue_cents, f.total_due_cents) == (0, 0, 0, 0)
    assert not f.overdue
    assert (f.next_due_date, f.next_due_cents) == (D(2026, 1, 1), 350_000)


def test_due_day_itself_is_not_past_due() -> None:
    f = repayment_facts(MONTHLY, [], D(2026, 1, 1))
    assert (f.days_past_due, f.overdue, f.total_due_cents) == (0, False, 350_000)
    assert f.next_due_date == D(2026, 1, 1)


@pytest.mark.parametrize(
    ("as_of", "dpd", "overdue_cents", "streak"),
    [
        (D(2026, 1, 2), 1, 0, 0),
        (D(2026, 1, 4), 3, 0, 0),  # last grace day: due, not overdue yet
        (D(2026, 1, 5), 4, 350_000, 1),  # first day after grace
    ],
)
def test_grace_boundary_unpaid(as_of: date, dpd: int, overdue_cents: int, streak: int) -> None:
    f = repayment_facts(MONTHLY, [], as_of)
    assert (f.days_past_due, f.total_overdue_cents, f.consecutive_late) == (dpd, overdue_cents, streak)
    assert f.overdue is (overdue_cents > 0)


def test_payment_on_last_grace_day_is_on_time() -> None:
    f = repayment_facts(MONTHLY, [pay("p1", D(2026, 1, 4))], D(2026, 1, 20))
    assert (f.consecutive_late, f.late_installments, f.days_past_due, f.overdue) == (0, 0, 0, False)
    assert f.installments[0].covered_on == D(2026, 1, 4)


def test_payment_one_day_after_grace_is_late_and_stays_late() -> None:
    f = repayment_facts(MONTHLY, [pay("p1", D(2026, 1, 5))], D(2026, 1, 20))
    assert (f.consecutive_late, f.late_installments, f.days_past_due, f.overdue) == (1, 1, 0, False)


def test_zero_grace() -> None:
    f = repayment_facts(MONTHLY, [], D(2026, 1, 2), grace_days=0)
    assert (f.total_overdue_cents, f.consecutive_late) == (350_000, 1)


def test_partial_payment_leaves_the_rest_overdue() -> None:
    f = repayment_facts(MONTHLY, [pay("p1", D(2026, 1, 2), 300_000)], D(2026, 1, 10))
    assert f.total_overdue_cents == 50_000
    assert f.days_past_due == 9
    assert f.consecutive_late == 1
    assert f.installments[0].covered_on is None


def test_partial_payments_completed_within_grace_are_on_time() -> None:
    payments = [pay("p1", D(2026, 1, 1), 200_000), pay("p2", D(2026, 1, 3), 150_000)]
    f = repayment_facts(MONTHLY, payments, D(2026, 1, 10))
    assert (f.consecutive_late, f.total_overdue_cents, f.days_past_due) == (0, 0, 0)
    assert f.installments[0].covered_on == D(2026, 1, 3)


def test_prepayment_skips_covered_installments() -> None:
    f = repayment_facts(MONTHLY, [pay("pre", D(2025, 12, 20), 700_000)], D(2026, 1, 10))
    assert f.total_due_cents == 350_000
    assert f.prepaid_cents == 350_000
    assert (f.next_due_date, f.next_due_cents) == (D(2026, 3, 1), 350_000)
    assert (f.consecutive_late, f.overdue) == (0, False)


def test_partial_prepayment_reduces_next_due_amount() -> None:
    f = repayment_facts(MONTHLY, [pay("p", D(2026, 1, 1), 450_000)], D(2026, 1, 10))
    assert (f.next_due_date, f.next_due_cents) == (D(2026, 2, 1), 250_000)


def test_arrears_do_not_inflate_next_due_amount() -> None:
    f = repayment_facts(MONTHLY, [], D(2026, 1, 10))
    assert (f.next_due_date, f.next_due_cents) == (D(2026, 2, 1), 350_000)


def test_three_consecutive_late() -> None:
    f = repayment_facts(MONTHLY, [], D(2026, 3, 5))
    assert f.consecutive_late == 3
    assert f.late_installments == 3
    assert f.days_past_due == 63
    assert f.total_overdue_cents == 1_050_000
    assert f.next_due_date == D(2026, 4, 1)


def test_streak_counts_only_assessable_installments() -> None:
    # On 2026-03-04 the March instalment is still in grace: only Jan and Feb count.
    assert repayment_facts(MONTHLY, [], D(2026, 3, 4)).consecutive_late == 2


def test_streak_is_trailing() -> None:
    payments = [pay("jan", D(2026, 1, 10)), pay("feb", D(2026, 2, 1))]
    f = repayment_facts(MONTHLY, payments, D(2026, 3, 10))
    assert (f.consecutive_late, f.late_installments) == (1, 2)


def test_on_time_latest_breaks_streak() -> None:
    # Jan and Feb late, then a catch-up on 2026-03-01 covering Jan..Mar: March is on time.
    payments = [pay("catch-up", D(2026, 3, 1), 1_050_000)]
    f = repayment_facts(MONTHLY, payments, D(2026, 3, 10))
    assert (f.consecutive_late, f.late_installments, f.overdue, f.days_past_due) == (0, 2, False, 0)


def test_late_history_survives_catch_up_after_grace() -> None:
    f = repayment_facts(MONTHLY, [pay("catch-up", D(2026, 3, 6), 1_050_000)], D(2026, 3, 10))
    assert (f.consecutive_late, f.overdue, f.days_past_due) == (3, False, 0)


def test_payments_after_as_of_are_ignored() -> None:
    later = [pay("p1", D(2026, 2, 1))]
    assert repayment_facts(MONTHLY, later, D(2026, 1, 10)) == repayment_facts(MONTHLY, [], D(2026, 1, 10))


def test_duplicate_payment_counts_once() -> None:
    once = repayment_facts(MONTHLY, [pay("p1", D(2026, 1, 1))], D(2026, 2, 10))
    twice = repayment_facts(MONTHLY, [pay("p1", D(2026, 1, 1)), pay("p1", D(2026, 1, 1))], D(2026, 2, 10))
    assert once == twice
    assert twice.total_paid_cents == 350_000


def test_conflicting_payment_id_is_an_error() -> None:
    with pytest.raises(RepaymentError, match="p1 is used twice"):
        repayment_facts(MONTHLY, [pay("p1", D(2026, 1, 1)), pay("p1", D(2026, 1, 2))], D(2026, 2, 10))


def test_same_input_same_facts() -> None:
    payments = [pay("b", D(2026, 2, 3)), pay("a", D(2026, 1, 9), 100_000)]
    assert repayment_facts(MONTHLY, payments, D(2026, 3, 1)) == repayment_facts(
        MONTHLY, list(reversed(payments)), D(2026, 3, 1)
    )


def test_schedule_must_increase() -> None:
    with pytest.raises(RepaymentError, match="strictly increase"):
        repayment_facts(list(reversed(MONTHLY)), [], D(2026, 1, 1))
    with pytest.raises(RepaymentError, match="at least one"):
        repayment_facts([], [], D(2026, 1, 1))


@pytest.mark.parametrize("grace", [-1, 61, True, 1.5])
def test_bad_grace(grace: object) -> None:
    with pytest.raises(RepaymentError, match="grace_days"):
        repayment_facts(MONTHLY, [], D(2026, 1, 1), grace_days=grace)  # type: ignore[arg-type]


def test_as_dict() -> None:
    f = repayment_facts(MONTHLY, [pay("p", D(2026, 1, 1), 100_000)], D(2026, 1, 10))
    assert f.as_dict() == {
        "as_of": "2026-01-10",
        "grace_days": 3,
        "overdue": True,
        "days_past_due": 9,
        "consecutive_late": 1,
        "late_installments": 1,
        "total_overdue": "2500.00",
        "total_due": "3500.00",
        "total_paid": "1000.00",
        "prepaid": "0.00",
        "next_due_date": "2026-02-01",
        "next_due_amount": "3500.00",
    }
    assert f.as_dict(with_installments=True)["installments"][0] == {  # type: ignore[index]
        "due_date": "2026-01-01",
        "amount": "3500.00",
        "covered_on": None,
        "late": True,
        "assessable": True,
    }


@pytest.mark.parametrize(("text", "cents"), [("3500.00", 350_000), ("3500", 350_000), ("0.5", 50), (" 12.34 ", 1234)])
def test_parse_amount(text: str, cents: int) -> None:
    assert parse_amount(text) == cents


@pytest.mark.parametrize("text", ["", "-1", "1e3", "3,500.00", "0", "0.00", "1.234", "abc", "9" * 13, "1000000000.01"])
def test_parse_amount_rejects(text: str) -> None:
    with pytest.raises(RepaymentError):
        parse_amount(text)


def test_format_cents() -> None:
    assert [format_cents(c) for c in (0, 5, 350_000, -1250)] == ["0.00", "0.05", "3500.00", "-12.50"]


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (("bad id!", D(2026, 1, 1), 1), "payment id"),
        (("x" * 65, D(2026, 1, 1), 1), "payment id"),
        (("ok", "2026-01-01", 1), "must be a date"),
        (("ok", D(2026, 1, 1), 0), "must be > 0"),
        (("ok", D(2026, 1, 1), -5), "must be > 0"),
        (("ok", D(2026, 1, 1), 1.5), "integer cents"),
    ],
)
def test_payment_validation(args: tuple[object, ...], match: str) -> None:
    with pytest.raises(RepaymentError, match=match):
        Payment(*args)  # type: ignore[arg-type]
