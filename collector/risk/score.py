"""The v2 risk score: features -> two axes (credit, collateral), expected loss, tier, reasons.

How this works
--------------
Pure and vectorised. :func:`score_matrix` takes the ``(n, k)`` feature matrix of
:mod:`collector.risk.features` and the outstanding principal of each loan and computes,
with numpy over all loans at once:

* per axis the probability of a bad outcome of that kind within 90 days (logistic model of
  :mod:`collector.risk.model`); the loan's **score** is the probability of either,
  ``1 - (1 - p_credit) * (1 - p_collateral)``;
* the **expected loss** ``p_credit * LGD_credit(LTV) * outstanding + p_collateral *
  LGD_collateral * outstanding`` (cents), which ranks the worklist;
* per axis a **level** from the model's thresholds on that axis's probability, raised to
  the floor of any **hard rule** that matches (:data:`HARD_RULES`: a theft signature is
  critical on the collateral axis whatever the score).

:func:`explain_all` turns the rows into :class:`ScoreAssessment` values: every non-zero feature is a
reason with its contribution to the axis log-odds (``weight * value``) and in probability
points (how much lower the axis probability would be without it,
``p - sigmoid(logit - contribution)``); hard rules come first. Each axis has its own next
steps: credit (``reminder``, ``call_borrower``, ``on_site_check``) and collateral
(``verify_location``, ``on_site_check``, ``notify_recovery_and_insurer``).

The customer **tier** (:func:`tier_of`) is read from the repayment history alone.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from enum import StrEnum
from typing import Any

import numpy as np
import numpy.typing as npt

from .engine import RiskInput, RiskLevel
from .features import (
    FEATURE_NAMES,
    FEATURE_SUMMARIES,
    Exposure,
    FeatureConfig,
    FeatureRow,
    feature_matrix,
    feature_row,
)
from .model import AXES, RiskModel, default_model
from .repayments import RepaymentFacts

__all__ = [
    "COLLATERAL_STEPS",
    "CREDIT_STEPS",
    "HARD_RULES",
    "MONITORING",
    "AxisResult",
    "BatchScores",
    "HardRule",
    "MonitoringPolicy",
    "ScoreAssessment",
    "ScoreReason",
    "Tier",
    "assess_many",
    "assess_v2",
    "explain_all",
    "score_matrix",
    "tier_of",
]

Array = npt.NDArray[np.float64]
_COL = {name: i for i, name in enumerate(FEATURE_NAMES)}

#: Next step on the credit axis by level (normal, watch, high, critical).
CREDIT_STEPS = ("monitor", "reminder", "call_borrower", "on_site_check")
#: Next step on the collateral axis by level (normal, watch, high, critical).
COLLATERAL_STEPS = ("monitor", "verify_location", "on_site_check", "notify_recovery_and_insurer")
#: Only contributions at least this large (log-odds) become reasons.
MIN_CONTRIBUTION = 0.01


class Tier(StrEnum):
    """Customer tier from the repayment history (drives the monitoring policy)."""

    ON_TIME_12M = "on_time_12m"
    MINOR_LATES_CURED = "minor_lates_cured"
    RISK = "risk"
    NEW = "new"


@dataclass(frozen=True, slots=True)
class MonitoringPolicy:
    """How closely a tier is watched (what a per-tier reporting policy would push to the device).

    Attributes:
        fix_interval_s: seconds between uploaded fixes while driving.
        batch_interval_s: seconds between batches.
        review_days: days between routine reviews by the risk team.
    """

    fix_interval_s: int
    batch_interval_s: int
    review_days: int

    def as_dict(self) -> dict[str, int]:
        """JSON-ready form."""
        return {
            "fix_interval_s": self.fix_interval_s,
            "batch_interval_s": self.batch_interval_s,
            "review_days": self.review_days,
        }


MONITORING: Mapping[Tier, MonitoringPolicy] = {
    Tier.ON_TIME_12M: MonitoringPolicy(300, 3600, 180),
    Tier.NEW: MonitoringPolicy(60, 600, 30),
    Tier.MINOR_LATES_CURED: MonitoringPolicy(60, 600, 30),
    Tier.RISK: MonitoringPolicy(10, 60, 7),
}


def tier_of(facts: RepaymentFacts, *, cure_days: int = 15) -> Tier:
    """The customer tier on ``facts.as_of``.

    * ``on_time_12m``: at least 12 instalments assessable and none of those due in the last
      12 months late, nothing overdue;
    * ``minor_lates_cured``: lates in the last 12 months, each covered within ``cure_days``
      of its due date, nothing overdue now;
    * ``new``: fewer than 12 instalments assessable, none late, nothing overdue;
    * ``risk``: anything else (a late that took longer to cure, or arrears now).
    """
    if facts.overdue:
        return Tier.RISK
    year_ago = facts.as_of - timedelta(days=365)
    assessed = [s for s in facts.installments if s.assessable]
    recent_lates = [s for s in assessed if s.late and s.due_date > year_ago]
    if not recent_lates:
        return Tier.ON_TIME_12M if len(assessed) >= 12 else Tier.NEW
    quick = all(
        s.covered_on is not None and s.covered_on <= s.due_date + timedelta(days=cure_days) for s in recent_lates
    )
    return Tier.MINOR_LATES_CURED if quick else Tier.RISK


@dataclass(frozen=True, slots=True)
class HardRule:
    """A rule that sets a floor under one axis's level whatever the score."""

    code: str
    axis: str
    level: RiskLevel
    summary: str
    condition: Callable[[Array], npt.NDArray[np.bool_]]


def _col(name: str) -> Callable[[Array], Array]:
    index = _COL[name]
    return lambda x: x[:, index]


def _overdue(x: Array) -> npt.NDArray[np.bool_]:
    return np.asarray(x[:, _COL["arrears_installments"]] > 0)


_pc, _tow, _gnss, _nd = _col("power_cut"), _col("towing"), _col("gnss_loss"), _col("night_doors_late_streak")
_dpd90 = _col("dpd_90_plus")
C, H = RiskLevel.CRITICAL, RiskLevel.HIGH

#: The hard rules (v1's critical rows on the collateral axis, plus the combinations of issue 15).
HARD_RULES: tuple[HardRule, ...] = (
    HardRule("theft_signature", "collateral", C, "power cut and towing both open, whatever the payments",
             lambda x: (_pc(x) > 0) & (_tow(x) > 0)),
    HardRule("power_cut_while_overdue", "collateral", C, "box unplugged / main power cut while overdue",
             lambda x: (_pc(x) > 0) & _overdue(x)),
    HardRule("towing_while_overdue", "collateral", C, "towed while overdue", lambda x: (_tow(x) > 0) & _overdue(x)),
    HardRule("gnss_jamming_while_overdue", "collateral", C, "GNSS jammed or lost while moving, while overdue",
             lambda x: (_gnss(x) > 0) & _overdue(x)),
    HardRule("night_doors_late_streak", "collateral", H,
             "night door openings on a loan with late_streak consecutive lates, still overdue", lambda x: _nd(x) > 0),
    HardRule("severely_past_due", "credit", C, "90 days past due or more", lambda x: _dpd90(x) > 0),
)


@dataclass(frozen=True, slots=True)
class BatchScores:
    """Scores of many loans (one entry per row of the feature matrix).

    Attributes:
        probability: axis name -> probability of a bad outcome of that kind within 90 days.
        score: probability of a bad outcome of either kind.
        expected_loss_cents: expected loss per loan.
        levels: axis name -> level (0..3) after hard rules.
        hard: ``(n, len(HARD_RULES))`` which hard rules matched.
        logits: axis name -> log-odds.
    """

    probability: Mapping[str, Array]
    score: Array
    expected_loss_cents: Array
    levels: Mapping[str, npt.NDArray[np.int64]]
    hard: npt.NDArray[np.bool_]
    logits: Mapping[str, Array]

    @property
    def level(self) -> npt.NDArray[np.int64]:
        """The most severe of the two axes."""
        return np.maximum(self.levels["credit"], self.levels["collateral"])


def score_matrix(x: Array, outstanding_cents: Array, model: RiskModel) -> BatchScores:
    """Score every row of ``x`` (see the module docstring)."""
    x = np.asarray(x, dtype=np.float64)
    outstanding = np.asarray(outstanding_cents, dtype=np.float64)
    hard = np.column_stack([rule.condition(x) for rule in HARD_RULES]) if len(x) else np.zeros(
        (0, len(HARD_RULES)), dtype=bool
    )
    probability: dict[str, Array] = {}
    logits: dict[str, Array] = {}
    levels: dict[str, npt.NDArray[np.int64]] = {}
    for name in AXES:
        axis = model.axis(name)
        logit = axis.intercept + x @ axis.weights
        logits[name] = logit
        p = 0.5 * (1.0 + np.tanh(0.5 * logit))
        probability[name] = p
        level = np.searchsorted(np.asarray(axis.thresholds), p, side="right").astype(np.int64)
        for i, rule in enumerate(HARD_RULES):
            if rule.axis == name:
                level = np.where(hard[:, i], np.maximum(level, int(rule.level)), level)
        levels[name] = level
    ltv = x[:, _COL["ltv"]]
    loss = model.loss
    expected = outstanding * (
        probability["credit"] * loss.credit_lgd(ltv) + probability["collateral"] * loss.collateral_lgd
    )
    score = 1.0 - (1.0 - probability["credit"]) * (1.0 - probability["collateral"])
    return BatchScores(probability, score, expected, levels, hard, logits)


@dataclass(frozen=True, slots=True)
class ScoreReason:
    """One reason on one axis, with what it contributed.

    Attributes:
        code: feature name or hard-rule code.
        axis: ``credit`` or ``collateral``.
        kind: ``feature`` (a fitted contribution) or ``rule`` (a hard rule's level floor).
        summary: what it means, in words.
        value: the feature's value (1.0 for a rule).
        log_odds: contribution to the axis log-odds (0 for a rule).
        pd_points: how much lower the axis probability would be without it (0 for a rule).
        level: the level floor of a rule (None for a feature).
        alert_episodes: the device alert episodes it rests on.
    """

    code: str
    axis: str
    kind: str
    summary: str
    value: float
    log_odds: float
    pd_points: float
    level: RiskLevel | None = None
    alert_episodes: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "code": self.code,
            "axis": self.axis,
            "kind": self.kind,
            "summary": self.summary,
            "value": round(self.value, 4),
            "log_odds": round(self.log_odds, 4),
            "pd_points": round(self.pd_points, 4),
            "level": self.level.label if self.level is not None else None,
            "alert_episodes": list(self.alert_episodes),
        }


@dataclass(frozen=True, slots=True)
class AxisResult:
    """One axis of a loan's assessment."""

    axis: str
    probability: float
    level: RiskLevel
    next_step: str
    reasons: tuple[ScoreReason, ...]

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "probability": round(self.probability, 6),
            "level": self.level.label,
            "next_step": self.next_step,
            "reasons": [r.as_dict() for r in self.reasons],
        }


@dataclass(frozen=True, slots=True)
class ScoreAssessment:
    """The v2 answer for one loan at one time."""

    loan_id: str
    evaluated_ms: int
    model_version: str
    score: float
    expected_loss_cents: int
    outstanding_cents: int
    credit: AxisResult
    collateral: AxisResult
    tier: Tier
    facts: Mapping[str, Any] = field(default_factory=dict)

    @property
    def level(self) -> RiskLevel:
        """The most severe of the two axes."""
        return max(self.credit.level, self.collateral.level)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form (stored in the loan's risk state and shown by the API)."""
        return {
            "loan_id": self.loan_id,
            "evaluated_ms": self.evaluated_ms,
            "model_version": self.model_version,
            "score": round(self.score, 6),
            "expected_loss_cents": self.expected_loss_cents,
            "outstanding_cents": self.outstanding_cents,
            "level": self.level.label,
            "credit": self.credit.as_dict(),
            "collateral": self.collateral.as_dict(),
            "tier": self.tier.value,
            "monitoring": MONITORING[self.tier].as_dict(),
        }


def explain_all(
    scores: BatchScores,
    x: Array,
    rows: Sequence[FeatureRow],
    model: RiskModel,
    *,
    loan_ids: Sequence[str],
    evaluated_ms: Sequence[int],
    outstanding_cents: Sequence[int],
    tiers: Sequence[Tier],
) -> list[ScoreAssessment]:
    """The :class:`ScoreAssessment` of every row of a :func:`score_matrix` result.

    The contributions, the leave-one-out probabilities and the reason order are computed
    for all rows at once; only building the reason values is per loan.
    """
    n = len(rows)
    reasons: dict[str, list[list[ScoreReason]]] = {}
    for name in AXES:
        axis = model.axis(name)
        per_loan: list[list[ScoreReason]] = [[] for _ in range(n)]
        for i, rule in enumerate(HARD_RULES):
            if rule.axis != name:
                continue
            for loan in np.flatnonzero(scores.hard[:, i]).tolist():
                per_loan[loan].append(
                    ScoreReason(rule.code, name, "rule", rule.summary, 1.0, 0.0, 0.0, rule.level,
                                _rule_episodes(rule.code, rows[loan]))
                )
        contributions = x * axis.weights
        without = 0.5 * (1.0 + np.tanh(0.5 * (scores.logits[name][:, None] - contributions)))
        points = scores.probability[name][:, None] - without
        loans, features = np.nonzero(np.abs(contributions) >= MIN_CONTRIBUTION)
        order = np.lexsort((features, -np.abs(contributions[loans, features]), loans))
        loans, features = loans[order], features[order]
        for loan, j, c, value, pts in zip(
            loans.tolist(), features.tolist(), contributions[loans, features].tolist(),
            x[loans, features].tolist(), points[loans, features].tolist(), strict=True,
        ):
            feature = FEATURE_NAMES[j]
            per_loan[loan].append(
                ScoreReason(feature, name, "feature", FEATURE_SUMMARIES[feature], value, c, pts, None,
                            tuple(rows[loan].episodes.get(feature, ())))
            )
        reasons[name] = per_loan
    probability = {name: scores.probability[name].tolist() for name in AXES}
    levels = {name: scores.levels[name].tolist() for name in AXES}
    score = scores.score.tolist()
    expected = scores.expected_loss_cents.tolist()
    out = []
    for i in range(n):
        credit_level = RiskLevel(levels["credit"][i])
        collateral_level = RiskLevel(levels["collateral"][i])
        out.append(
            ScoreAssessment(
                loan_ids[i],
                evaluated_ms[i],
                model.version,
                score[i],
                round(expected[i]),
                outstanding_cents[i],
                AxisResult("credit", probability["credit"][i], credit_level, CREDIT_STEPS[credit_level],
                           tuple(reasons["credit"][i])),
                AxisResult("collateral", probability["collateral"][i], collateral_level,
                           COLLATERAL_STEPS[collateral_level], tuple(reasons["collateral"][i])),
                tiers[i],
            )
        )
    return out


def _rule_episodes(code: str, row: FeatureRow) -> tuple[str, ...]:
    parts = {
        "theft_signature": ("power_cut", "towing"),
        "power_cut_while_overdue": ("power_cut",),
        "towing_while_overdue": ("towing",),
        "gnss_jamming_while_overdue": ("gnss_loss",),
        "night_doors_late_streak": ("night_doors",),
    }.get(code, ())
    return tuple(e for part in parts for e in row.episodes.get(part, ()))


def assess_many(
    inputs: Sequence[RiskInput],
    exposures: Sequence[Exposure],
    model: RiskModel | None = None,
    config: FeatureConfig | None = None,
) -> list[ScoreAssessment]:
    """The batch path: features per loan, one vectorised scoring, then the explanations."""
    model = model or default_model()
    config = config or FeatureConfig()
    rows = [feature_row(inp, exp, config) for inp, exp in zip(inputs, exposures, strict=True)]
    x = feature_matrix(rows)
    outstanding = [e.outstanding_cents for e in exposures]
    scores = score_matrix(x, np.array(outstanding, dtype=np.float64), model)
    return explain_all(
        scores, x, rows, model,
        loan_ids=[i.loan_id for i in inputs],
        evaluated_ms=[i.evaluated_ms for i in inputs],
        outstanding_cents=outstanding,
        tiers=[tier_of(i.facts) for i in inputs],
    )


def assess_v2(
    inp: RiskInput, exposure: Exposure, model: RiskModel | None = None, config: FeatureConfig | None = None
) -> ScoreAssessment:
    """Score one loan (the batch path with one row)."""
    return assess_many([inp], [exposure], model, config)[0]
