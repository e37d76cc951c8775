"""A seeded, labelled synthetic loan book: repayment histories, vehicle event streams, outcomes.

How this works
--------------
This module knows nothing of the score: it imports no feature, model or rule code, only
the record types of a schedule and a payment. It simulates what happens to each loan and
what the T-BOX and the bank would have recorded; the backtest then reads those records at
the scoring date exactly as the collector would read its database.

Time is counted in days around the **snapshot** (the scoring date, day 0); outcomes are
observed in the **window** (day 0, day 90]. Each loan draws from its own
``random.Random(seed * 1_000_003 + index)``, so a loan does not change when the book grows.

Loans: principal log-normal around 120,000 (40,000..300,000), term 24/36/48 months, 1 to
term-4 months on book at the snapshot, loan-to-value at origination 0.55..0.95, the
vehicle loses 1.2 % of its value a month, 6 % a year flat interest, monthly instalments.

Borrowers fall in four segments, each with its own outcome mechanics:

* **steady** (70 %): 96.5 % of instalments paid on time (5 days early .. 2 days late),
  otherwise 5..20 days late.
* **wobbly** (17 %): a quarter of instalments 5..40 days late; now and then 2..3 months
  missed and then caught up in one payment (the **cure**).
* **distressed** (9 %): from a stress month on (6 months before .. 2 months after the
  snapshot) 85 % of instalments are missed. 35 % cure (all arrears paid 1..3 months later,
  then wobbly); the others **default** on the day the oldest missed instalment is 90 days
  past due.
* **fraud** (4 %): half **flight**, half **second lien**, at a day T in [-30, 90]. From
  20..75 days before T the borrower stops paying (70 %). Flight: night door openings (60 %)
  and trips out of the allowed region (50 %) in the run-up; at T the box is unplugged
  (power cut, then silent for good); the flight is established 5..20 days after T. Second
  lien: dwell at used-car markets (80 %) in the run-up; the lien is registered at T.

Independently of the segment, 1.5 % of vehicles are **stolen** at a day in [-20, 90]: the
thieves case the car (night door openings 3..25 days before, 50 %), cut the box's power
and tow it (both episodes stay open), the box goes silent within hours (70 %); 80 % are not
recovered and count as a theft loss 3..15 days later.

Benign noise makes every signal ambiguous: market dwells (4 % of steady borrowers, 20 % of
wobbly, 30 % of distressed ones price their car; 20 % of dwells stay open), night door
openings (5 %), power cuts for a battery change (2 %), breakdown tows (1 %), trips out of
region (5 %), GNSS loss in car parks (3 %), device outages of 2..30 days (5 %) or for good
(1 %), and the car parked for 7..40 days (6 %).

The first bad outcome (default, theft, flight, second lien) and its day are the label.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from ..errors import CollectorError
from .repayments import Installment, Payment

__all__ = [
    "BAD_OUTCOMES",
    "DEFAULT_SEED",
    "DEFAULT_SNAPSHOT",
    "WINDOW_DAYS",
    "AlertEpisode",
    "BookLoan",
    "Outage",
    "ParkedSpell",
    "SyntheticBook",
    "SyntheticBookError",
    "add_months",
    "generate_book",
]

DEFAULT_SEED = 20261202
DEFAULT_SNAPSHOT = date(2026, 9, 1)
WINDOW_DAYS = 90
BAD_OUTCOMES = ("default", "theft", "flight", "second_lien")
_DAY_MS = 86_400_000


class SyntheticBookError(CollectorError, ValueError):
    """A book size or argument out of range (the message names it and the limit)."""


def add_months(day: date, months: int) -> date:
    """``day`` plus ``months`` calendar months (the day clipped to the month's length)."""
    index = day.year * 12 + day.month - 1 + months
    year, month = divmod(index, 12)
    month += 1
    last = (date(year + (month == 12), month % 12 + 1, 1) - timedelta(days=1)).day
    return date(year, month, min(day.day, last))


@dataclass(frozen=True, slots=True)
class AlertEpisode:
    """An alert episode the box raised (vehicle time), and when it cleared (None: still open)."""

    rule: str
    episode: str
    raised_ms: int
    cleared_ms: int | None


@dataclass(frozen=True, slots=True)
class Outage:
    """The box was silent from ``start_ms`` to ``end_ms`` (None: for good)."""

    start_ms: int
    end_ms: int | None


@dataclass(frozen=True, slots=True)
class ParkedSpell:
    """The car did not move from ``start_ms`` to ``end_ms``."""

    start_ms: int
    end_ms: int


@dataclass(frozen=True, slots=True)
class BookLoan:
    """One synthetic loan with everything recorded about it, and what became of it."""

    loan_id: str
    segment: str
    principal_cents: int
    vehicle_value_cents: int | None
    originated: date
    schedule: tuple[Installment, ...]
    payments: tuple[Payment, ...]
    alerts: tuple[AlertEpisode, ...]
    outages: tuple[Outage, ...]
    parked: tuple[ParkedSpell, ...]
    outcome: str
    outcome_ms: int | None

    def vehicle_value_on(self, day: date) -> int | None:
        """The vehicle's value on ``day`` (1.2 % a month depreciation since origination; None: unknown)."""
        if self.vehicle_value_cents is None:
            return None
        months = max(0.0, (day - self.originated).days / 30.44)
        return max(1, int(self.vehicle_value_cents * (1 - 0.012) ** months))


@dataclass(frozen=True, slots=True)
class SyntheticBook:
    """A generated book: its loans, the snapshot (scoring date) and the seed."""

    loans: tuple[BookLoan, ...]
    snapshot: date
    seed: int

    @property
    def snapshot_ms(self) -> int:
        """The snapshot as epoch ms (midnight UTC)."""
        return _ms(self.snapshot, 0.0)

    def is_bad_in_window(self, loan: BookLoan) -> bool:
        """A bad outcome in (snapshot, snapshot + 90 days]."""
        s = self.snapshot_ms
        if loan.outcome not in BAD_OUTCOMES or loan.outcome_ms is None:
            return False
        return s < loan.outcome_ms <= s + WINDOW_DAYS * _DAY_MS


def _ms(snapshot: date, day: float) -> int:
    base = datetime(snapshot.year, snapshot.month, snapshot.day, tzinfo=UTC)
    return int(base.timestamp() * 1000) + round(day * _DAY_MS)


class _PaymentBook:
    """The payments and missed instalments of one simulated loan while :meth:`_LoanSim.pay` runs."""

    def __init__(self, horizon: date, behaviour: str) -> None:
        self.horizon = horizon
        self.behaviour = behaviour
        self.payments: list[Payment] = []
        self.missed: list[Installment] = []  # missed instalments, oldest first
        self.cure_month: int | None = None
        self.missed_run = 0

    def catch_up(self, day: date, extra_cents: int = 0) -> None:
        """Pay every missed instalment plus ``extra_cents`` on ``day`` (nothing after the window)."""
        cents = sum(a.amount_cents for a in self.missed) + extra_cents
        if day <= self.horizon and cents > 0:
            self.payments.append(Payment(f"P{len(self.payments) + 1}", day, cents))
        self.missed.clear()


class _LoanSim:
    """Simulates one loan (see the module docstring for the mechanics)."""

    def __init__(self, index: int, seed: int, snapshot: date) -> None:
        self.r = random.Random(seed * 1_000_003 + index)
        self.index = index
        self.snapshot = snapshot
        self.alerts: list[AlertEpisode] = []
        self.outages: list[Outage] = []
        self.parked: list[ParkedSpell] = []
        self.bad: list[tuple[float, str]] = []

    def day_of(self, when: date) -> int:
        return (when - self.snapshot).days

    def date_of(self, day: float) -> date:
        return self.snapshot + timedelta(days=math.floor(day))

    def alert(self, rule: str, start: float, length: float | None) -> None:
        n = len(self.alerts) + 1
        cleared = None if length is None else _ms(self.snapshot, start + length)
        self.alerts.append(AlertEpisode(rule, f"{rule[:6]}-{self.index}-{n}", _ms(self.snapshot, start), cleared))

    def run(self) -> BookLoan:
        r = self.r
        segment = r.choices(("steady", "wobbly", "distressed", "fraud"), (70, 17, 9, 4))[0]
        term = r.choice((24, 36, 48))
        on_book = r.randint(1, term - 4)
        first_due = add_months(self.snapshot, -on_book + r.randint(0, 1)) - timedelta(days=r.randint(0, 27))
        originated = add_months(first_due, -1)
        principal = int(min(300_000, max(40_000, r.lognormvariate(math.log(120_000), 0.4))) * 100)
        value = int(principal / r.uniform(0.55, 0.95))
        amount = int(principal * (1 + 0.06 * term / 12) / term)
        schedule = tuple(Installment(add_months(first_due, k), amount) for k in range(term))

        fraud_kind, fraud_day, run_up = "", 0.0, 0.0
        if segment == "fraud":
            fraud_kind = r.choice(("flight", "second_lien"))
            fraud_day = r.uniform(-30, 90)
            run_up = r.uniform(20, 75)
        stress_month = on_book + r.randint(-6, 2) if segment == "distressed" else None
        cures = r.random() < 0.35
        payments = self.pay(schedule, segment, stress_month, cures, fraud_day - run_up if fraud_kind else None)

        self.noise(segment)
        if fraud_kind == "flight":
            for _ in range(r.randint(1, 3) if r.random() < 0.6 else 0):
                self.alert("night_door_openings", fraud_day - r.uniform(2, run_up), r.uniform(1, 10))
            for _ in range(r.randint(1, 2) if r.random() < 0.5 else 0):
                self.alert("region_exit", fraud_day - r.uniform(2, run_up), r.uniform(0.5, 5))
            self.alert("power_cut", fraud_day, None)
            self.outages.append(Outage(_ms(self.snapshot, fraud_day + 0.05), None))
            self.bad.append((fraud_day + r.uniform(5, 20), "flight"))
        elif fraud_kind == "second_lien":
            for _ in range(r.randint(1, 3) if r.random() < 0.8 else 0):
                self.alert("stationary_near_market", fraud_day - r.uniform(1, run_up), r.uniform(0.3, 4))
            self.bad.append((fraud_day, "second_lien"))
        if r.random() < 0.015:
            self.theft()

        outcome, outcome_ms = "good", None
        if self.bad:
            day, outcome = min(self.bad)
            outcome_ms = _ms(self.snapshot, day)
        return BookLoan(
            f"SYN-{self.index:06d}", segment, principal, value, originated, schedule, payments,
            tuple(sorted(self.alerts, key=lambda a: (a.raised_ms, a.episode))),
            tuple(self.outages), tuple(self.parked), outcome, outcome_ms,
        )

    def pay(
        self,
        schedule: Sequence[Installment],
        segment: str,
        stress_month: int | None,
        cures: bool,
        fraud_stop_day: float | None,
    ) -> tuple[Payment, ...]:
        """Payments up to the end of the window; records a default when arrears reach 90 days."""
        horizon = self.snapshot + timedelta(days=WINDOW_DAYS)
        stops_paying = fraud_stop_day is not None and self.r.random() < 0.7
        book = _PaymentBook(horizon, segment)
        for k, inst in enumerate(schedule):
            if inst.due_date > horizon:
                break
            due_day = self.day_of(inst.due_date)
            if book.missed and (inst.due_date - book.missed[0].due_date).days >= 90:
                break  # defaulted: recorded below, nothing paid any more
            if stops_paying and fraud_stop_day is not None and due_day >= fraud_stop_day:
                book.missed.append(inst)
                continue
            distressed = stress_month is not None and k >= stress_month and book.behaviour == "distressed"
            if distressed and self._distressed(book, k, inst, cures):
                continue
            if self._missed_run(book, inst):
                continue
            self._pay_installment(book, inst)
        if book.missed:
            default_day = self.day_of(book.missed[0].due_date) + 90
            if default_day <= WINDOW_DAYS:
                self.bad.append((float(default_day), "default"))
        return tuple(book.payments)

    def _distressed(self, book: _PaymentBook, k: int, inst: Installment, cures: bool) -> bool:
        """A distressed month: cure (catch up, become wobbly) or, mostly, miss; False: paid as usual."""
        r = self.r
        if cures and book.cure_month is None:
            book.cure_month = k + r.randint(1, 3)
        if book.cure_month is not None and k >= book.cure_month:
            book.behaviour = "wobbly"
            book.catch_up(inst.due_date + timedelta(days=r.randint(0, 12)), inst.amount_cents)
            return True
        if r.random() < 0.85:
            book.missed.append(inst)
            return True
        return False

    def _missed_run(self, book: _PaymentBook, inst: Installment) -> bool:
        """A wobbly borrower's run of 2-3 missed instalments, caught up at its end; False: none."""
        r = self.r
        if book.behaviour == "wobbly" and not book.missed and r.random() < 0.06:
            book.missed_run = r.randint(2, 3)
        if book.missed_run <= 0:
            return False
        book.missed_run -= 1
        book.missed.append(inst)
        if book.missed_run == 0:
            book.catch_up(inst.due_date + timedelta(days=r.randint(3, 20)))
        return True

    def _pay_installment(self, book: _PaymentBook, inst: Installment) -> None:
        """Pay the instalment (and any arrears), on time or a little late."""
        r = self.r
        late_p = {"steady": 0.035, "wobbly": 0.25}.get(book.behaviour, 0.035)
        if r.random() < late_p:
            delay = r.randint(5, 20) if book.behaviour == "steady" else r.randint(5, 40)
        else:
            delay = r.randint(-5, 2)
        book.catch_up(inst.due_date + timedelta(days=delay), inst.amount_cents)

    def noise(self, segment: str) -> None:
        """Benign events that look like the bad ones."""
        r = self.r
        market_p = {"steady": 0.04, "wobbly": 0.20, "distressed": 0.30}.get(segment, 0.04)
        if r.random() < market_p:
            self.alert("stationary_near_market", r.uniform(-120, 90), None if r.random() < 0.2 else r.uniform(0.5, 45))
        for rule, p, low, high in (
            ("night_door_openings", 0.05, 1, 10),
            ("power_cut", 0.02, 0.05, 2),
            ("towing", 0.01, 0.1, 1),
            ("region_exit", 0.05, 1, 15),
            ("gnss_lost", 0.03, 0.01, 1),
        ):
            if r.random() < p:
                self.alert(rule, r.uniform(-120, 90), r.uniform(low, high))
        if r.random() < 0.05:
            start = r.uniform(-120, 90)
            self.outages.append(Outage(_ms(self.snapshot, start), _ms(self.snapshot, start + r.uniform(2, 30))))
        if r.random() < 0.01:
            self.outages.append(Outage(_ms(self.snapshot, r.uniform(-120, 90)), None))
        if r.random() < 0.06:
            start = r.uniform(-120, 90)
            self.parked.append(ParkedSpell(_ms(self.snapshot, start), _ms(self.snapshot, start + r.uniform(7, 40))))

    def theft(self) -> None:
        r = self.r
        day = r.uniform(-20, 90)
        if r.random() < 0.5:
            self.alert("night_door_openings", day - r.uniform(3, 25), r.uniform(1, 5))
        self.alert("power_cut", day - r.uniform(0, 0.1), None)
        self.alert("towing", day, None)
        if r.random() < 0.7:
            self.outages.append(Outage(_ms(self.snapshot, day + r.uniform(0.02, 0.3)), None))
        if r.random() < 0.8:
            self.bad.append((day + r.uniform(3, 15), "theft"))


def generate_book(
    n_loans: int = 12_000, *, seed: int = DEFAULT_SEED, snapshot: date = DEFAULT_SNAPSHOT
) -> SyntheticBook:
    """Generate ``n_loans`` loans (see the module docstring); the same arguments give the same book."""
    if not 1 <= n_loans <= 1_000_000:
        raise SyntheticBookError(f"n_loans={n_loans} must be in 1..1,000,000")
    return SyntheticBook(tuple(_LoanSim(i, seed, snapshot).run() for i in range(n_loans)), snapshot, seed)
