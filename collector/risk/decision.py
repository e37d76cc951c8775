"""The loan's decision: which engine sets the stored level, next step, reasons, events and webhooks.

How this works
--------------
Pure. ``[risk] model`` (:data:`MODELS`) names the authoritative engine: ``v2`` (the default,
the explained score of :mod:`collector.risk.score`) or ``v1`` (the rule table of
:mod:`collector.risk.engine`, kept as the documented fallback). Both are computed at every
reassessment; :func:`decide` returns the :class:`~collector.risk.engine.RiskAssessment` of
the chosen one, which is what :func:`collector.risk.assessment.reassess_loan` stores as the
loan's ``level``, ``next_step`` and ``reasons`` and turns into risk events and webhooks.

From a v2 :class:`~collector.risk.score.ScoreAssessment` (:func:`v2_decision`):

* **level** = the more severe of the two axes (credit, collateral);
* **next step** = the more urgent of the two axes' steps on the one scale the loan keeps
  (:class:`~collector.risk.engine.NextStep`): credit ``reminder`` / ``call_borrower`` /
  ``on_site_check`` are ``reminder`` / ``call`` / ``on_site_check``; collateral
  ``verify_location`` / ``on_site_check`` / ``notify_recovery_and_insurer`` are ``call`` /
  ``on_site_check`` / ``recovery``. Each axis's own step stays in ``credit_next_step`` and
  ``collateral_next_step``;
* **reasons** = for each axis above ``normal``, its hard rules and then every feature that
  raised that axis (positive contribution), largest first. Each reason keeps the v1 keys
  (``code``, ``level``, ``next_step``, ``alert_episode``, ``evidence``) and adds its
  ``explanation``: ``axis``, ``kind`` (``rule``/``feature``), ``summary``, ``value``,
  ``log_odds`` and ``pd_points`` (its contribution). An axis at ``normal`` has no reasons,
  as a v1 loan at ``normal`` has none; the whole explanation (every contribution, both
  signs) stays in the stored score (``risk_states.assessment``).

Signals the v2 model has no feature for yet (:data:`V1_FLOOR_CODES`: relocation, traction
battery disconnect and health drop, a car's two trackers diverging; issue 17) keep their v1
table rows as **floors** on the collateral axis: a matching v1 row raises the level and the
next step to its own and is listed as a reason of kind ``rule`` (no contribution figure), so
making v2 authoritative never silences a signal the v1 table acts on.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .engine import (
    DAY_MS,
    HOUR_MS,
    NextStep,
    OpenAlert,
    Reason,
    RiskAssessment,
    RiskConfig,
    RiskInput,
    RiskLevel,
    repayment_evidence,
)
from .score import AxisResult, ScoreAssessment, ScoreReason

__all__ = ["AXIS_STEP", "MODELS", "V1_FLOOR_CODES", "decide", "v2_decision"]

#: Values of ``[risk] model``.
MODELS = ("v2", "v1")

#: Axis next step -> the loan's next step (one scale for the worklist, events and webhooks).
AXIS_STEP: Mapping[str, NextStep] = {
    "monitor": NextStep.MONITOR,
    "reminder": NextStep.REMINDER,
    "call_borrower": NextStep.CALL,
    "verify_location": NextStep.CALL,
    "on_site_check": NextStep.ON_SITE_CHECK,
    "notify_recovery_and_insurer": NextStep.RECOVERY,
}

_REPAYMENT = frozenset({
    "dpd_1_29", "dpd_30_59", "dpd_60_89", "dpd_90_plus", "rolled_forward", "lates_decayed",
    "late_streak_active", "cured", "arrears_installments", "severely_past_due",
})
_DEVICE = frozenset({"offline", "offline_while_overdue"})

#: v1 rows that floor the v2 collateral axis (signals with no v2 feature yet; module docstring).
V1_FLOOR_CODES = frozenset({
    "relocation", "relocation_while_overdue", "hv_disconnect", "hv_disconnect_while_overdue", "soh_drop",
    "tracker_divergence", "tracker_divergence_while_overdue",
})


def _evidence(
    reason: ScoreReason, inp: RiskInput, alerts: Mapping[str, OpenAlert], config: RiskConfig
) -> dict[str, Any]:
    """What a v2 reason rests on, in the v1 reasons' evidence shape (``alert``, ``repayment``, ...)."""
    evidence: dict[str, Any] = {}
    behind = [alerts[e] for e in reason.alert_episodes if e in alerts]
    if behind:
        evidence["alert"] = max(behind, key=lambda a: (a.raised_ms, a.episode)).as_dict()
    if reason.code in _REPAYMENT or (reason.alert_episodes and inp.facts.overdue) or reason.code.endswith(
        "_while_overdue"
    ):
        evidence["repayment"] = repayment_evidence(inp.facts)
    if reason.code in _DEVICE:
        offline = inp.device.offline_ms(inp.evaluated_ms)
        evidence["device"] = inp.device.as_dict()
        if offline is not None:
            evidence["offline_hours"] = round(offline / HOUR_MS, 2)
        evidence["threshold_hours"] = config.offline_hours
    if reason.code in ("severely_past_due", "dpd_90_plus"):
        evidence["threshold_days"] = 90
    last_fix, last_moved = inp.movement.last_fix_ms, inp.movement.last_moved_ms
    if reason.code == "stationary" and last_fix is not None and last_moved is not None:
        evidence["movement"] = {"last_moved_ms": last_moved, "last_fix_ms": last_fix}
        evidence["stationary_days"] = round(max(0, last_fix - last_moved) / DAY_MS, 2)
        evidence["threshold_days"] = config.stationary_days
    return evidence


def _axis_reasons(
    axis: AxisResult, inp: RiskInput, alerts: Mapping[str, OpenAlert], config: RiskConfig
) -> list[Reason]:
    if axis.level == RiskLevel.NORMAL:
        return []
    step = AXIS_STEP[axis.next_step]
    out = []
    for r in axis.reasons:
        if r.kind == "feature" and r.log_odds <= 0:
            continue  # mitigating contributions are in the full explanation, not among the reasons
        level = r.level if r.level is not None else axis.level
        explanation = {
            "axis": r.axis,
            "kind": r.kind,
            "summary": r.summary,
            "value": round(r.value, 4),
            "log_odds": round(r.log_odds, 4),
            "pd_points": round(r.pd_points, 4),
        }
        out.append(
            Reason(r.code, level, step, r.alert_episodes[0] if r.alert_episodes else None,
                   _evidence(r, inp, alerts, config), explanation)
        )
    return out


def _floors(v1: RiskAssessment | None) -> list[Reason]:
    """The v1 rows of :data:`V1_FLOOR_CODES`, as collateral-axis rules without a contribution."""
    if v1 is None:
        return []
    return [
        Reason(r.code, r.level, r.next_step, r.alert_episode, r.evidence,
               {"axis": "collateral", "kind": "rule", "summary": f"{r.code.replace('_', ' ')} (v1 table floor: "
                "no v2 feature for this signal yet)"})
        for r in v1.reasons
        if r.code in V1_FLOOR_CODES
    ]


def v2_decision(
    scored: ScoreAssessment, inp: RiskInput, config: RiskConfig | None = None, v1: RiskAssessment | None = None
) -> RiskAssessment:
    """The loan's level, next step and explained reasons from a v2 score (module docstring);
    ``v1``'s rows of :data:`V1_FLOOR_CODES` floor the result."""
    config = config or RiskConfig()
    alerts = {a.episode: a for a in inp.alerts}
    axes = sorted((scored.collateral, scored.credit), key=lambda a: -int(a.level))  # stable: collateral first on ties
    reasons = [reason for axis in axes for reason in _axis_reasons(axis, inp, alerts, config)]
    step = max(AXIS_STEP[scored.credit.next_step], AXIS_STEP[scored.collateral.next_step])
    level = scored.level
    for floor in _floors(v1):
        level, step = max(level, floor.level), max(step, floor.next_step)
        reasons.append(floor)
    return RiskAssessment(scored.loan_id, scored.evaluated_ms, level, step, tuple(reasons))


def decide(
    model: str, v1: RiskAssessment, scored: ScoreAssessment, inp: RiskInput, config: RiskConfig | None = None
) -> RiskAssessment:
    """The authoritative assessment: ``v1`` as is, or the :func:`v2_decision` of ``scored``."""
    return v1 if model == "v1" else v2_decision(scored, inp, config, v1)
