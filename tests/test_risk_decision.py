"""collector.risk.decision: the v2 score as the loan's level, next step and explained reasons
(issue 15's regression cases, seen through the stored decision), and the v1 fallback."""

from __future__ import annotations

import pytest

from collector.errors import ConfigError
from collector.risk.decision import AXIS_STEP, decide, v2_decision
from collector.risk.engine import DeviceStatus, Movement, NextStep, OpenAlert, RiskConfig, RiskLevel, assess
from collector.risk.score import COLLATERAL_STEPS, CREDIT_STEPS, assess_v2
from collector.risk.settings import RiskSettings
from tests.test_risk_v2 import CURED, EXPOSURE, NOW, PAID_UP, THREE_LATE, alert, inp


def test_every_axis_step_has_a_loan_step_and_severity_is_kept() -> None:
    for steps in (CREDIT_STEPS, COLLATERAL_STEPS):
        mapped = [AXIS_STEP[s] for s in steps]
        assert mapped == sorted(mapped)  # a more severe axis level never maps to a milder loan step
    assert AXIS_STEP["notify_recovery_and_insurer"] is NextStep.RECOVERY


def test_theft_signature_on_a_paid_up_loan_is_a_critical_recovery_with_the_rule_first() -> None:
    evidence = inp(PAID_UP, (alert("power_cut", 0.1, "pc-1"), alert("towing", 0.1, "tow-1")))
    decided = v2_decision(assess_v2(evidence, EXPOSURE), evidence)
    assert (decided.level, decided.next_step) == (RiskLevel.CRITICAL, NextStep.RECOVERY)
    first = decided.reasons[0]
    assert first.code == "theft_signature"
    assert first.explanation == {**(first.explanation or {}), "axis": "collateral", "kind": "rule"}
    assert first.alert_episode in ("pc-1", "tow-1")
    assert first.evidence["alert"]["rule"] in ("power_cut", "towing")
    # credit is normal on a paid-up loan: no credit reasons at all
    assert all(r.explanation and r.explanation["axis"] == "collateral" for r in decided.reasons)


def test_cured_borrower_with_an_old_market_alert_is_not_on_site_check() -> None:
    evidence = inp(CURED, (alert("stationary_near_market", age_days=40),))
    decided = v2_decision(assess_v2(evidence, EXPOSURE), evidence)
    assert assess(evidence).next_step is NextStep.ON_SITE_CHECK  # the v1 table
    assert decided.next_step < NextStep.ON_SITE_CHECK
    assert decided.level <= RiskLevel.WATCH
    # "cured" lowers the probability: a mitigation is never listed as a reason for the level
    assert "cured" not in [r.code for r in decided.reasons]


def test_night_doors_on_a_loan_with_three_lates_escalates_with_explained_reasons() -> None:
    evidence = inp(THREE_LATE, (alert("night_door_openings", 0.5, "nd-1"),))
    scored = assess_v2(evidence, EXPOSURE)
    decided = v2_decision(scored, evidence)
    assert decided.level >= RiskLevel.HIGH > assess(evidence).level
    collateral = [r for r in decided.reasons if r.explanation and r.explanation["axis"] == "collateral"]
    assert collateral[0].code == "night_doors_late_streak"  # the hard rule first
    features = [r for r in decided.reasons if r.explanation and r.explanation["kind"] == "feature"]
    assert features
    assert all(r.explanation and r.explanation["log_odds"] > 0 for r in features)
    assert all(r.explanation and r.explanation["pd_points"] > 0 for r in features)
    # each reason's level is its axis's level (or the rule's floor)
    assert {r.level for r in collateral} <= {scored.collateral.level, RiskLevel.HIGH}


def test_an_offline_box_gives_offline_reasons_with_their_evidence_never_stationary() -> None:
    device = DeviceStatus(online=False, last_seen_ms=NOW - 20 * 86_400_000, offline_since_ms=NOW - 20 * 86_400_000)
    moved = Movement(last_moved_ms=NOW - 30 * 86_400_000, last_fix_ms=NOW - 20 * 86_400_000)
    evidence = inp(THREE_LATE, device=device, movement=moved)
    decided = v2_decision(assess_v2(evidence, EXPOSURE), evidence, RiskConfig(offline_hours=72))
    by_code = {r.code: r for r in decided.reasons}
    assert "stationary" not in by_code
    assert by_code["offline"].evidence["offline_hours"] == 480.0
    assert by_code["offline"].evidence["threshold_hours"] == 72


def test_a_normal_loan_has_no_reasons_and_monitor() -> None:
    evidence = inp(PAID_UP)
    decided = v2_decision(assess_v2(evidence, EXPOSURE), evidence)
    assert (decided.level, decided.next_step, decided.reasons) == (RiskLevel.NORMAL, NextStep.MONITOR, ())


def test_decide_picks_the_configured_engine() -> None:
    evidence = inp(THREE_LATE, (alert("stationary_near_market"),))
    v1, scored = assess(evidence), assess_v2(evidence, EXPOSURE)
    assert decide("v1", v1, scored, evidence) is v1
    v2 = decide("v2", v1, scored, evidence)
    assert v2.level == scored.level
    assert all(r.explanation is not None for r in v2.reasons)
    assert "explanation" not in v1.reasons[0].as_dict()
    assert "explanation" in v2.reasons[0].as_dict()


def test_the_model_setting_is_checked() -> None:
    assert RiskSettings().model == "v2"
    assert RiskSettings(model="v1").model == "v1"
    with pytest.raises(ConfigError, match=r"risk\.model='v3' is not one of v2, v1"):
        RiskSettings(model="v3")


def test_alert_age_is_vehicle_time_while_online_and_collector_time_otherwise() -> None:
    behind = 240 * 86_400_000  # a box whose clock runs eight months behind the collector's
    dwell = OpenAlert("stationary_near_market", "high", NOW - behind - 86_400_000, "dwell-1")
    online = DeviceStatus(online=True, last_seen_ms=NOW)
    moving = Movement(last_moved_ms=NOW - behind - 2 * 86_400_000, last_fix_ms=NOW - behind)
    evidence = inp(THREE_LATE, (dwell,), device=online, movement=moving)
    decided = v2_decision(assess_v2(evidence, EXPOSURE), evidence)
    market = next(r for r in decided.reasons if r.code == "market_while_overdue")
    assert market.explanation is not None
    assert market.explanation["value"] == pytest.approx(0.5 ** (1 / 14), abs=1e-4)  # one day old, on its clock
    # Not known to be online: the collector's clock, so an eight-month-old episode has decayed away.
    unknown = inp(THREE_LATE, (dwell,), device=DeviceStatus(), movement=moving)
    assert "market_while_overdue" not in [r.code for r in v2_decision(assess_v2(unknown, EXPOSURE), unknown).reasons]
