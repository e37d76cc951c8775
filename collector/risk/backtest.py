"""Backtest: the v2 score against the v1 rule table on a labelled book, in the same run.

How this works
--------------
A book (the seeded synthetic one, or a lender's own CSV export plus an outcomes file) is
read **at the snapshot date** the way the collector reads its database: repayment facts
from the schedule and the payments made by then, the alert episodes open then, the device
status then (silent during an outage), the movement then. Both engines see the same
:class:`~collector.risk.engine.RiskInput`. Loans already lost or 90+ days past due at the
snapshot are left out (nothing left to predict).

The label is a bad outcome (default, theft, flight, second lien) in the 90 days after the
snapshot. The synthetic book is split 70/30 into train and test by a seeded permutation;
the model is fitted on train (:func:`fit_from_book`, which is what ``fit`` writes to the
model file) and every figure is computed on test:

* **AUC** of the score (v1: its level, ties count half);
* **precision in the top 1 % / 5 %** by expected loss (v1 has none: level, then
  outstanding principal);
* **bad outcomes flagged high >= 30 days ahead**: share of the bad outcomes whose loan was
  at ``high`` or above (v2: on either axis) at the snapshot and whose outcome came at least
  30 days later;
* **alert volume**: loans above ``normal`` per 1,000 loans (every level change off
  ``normal`` is a notification to the team: a webhook and an SSE event);
* **false-high rate on cured borrowers**: among borrowers with lates in the last 12 months
  and nothing overdue at the snapshot whose outcome was good, the share at high or above.

Commands (the command line is :mod:`collector.cli.risk`, which reads the files)::

    lienwatch risk fit --out collector/risk/models/risk-v2-2026.12.1.json
    lienwatch risk backtest
    lienwatch risk backtest --book loans.csv --outcomes outcomes.csv --as-of 2026-09-01
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from ..errors import CollectorError
from .engine import DeviceStatus, Movement, OpenAlert, RiskInput, RiskLevel, assess
from .features import FEATURE_NAMES, Exposure, FeatureConfig, exposure_of, feature_matrix, feature_row
from .model import DEFAULT_MODEL_VERSION, AxisModel, RiskModel, default_model, fit_logistic_signed
from .repayments import Installment, Payment, RepaymentFacts, repayment_facts
from .score import score_matrix
from .synthetic_book import (
    BAD_OUTCOMES,
    DEFAULT_SEED,
    WINDOW_DAYS,
    BookLoan,
    SyntheticBook,
    generate_book,
)

__all__ = [
    "BacktestError",
    "Evaluated",
    "Figures",
    "LoanTerms",
    "auc",
    "backtest_real_book",
    "evaluate_book",
    "evaluate_inputs",
    "figures",
    "fit_from_book",
    "inputs_at",
    "markdown_table",
    "parse_day",
    "read_outcomes",
    "read_real_book",
    "run_backtest",
    "whole_book_report",
]

DAY_MS = 86_400_000
TRAIN_SHARE = 0.7
DEFAULT_LOANS = 12_000
L2 = 2.0
THRESHOLDS = {"credit": (0.1, 0.25, 0.6), "collateral": (0.1, 0.2, 0.5)}
_REPAYMENT_RISK = ("dpd_1_29", "dpd_30_59", "dpd_60_89", "dpd_90_plus", "rolled_forward", "lates_decayed",
                   "late_streak_active", "arrears_installments")
_VEHICLE_RISK = ("market", "power_cut", "towing", "night_doors", "region_exit", "gnss_loss", "offline", "stationary",
                 "theft_signature", "night_doors_relocation", "offline_while_overdue", "market_while_overdue",
                 "night_doors_late_streak", "gnss_loss_while_overdue")
#: Weights that may not be negative: repayment trouble on the credit axis, repayment trouble and
#: vehicle signals on the collateral axis (a vehicle signal may lower the credit probability: a
#: stolen car is a collateral loss, not a default).
NONNEGATIVE = {"credit": _REPAYMENT_RISK, "collateral": _REPAYMENT_RISK + _VEHICLE_RISK}
COLLATERAL_OUTCOMES = frozenset({"theft", "flight", "second_lien"})
Array = npt.NDArray[np.float64]


class BacktestError(CollectorError):
    """A book, outcomes file or argument the backtest cannot use (the message says which)."""


# ------------------------------------------------------------------ reading a book at a date


def inputs_at(loan: BookLoan, as_of_ms: int) -> tuple[RiskInput, Exposure]:
    """What the collector would know about ``loan`` at ``as_of_ms`` (nothing later)."""
    as_of = datetime.fromtimestamp(as_of_ms / 1000, tz=UTC).date()
    facts = repayment_facts(loan.schedule, loan.payments, as_of)
    alerts = tuple(
        OpenAlert(a.rule, "warning", a.raised_ms, a.episode)
        for a in loan.alerts
        if a.raised_ms <= as_of_ms and (a.cleared_ms is None or a.cleared_ms > as_of_ms)
    )
    silent = next(
        (o for o in loan.outages if o.start_ms <= as_of_ms and (o.end_ms is None or o.end_ms > as_of_ms)), None
    )
    if silent is not None:
        device = DeviceStatus(online=False, last_seen_ms=silent.start_ms, offline_since_ms=silent.start_ms)
        last_fix = silent.start_ms
    else:
        device = DeviceStatus(online=True, last_seen_ms=as_of_ms)
        last_fix = as_of_ms
    spell = next((p for p in loan.parked if p.start_ms <= last_fix < p.end_ms), None)
    last_moved = spell.start_ms if spell is not None else max(0, last_fix - 3 * 3_600_000)
    movement = Movement(last_moved_ms=last_moved, last_fix_ms=last_fix)
    inp = RiskInput(loan.loan_id, as_of_ms, facts, alerts, device, movement)
    return inp, exposure_of(loan.principal_cents, facts, loan.vehicle_value_on(as_of))


@dataclass(frozen=True, slots=True)
class Evaluated:
    """A book read at its snapshot: the population, labels, features and the v1 answers.

    Attributes:
        loan_ids: loans in the population (not lost or 90+ DPD at the snapshot).
        x: v2 feature matrix.
        outstanding: outstanding principal, cents.
        y_credit / y_collateral: bad outcome of that kind within 90 days (0/1).
        lead_days: days from the snapshot to the outcome (NaN when good).
        cured: lates in the last 12 months and nothing overdue at the snapshot.
        v1_level: the rule table's level (0..3).
    """

    loan_ids: tuple[str, ...]
    x: Array
    outstanding: Array
    y_credit: Array
    y_collateral: Array
    lead_days: Array
    cured: npt.NDArray[np.bool_]
    v1_level: npt.NDArray[np.int64]

    @property
    def y(self) -> Array:
        """Bad outcome of either kind."""
        return np.maximum(self.y_credit, self.y_collateral)

    def subset(self, index: npt.NDArray[np.int64]) -> Evaluated:
        """The rows at ``index``."""
        return Evaluated(
            tuple(self.loan_ids[i] for i in index), self.x[index], self.outstanding[index], self.y_credit[index],
            self.y_collateral[index], self.lead_days[index], self.cured[index], self.v1_level[index],
        )


def _cured(facts: RepaymentFacts) -> bool:
    year_ago = facts.as_of.toordinal() - 365
    return not facts.overdue and any(s.late and s.due_date.toordinal() > year_ago for s in facts.installments)


#: One loan read at the snapshot: its id, the engines' input, its exposure, (outcome, outcome ms).
BookItem = tuple[str, RiskInput, Exposure, tuple[str, int | None]]


def evaluate_inputs(items: Iterable[BookItem], as_of_ms: int) -> Evaluated:
    """Keep the population of loans read at ``as_of_ms``, label it and run v1.

    Loans lost before the snapshot or already 90+ days past due are left out.
    """
    config = FeatureConfig()
    ids: list[str] = []
    rows = []
    outstanding: list[int] = []
    y_credit: list[float] = []
    y_collateral: list[float] = []
    lead: list[float] = []
    cured: list[bool] = []
    v1: list[int] = []
    for loan_id, inp, exposure, (outcome, outcome_ms) in items:
        if outcome in BAD_OUTCOMES and outcome_ms is not None and outcome_ms <= as_of_ms:
            continue  # already lost
        if inp.facts.overdue and inp.facts.days_past_due >= 90:
            continue  # already in default
        bad = outcome in BAD_OUTCOMES and outcome_ms is not None and outcome_ms <= as_of_ms + WINDOW_DAYS * DAY_MS
        ids.append(loan_id)
        rows.append(feature_row(inp, exposure, config))
        outstanding.append(exposure.outstanding_cents)
        y_credit.append(float(bad and outcome == "default"))
        y_collateral.append(float(bad and outcome in COLLATERAL_OUTCOMES))
        lead.append((outcome_ms - as_of_ms) / DAY_MS if bad and outcome_ms is not None else float("nan"))
        cured.append(_cured(inp.facts))
        v1.append(int(assess(inp).level))
    return Evaluated(
        tuple(ids), feature_matrix(rows), np.array(outstanding, dtype=np.float64), np.array(y_credit),
        np.array(y_collateral), np.array(lead), np.array(cured, dtype=bool), np.array(v1, dtype=np.int64),
    )


def evaluate_book(
    loans: Sequence[BookLoan], as_of_ms: int, outcomes: Mapping[str, tuple[str, int | None]] | None = None
) -> Evaluated:
    """Read every loan at ``as_of_ms``, keep the population, label it and run v1.

    ``outcomes`` (loan id -> (outcome, outcome ms)) overrides the loans' own outcome fields.
    """

    def items() -> Iterator[BookItem]:
        for loan in loans:
            outcome = outcomes.get(loan.loan_id, ("good", None)) if outcomes is not None else (
                loan.outcome, loan.outcome_ms
            )
            inp, exposure = inputs_at(loan, as_of_ms)
            yield loan.loan_id, inp, exposure, outcome

    return evaluate_inputs(items(), as_of_ms)


# ------------------------------------------------------------------ figures


def auc(score: Array, y: Array) -> float:
    """Area under the ROC curve (Mann-Whitney, ties count half); NaN without both classes."""
    positives = int(y.sum())
    negatives = len(y) - positives
    if positives == 0 or negatives == 0:
        return float("nan")
    order = np.argsort(score, kind="stable")
    ranks = np.empty(len(score))
    sorted_scores = score[order]
    i = 0
    while i < len(score):
        j = i
        while j + 1 < len(score) and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return float((ranks[y == 1].sum() - positives * (positives + 1) / 2) / (positives * negatives))


@dataclass(frozen=True, slots=True)
class Figures:
    """The backtest figures of one engine on one population."""

    loans: int
    bad: int
    auc: float
    precision_top1: float
    precision_top5: float
    flagged_ahead: float
    alerts_per_1000: float
    false_high_cured: float

    def as_dict(self) -> dict[str, float | int]:
        """JSON-ready form."""
        return {
            "loans": self.loans,
            "bad": self.bad,
            "auc": round(self.auc, 4),
            "precision_top1": round(self.precision_top1, 4),
            "precision_top5": round(self.precision_top5, 4),
            "flagged_ahead_30d": round(self.flagged_ahead, 4),
            "alerts_per_1000": round(self.alerts_per_1000, 2),
            "false_high_cured": round(self.false_high_cured, 4),
        }


def figures(
    ev: Evaluated, score: Array, ranking: Array, high: npt.NDArray[np.bool_], alerted: npt.NDArray[np.bool_]
) -> Figures:
    """The figures for one engine: ``score`` for the AUC, ``ranking`` (expected loss) for the
    top-k precision (ties broken by book order), ``high`` = at high or above, ``alerted`` =
    above normal."""
    y = ev.y
    n = len(y)
    order = np.lexsort((np.arange(n), -ranking))

    def precision(share: float) -> float:
        k = max(1, round(n * share))
        return float(y[order[:k]].mean()) if n else float("nan")

    bad = y == 1
    ahead = bad & high & (np.nan_to_num(ev.lead_days, nan=-1.0) >= 30)
    good_cured = ev.cured & ~bad
    return Figures(
        n,
        int(bad.sum()),
        auc(score, y),
        precision(0.01),
        precision(0.05),
        float(ahead.sum() / bad.sum()) if bad.any() else float("nan"),
        float(alerted.sum() * 1000 / n) if n else float("nan"),
        float((high & good_cured).sum() / good_cured.sum()) if good_cured.any() else float("nan"),
    )


def compare(ev: Evaluated, model: RiskModel) -> dict[str, Figures]:
    """v1 and v2 figures on the same population."""
    scores = score_matrix(ev.x, ev.outstanding, model)
    v1_level = ev.v1_level.astype(np.float64)
    # v1 has no expected loss: it ranks by level, then by outstanding principal.
    v1_rank = v1_level * 1e15 + ev.outstanding
    return {
        "v1": figures(ev, v1_level, v1_rank, ev.v1_level >= int(RiskLevel.HIGH), ev.v1_level > 0),
        "v2": figures(
            ev, scores.score, scores.expected_loss_cents, scores.level >= int(RiskLevel.HIGH), scores.level > 0
        ),
    }


# ------------------------------------------------------------------ fitting


def split(n: int, seed: int) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Seeded 70/30 permutation split of ``range(n)`` into (train, test)."""
    order = np.random.default_rng(seed).permutation(n)
    cut = round(n * TRAIN_SHARE)
    return np.sort(order[:cut]), np.sort(order[cut:])


def fit_model(train: Evaluated, *, version: str, training: Mapping[str, Any]) -> RiskModel:
    """Fit both axes on ``train`` with the documented penalty and thresholds."""
    axes = {}
    for name, y in (("credit", train.y_credit), ("collateral", train.y_collateral)):
        positive = [FEATURE_NAMES.index(f) for f in NONNEGATIVE[name]]
        intercept, weights = fit_logistic_signed(train.x, y, nonnegative=positive, l2=L2)
        axes[name] = AxisModel(intercept, weights, THRESHOLDS[name])
    info = dict(training) | {
        "l2": L2,
        "nonnegative": {axis: list(features) for axis, features in NONNEGATIVE.items()},
        "train_loans": len(train.loan_ids),
        "train_bad_credit": int(train.y_credit.sum()),
        "train_bad_collateral": int(train.y_collateral.sum()),
    }
    return RiskModel(version, axes["credit"], axes["collateral"], training=info)


def fit_from_book(book: SyntheticBook, evaluated: Evaluated, *, version: str = DEFAULT_MODEL_VERSION) -> RiskModel:
    """Fit on the train split of a synthetic book (what ``fit`` writes to the model file)."""
    train, _ = split(len(evaluated.loan_ids), book.seed)
    return fit_model(
        evaluated.subset(train),
        version=version,
        training={
            "command": f"lienwatch risk fit --loans {len(book.loans)} --seed {book.seed}",
            "book": "collector.risk.synthetic_book",
            "loans": len(book.loans),
            "seed": book.seed,
            "snapshot": book.snapshot.isoformat(),
            "split": f"{TRAIN_SHARE:.0%} train by seeded permutation",
        },
    )


# ------------------------------------------------------------------ a lender's own book


def parse_day(text: str, what: str) -> int:
    try:
        day = date.fromisoformat(text.strip()[:10])
    except ValueError:
        raise BacktestError(f"{what} {text!r:.40} is not an ISO-8601 date") from None
    return int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp() * 1000)


class LoanTerms(Protocol):
    """What the backtest reads of a lender's loan (a parsed loan CSV row has it)."""

    @property
    def loan_id(self) -> str: ...

    @property
    def principal_cents(self) -> int: ...

    @property
    def schedule(self) -> tuple[Installment, ...]: ...

    @property
    def payments(self) -> tuple[Payment, ...]: ...


def read_real_book(
    rows: Sequence[LoanTerms], outcomes_csv: str
) -> tuple[list[BookLoan], dict[str, tuple[str, int | None]]]:
    """Loans parsed from the CSV layout of docs/risk.md and an outcomes file (``loan_id,outcome,outcome_date``).

    Raises:
        BacktestError: unknown outcomes, bad dates.
    """
    loans = [
        BookLoan(row.loan_id, "", row.principal_cents, None, row.schedule[0].due_date, row.schedule, row.payments,
                 (), (), (), "good", None)
        for row in rows
    ]
    return loans, read_outcomes(outcomes_csv)


def read_outcomes(outcomes_csv: str) -> dict[str, tuple[str, int | None]]:
    """An outcomes file (``loan_id,outcome,outcome_date``): loan id -> (outcome, outcome ms).

    Raises:
        BacktestError: unknown outcomes, bad dates.
    """
    outcomes: dict[str, tuple[str, int | None]] = {}
    for n, record in enumerate(csv.DictReader(io.StringIO(outcomes_csv)), 2):
        outcome = (record.get("outcome") or "").strip()
        if outcome not in ("good", *BAD_OUTCOMES):
            raise BacktestError(f"outcomes line {n}: outcome {outcome!r:.40} is not good/{'/'.join(BAD_OUTCOMES)}")
        when = (record.get("outcome_date") or "").strip()
        outcomes[(record.get("loan_id") or "").strip()] = (
            outcome, parse_day(when, f"outcomes line {n} outcome_date") if when else None
        )
    return outcomes


def backtest_real_book(
    loans: Sequence[BookLoan],
    outcomes: Mapping[str, tuple[str, int | None]],
    as_of: str,
    *,
    file: str,
    model: RiskModel | None = None,
) -> dict[str, Any]:
    """Report v1 and v2 on every loan of a lender's book at ``as_of`` (ISO-8601 date).

    Raises:
        BacktestError: ``as_of`` is not a date.
    """
    ev = evaluate_book(loans, parse_day(as_of, "--as-of"), outcomes)
    return whole_book_report(ev, {"file": file, "as_of": as_of}, model)


def whole_book_report(ev: Evaluated, book: Mapping[str, Any], model: RiskModel | None = None) -> dict[str, Any]:
    """v1 and v2 figures over every loan of an evaluated book (no split: the model was not fitted on it)."""
    model = model or default_model()
    result = compare(ev, model)
    return {
        "book": {**book, "population": len(ev.loan_ids)},
        "model": model.version,
        "split": "all",
        "v1": result["v1"].as_dict(),
        "v2": result["v2"].as_dict(),
    }


# ------------------------------------------------------------------ the synthetic book


def run_backtest(
    *, loans: int = DEFAULT_LOANS, seed: int = DEFAULT_SEED, model: RiskModel | None = None
) -> dict[str, Any]:
    """Generate the book, split, and report v1 and v2 on the test split."""
    book = generate_book(loans, seed=seed)
    ev = evaluate_book(book.loans, book.snapshot_ms)
    _, test = split(len(ev.loan_ids), seed)
    model = model or default_model()
    result = compare(ev.subset(test), model)
    return {
        "book": {"loans": loans, "seed": seed, "snapshot": book.snapshot.isoformat(), "population": len(ev.loan_ids)},
        "model": model.version,
        "split": "test",
        "v1": result["v1"].as_dict(),
        "v2": result["v2"].as_dict(),
    }


ROWS = (
    ("auc", "AUC (bad outcome within 90 days)", True),
    ("precision_top1", "precision, top 1 % by expected loss", True),
    ("precision_top5", "precision, top 5 % by expected loss", True),
    ("flagged_ahead_30d", "bad outcomes flagged high >= 30 days ahead", True),
    ("alerts_per_1000", "alert volume (loans above normal) per 1,000 loans", False),
    ("false_high_cured", "false-high rate on cured borrowers", False),
)


def markdown_table(report: Mapping[str, Any]) -> str:
    """The report as the Markdown table of docs/risk.md."""
    lines = ["| figure | v1 rule table | v2 score | better |", "|---|---|---|---|"]
    for key, label, higher in ROWS:
        a, b = report["v1"][key], report["v2"][key]
        better = b > a if higher else b < a
        lines.append(f"| {label} | {a} | {b} | {'v2' if better else 'v1 or tie'} |")
    population = "loans in the test split" if report.get("split") == "test" else "loans evaluated"
    lines.append(f"| {population} (bad outcomes) | {report['v1']['loans']} ({report['v1']['bad']}) | "
                 f"{report['v2']['loans']} ({report['v2']['bad']}) | |")
    return "\n".join(lines)
