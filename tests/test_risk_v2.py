"""The v2 risk score: issue 15's regression cases, score tables and properties, tiers, the model
file, the synthetic book and the backtest."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from collector.cli.risk import backtest_main
from collector.loans.csv_import import sample_loan_book
from collector.risk.backtest import (
    auc,
    compare,
    evaluate_book,
    fit_from_book,
    inputs_at,
    split,
)
from collector.risk.engine import DeviceStatus, Movement, OpenAlert, RiskConfigError, RiskInput, RiskLevel, assess
from collector.risk.features import FEATURE_NAMES, Exposure, exposure_of, feature_row
from collector.risk.model import (
    DEFAULT_MODEL_VERSION,
    default_model,
    fit_logistic,
    fit_logistic_signed,
    load_model,
    model_from_dict,
)
from collector.risk.repayments import Installment, Payment, RepaymentFacts, repayment_facts
from collector.risk.score import HARD_RULES, Tier, assess_v2, score_matrix, tier_of
from collector.risk.synthetic_book import BAD_OUTCOMES, SyntheticBookError, generate_book

HOUR = 3_600_000
DAY = 24 * HOUR
NOW = 1_772_700_000_000  # 2026-03-05T08:40:00Z
AS_OF = date(2026, 3, 5)
AMOUNT = 350_000
SCHEDULE = tuple(Installment(date(2025 + (m - 1) // 12, (m - 1) % 12 + 1, 1), AMOUNT) for m in range(4, 40))
EXPOSURE = Exposure(10_000_000, 6_000_000, 8_000_000, 12)


def on_time(*months: tuple[int, int]) -> list[Payment]:
    return [Payment(f"p{y}-{m}", date(y, m, 1), AMOUNT) for y, m in months]


PAID_UP_MONTHS = [(2025, m) for m in range(4, 13)] + [(2026, m) for m in (1, 2, 3)]
PAID_UP = repayment_facts(SCHEDULE, on_time(*PAID_UP_MONTHS), AS_OF)
# Jan, Feb and Mar 2026 missed their grace; everything caught up on the evaluation day (L-1002's story).
CURED = repayment_facts(
    SCHEDULE, [*on_time(*PAID_UP_MONTHS[:-3]), Payment("catch-up", AS_OF, 3 * AMOUNT)], AS_OF
)
THREE_LATE = repayment_facts(SCHEDULE, on_time(*PAID_UP_MONTHS[:-3]), AS_OF)  # 63 days past due
ONLINE = DeviceStatus(online=True, last_seen_ms=NOW)
MOVING = Movement(last_moved_ms=NOW - HOUR, last_fix_ms=NOW)


def alert(rule: str, age_days: float = 1.0, episode: str | None = None) -> OpenAlert:
    return OpenAlert(rule, "high", NOW - int(age_days * DAY), episode or f"ep-{rule}")


def inp(
    facts: RepaymentFacts, alerts: tuple[OpenAlert, ...] = (), device: DeviceStatus = ONLINE,
    movement: Movement = MOVING,
) -> RiskInput:
    return RiskInput("L1", NOW, facts, alerts, device, movement)


def codes(axis_reasons: tuple[object, ...]) -> list[str]:
    return [r.code for r in axis_reasons]  # type: ignore[attr-defined]


def test_fixtures_are_what_the_cases_assume() -> None:
    assert (PAID_UP.overdue, PAID_UP.consecutive_late) == (False, 0)
    assert (CURED.overdue, CURED.days_past_due, CURED.consecutive_late) == (False, 0, 3)
    assert (THREE_LATE.overdue, THREE_LATE.consecutive_late, THREE_LATE.days_past_due) == (True, 3, 63)


# ------------------------------------------------------------------ issue 15's regression cases


def test_cured_borrower_with_an_old_market_alert_is_not_on_site_check() -> None:
    evidence = inp(CURED, (alert("stationary_near_market", age_days=40),))
    assert assess(evidence).next_step.label == "on_site_check"  # v1: lates count forever
    v2 = assess_v2(evidence, EXPOSURE)
    assert v2.credit.next_step != "on_site_check"
    assert v2.collateral.next_step != "on_site_check"
    assert v2.level <= RiskLevel.WATCH
    assert "cured" in codes(v2.credit.reasons)


def test_power_cut_and_towing_on_a_paid_up_loan_is_critical_on_the_collateral_axis() -> None:
    evidence = inp(PAID_UP, (alert("power_cut", 0.1), alert("towing", 0.1)))
    assert assess(evidence).level == RiskLevel.WATCH  # v1: only watch / call
    v2 = assess_v2(evidence, EXPOSURE)
    assert v2.collateral.level == RiskLevel.CRITICAL
    assert v2.collateral.next_step == "notify_recovery_and_insurer"
    first = v2.collateral.reasons[0]
    assert (first.code, first.kind, first.alert_episodes) == ("theft_signature", "rule", ("ep-power_cut", "ep-towing"))
    assert v2.credit.level == RiskLevel.NORMAL  # nothing wrong with the payments


def test_theft_signature_is_critical_whatever_the_score() -> None:
    x = np.zeros((1, len(FEATURE_NAMES)))
    x[0, FEATURE_NAMES.index("power_cut")] = 1e-6
    x[0, FEATURE_NAMES.index("towing")] = 1e-6
    scores = score_matrix(x, np.array([1.0]), default_model())
    assert scores.probability["collateral"][0] < 0.1
    assert scores.levels["collateral"][0] == RiskLevel.CRITICAL


def test_night_doors_on_a_loan_with_three_lates_escalates() -> None:
    evidence = inp(THREE_LATE, (alert("night_door_openings"),))
    assert assess(evidence).level == RiskLevel.WATCH  # v1: night doors never rise above watch
    alone = assess_v2(inp(THREE_LATE), EXPOSURE)
    v2 = assess_v2(evidence, EXPOSURE)
    assert v2.collateral.level >= RiskLevel.HIGH > alone.collateral.level
    assert v2.collateral.next_step in ("on_site_check", "notify_recovery_and_insurer")
    assert "night_doors_late_streak" in codes(v2.collateral.reasons)


@pytest.mark.parametrize("offline_days", [2.1, 5, 30, 240])
def test_an_offline_box_never_yields_a_stationary_reason(offline_days: float) -> None:
    since = NOW - int(offline_days * DAY)
    device = DeviceStatus(online=False, last_seen_ms=since, offline_since_ms=since)
    movement = Movement(last_moved_ms=since - 20 * DAY, last_fix_ms=since)
    v2 = assess_v2(inp(THREE_LATE, device=device, movement=movement), EXPOSURE)
    every = codes(v2.credit.reasons) + codes(v2.collateral.reasons)
    assert not [c for c in every if "stationary" in c]
    assert "offline" in every or "offline_while_overdue" in every


@settings(max_examples=60, deadline=None)
@given(
    offline_h=st.floats(48.01, 24 * 365),
    moved_before_h=st.floats(0, 24 * 365),
    fix_after_moved_h=st.floats(0, 24 * 365),
    overdue=st.booleans(),
)
def test_offline_never_stationary_property(
    offline_h: float, moved_before_h: float, fix_after_moved_h: float, overdue: bool
) -> None:
    since = NOW - int(offline_h * HOUR)
    moved = max(0, since - int(moved_before_h * HOUR))
    device = DeviceStatus(online=False, last_seen_ms=since, offline_since_ms=since)
    movement = Movement(last_moved_ms=moved, last_fix_ms=min(NOW, moved + int(fix_after_moved_h * HOUR)))
    row = feature_row(inp(THREE_LATE if overdue else PAID_UP, device=device, movement=movement), EXPOSURE)
    assert row.value("stationary") == 0.0
    assert row.stationary_days is None
    assert row.value("offline") == 1.0


def test_stationary_is_measured_on_vehicle_time() -> None:
    unknown = DeviceStatus()  # never heard a state message: not known to be offline
    parked_3d = Movement(last_moved_ms=NOW - 30 * DAY, last_fix_ms=NOW - 27 * DAY)
    row = feature_row(inp(THREE_LATE, device=unknown, movement=parked_3d), EXPOSURE)
    assert row.stationary_days == pytest.approx(3.0)
    assert row.value("stationary") == 0.0
    parked_10d = Movement(last_moved_ms=NOW - 10 * DAY, last_fix_ms=NOW)
    assert feature_row(inp(THREE_LATE, movement=parked_10d), EXPOSURE).value("stationary") == 1.0
    no_fix_time = Movement(last_moved_ms=NOW - 30 * DAY)
    assert feature_row(inp(THREE_LATE, movement=no_fix_time), EXPOSURE).stationary_days is None


# ------------------------------------------------------------------ cure and decay


def test_lates_decay_and_a_cured_borrower_falls_back() -> None:
    later = []
    for months_after in (0, 3, 6, 12):
        as_of = date(2026 + (2 + months_after) // 12, (2 + months_after) % 12 + 1, 5)
        paid = [*on_time(*PAID_UP_MONTHS[:-3]), Payment("catch-up", AS_OF, 3 * AMOUNT)]
        paid += [
            Payment(f"after-{k}", d.due_date, AMOUNT) for k, d in enumerate(SCHEDULE) if AS_OF < d.due_date <= as_of
        ]
        facts = repayment_facts(SCHEDULE, paid, as_of)
        now = NOW + months_after * 30 * DAY
        device, movement = DeviceStatus(True, now), Movement(now - HOUR, None, now)
        result = assess_v2(RiskInput("L1", now, facts, (), device, movement), EXPOSURE)
        assert result.level == RiskLevel.NORMAL
        later.append((feature_row(RiskInput("L1", now, facts), EXPOSURE).value("lates_decayed"),
                      result.credit.probability))
    weights = [w for w, _ in later]
    probabilities = [p for _, p in later]
    assert weights == sorted(weights, reverse=True)
    assert weights[-1] < weights[0] / 2
    watch = default_model().credit.thresholds[0]
    still_late = assess_v2(inp(THREE_LATE), EXPOSURE).credit.probability
    assert all(p < watch and p < still_late / 100 for p in probabilities)


def test_a_cured_streak_is_not_an_active_streak() -> None:
    assert feature_row(inp(CURED), EXPOSURE).value("late_streak_active") == 0.0
    assert feature_row(inp(THREE_LATE), EXPOSURE).value("late_streak_active") == 1.0


# ------------------------------------------------------------------ the score: tables and properties


@pytest.mark.parametrize(
    ("facts", "alerts", "credit", "collateral"),
    [
        (PAID_UP, (), "normal", "normal"),
        (THREE_LATE, (), "critical", "normal"),
        (PAID_UP, ("power_cut", "towing"), "normal", "critical"),
        (THREE_LATE, ("power_cut",), "critical", "critical"),
        (THREE_LATE, ("towing",), "critical", "critical"),
        (THREE_LATE, ("gnss_lost",), "critical", "critical"),
        (THREE_LATE, ("night_door_openings",), "critical", "high"),
    ],
)
def test_axis_levels_table(facts: RepaymentFacts, alerts: tuple[str, ...], credit: str, collateral: str) -> None:
    v2 = assess_v2(inp(facts, tuple(alert(a) for a in alerts)), EXPOSURE)
    assert (v2.credit.level.label, v2.collateral.level.label) == (credit, collateral)


def test_expected_loss_is_pd_times_exposure_times_lgd() -> None:
    model = default_model()
    v2 = assess_v2(inp(THREE_LATE), EXPOSURE, model)
    ltv = EXPOSURE.outstanding_cents / (EXPOSURE.vehicle_value_cents or 1)
    lgd = max(model.loss.min_credit_lgd, 1 - model.loss.recovery_rate / ltv)
    expected = EXPOSURE.outstanding_cents * (
        v2.credit.probability * lgd + v2.collateral.probability * model.loss.collateral_lgd
    )
    assert v2.expected_loss_cents == pytest.approx(expected, abs=1)
    bigger = assess_v2(inp(THREE_LATE), Exposure(10_000_000, 9_000_000, 8_000_000, 12), model)
    assert bigger.expected_loss_cents > v2.expected_loss_cents


def test_reasons_explain_the_log_odds() -> None:
    model = default_model()
    evidence = inp(THREE_LATE, (alert("stationary_near_market"), alert("night_door_openings")))
    v2 = assess_v2(evidence, EXPOSURE, model)
    row = feature_row(evidence, EXPOSURE)
    for axis in (v2.credit, v2.collateral):
        weights = model.axis(axis.axis).weights
        features = {r.code: r for r in axis.reasons if r.kind == "feature"}
        for code, reason in features.items():
            assert reason.log_odds == pytest.approx(weights[FEATURE_NAMES.index(code)] * row.value(code))
        total = model.axis(axis.axis).intercept + float(np.dot(row.values, weights))
        assert axis.probability == pytest.approx(1 / (1 + np.exp(-total)))
    assert v2.as_dict()["credit"]["reasons"][0]["log_odds"] != 0


@settings(max_examples=80, deadline=None)
@given(st.lists(st.floats(0, 1), min_size=len(FEATURE_NAMES), max_size=len(FEATURE_NAMES)), st.floats(0, 1e9))
def test_score_properties(values: list[float], outstanding: float) -> None:
    model = default_model()
    x = np.array([values])
    s = score_matrix(x, np.array([outstanding]), model)
    for axis in ("credit", "collateral"):
        p = float(s.probability[axis][0])
        assert 0 < p < 1
        by_score = int(np.searchsorted(np.array(model.axis(axis).thresholds), p, side="right"))
        floors = [int(r.level) for i, r in enumerate(HARD_RULES) if r.axis == axis and s.hard[0, i]]
        assert int(s.levels[axis][0]) == max([by_score, *floors])
    assert s.score[0] >= max(s.probability["credit"][0], s.probability["collateral"][0]) - 1e-12
    assert 0 <= s.expected_loss_cents[0] <= outstanding + 1e-6


def test_batch_equals_one_by_one() -> None:
    cases = [inp(PAID_UP), inp(CURED, (alert("stationary_near_market", 40),)), inp(THREE_LATE, (alert("towing"),))]
    from collector.risk.score import assess_many

    batch = assess_many(cases, [EXPOSURE] * 3)
    assert [b.as_dict() for b in batch] == [assess_v2(c, EXPOSURE).as_dict() for c in cases]


def test_exposure_of_facts() -> None:
    exposure = exposure_of(10_000_000, PAID_UP, 9_000_000)
    scheduled = AMOUNT * len(SCHEDULE)
    assert exposure.outstanding_cents == 10_000_000 * (scheduled - 12 * AMOUNT) // scheduled
    assert exposure.months_on_book == 12
    assert exposure_of(10_000_000, PAID_UP).ltv is None
    with pytest.raises(RiskConfigError):
        Exposure(-1, 0)


# ------------------------------------------------------------------ tiers


def test_tiers() -> None:
    assert tier_of(PAID_UP) == Tier.ON_TIME_12M
    short = repayment_facts(SCHEDULE, on_time(*PAID_UP_MONTHS), date(2025, 8, 10))
    assert tier_of(short) == Tier.NEW
    quick = [*on_time(*PAID_UP_MONTHS)]
    quick[5] = Payment("quick", date(2025, 9, 10), AMOUNT)  # Sep late by 9 days
    assert tier_of(repayment_facts(SCHEDULE, quick, AS_OF)) == Tier.MINOR_LATES_CURED
    assert tier_of(CURED) == Tier.RISK  # 63 days to cure is not "quickly"
    assert tier_of(THREE_LATE) == Tier.RISK
    assert assess_v2(inp(PAID_UP), EXPOSURE).as_dict()["monitoring"]["fix_interval_s"] == 300


# ------------------------------------------------------------------ model and model file


def test_fit_logistic_recovers_known_weights() -> None:
    rng = np.random.default_rng(5)
    x = rng.normal(size=(20_000, 3))
    true = np.array([1.5, -2.0, 0.0])
    y = (rng.random(20_000) < 1 / (1 + np.exp(-(-1.0 + x @ true)))).astype(float)
    intercept, weights = fit_logistic(x, y, l2=0.1)
    assert intercept == pytest.approx(-1.0, abs=0.1)
    assert weights == pytest.approx(true, abs=0.1)


def test_fit_logistic_signed_keeps_constrained_weights_nonnegative() -> None:
    rng = np.random.default_rng(6)
    x = rng.normal(size=(5_000, 3))
    y = (rng.random(5_000) < 1 / (1 + np.exp(-(x @ np.array([1.0, -1.0, -0.5]))))).astype(float)
    _, free = fit_logistic(x, y, l2=0.1)
    assert free[1] < 0
    assert free[2] < 0
    _, signed = fit_logistic_signed(x, y, nonnegative=[1], l2=0.1)
    assert signed[1] == 0.0
    assert signed[0] > 0.5
    assert signed[2] < 0


def test_shipped_model_respects_its_sign_constraints() -> None:
    model = default_model()
    for axis, features in model.training["nonnegative"].items():
        weights = model.axis(axis).weights
        assert all(weights[FEATURE_NAMES.index(f)] >= 0 for f in features)


def test_fit_logistic_survives_separable_data() -> None:
    x = np.array([[0.0], [0.0], [1.0], [1.0]])
    intercept, weights = fit_logistic(x, np.array([0.0, 0.0, 1.0, 1.0]), l2=1.0)
    assert np.isfinite(intercept)
    assert np.all(np.isfinite(weights))
    assert weights[0] > 0


def test_model_file_round_trip_and_errors(tmp_path: Path) -> None:
    model = default_model()
    assert model.version == DEFAULT_MODEL_VERSION
    path = tmp_path / "m.json"
    path.write_text(model.to_json())
    assert load_model(path).to_json() == model.to_json()
    data = json.loads(model.to_json())
    for broken in ({**data, "format": "x"}, {**data, "features": data["features"][:-1]}, {**data, "axes": {}}):
        with pytest.raises(RiskConfigError):
            model_from_dict(broken)
    with pytest.raises(RiskConfigError):
        load_model(tmp_path / "missing.json")


# ------------------------------------------------------------------ synthetic book and backtest


def test_synthetic_book_is_seeded_and_labelled() -> None:
    a, b = generate_book(300, seed=3), generate_book(300, seed=3)
    assert a == b
    assert generate_book(100, seed=3).loans == a.loans[:100]  # a loan does not depend on the book size
    assert generate_book(300, seed=4).loans != a.loans
    big = generate_book(3000, seed=3)
    assert {loan.outcome for loan in big.loans} == {"good", *BAD_OUTCOMES}
    with pytest.raises(SyntheticBookError):
        generate_book(0)


def test_inputs_at_sees_nothing_after_the_date() -> None:
    book = generate_book(400, seed=9)
    for loan in book.loans:
        risk_input, _ = inputs_at(loan, book.snapshot_ms)
        assert all(a.raised_ms <= book.snapshot_ms for a in risk_input.alerts)
        assert risk_input.facts.total_paid_cents == sum(
            p.amount_cents for p in loan.payments if p.paid_on <= book.snapshot
        )


def test_auc() -> None:
    assert auc(np.array([0.1, 0.2, 0.3, 0.4]), np.array([0.0, 0.0, 1.0, 1.0])) == 1.0
    assert auc(np.array([1.0, 1.0, 1.0, 1.0]), np.array([0.0, 1.0, 0.0, 1.0])) == 0.5
    assert np.isnan(auc(np.array([1.0]), np.array([1.0])))


@pytest.fixture(scope="module")
def default_run() -> tuple[object, object]:
    book = generate_book()
    return book, evaluate_book(book.loans, book.snapshot_ms)


def test_packaged_model_is_reproduced_by_the_fit_command(default_run: tuple[object, object]) -> None:
    book, evaluated = default_run
    fitted = fit_from_book(book, evaluated)  # type: ignore[arg-type]
    packaged = Path(__file__).parents[1] / "collector" / "risk" / "models" / f"risk-v2-{DEFAULT_MODEL_VERSION}.json"
    assert fitted.to_json() == packaged.read_text(encoding="utf-8")


def test_v2_beats_v1_on_every_figure_on_the_test_split(default_run: tuple[object, object]) -> None:
    _, evaluated = default_run
    _, test = split(len(evaluated.loan_ids), 20261202)  # type: ignore[attr-defined]
    figures = compare(evaluated.subset(test), default_model())  # type: ignore[attr-defined]
    v1, v2 = figures["v1"], figures["v2"]
    assert v1.loans == v2.loans >= 3000
    assert v2.bad > 100
    assert v2.auc > v1.auc
    assert v2.precision_top1 > v1.precision_top1
    assert v2.precision_top5 > v1.precision_top5
    assert v2.flagged_ahead > v1.flagged_ahead
    assert v2.alerts_per_1000 < v1.alerts_per_1000
    assert v2.false_high_cured < v1.false_high_cured


def test_backtest_cli_on_a_small_book(capsys: pytest.CaptureFixture[str]) -> None:
    assert backtest_main(["--loans", "1500", "--seed", "11", "--refit", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert set(report) == {"book", "model", "split", "v1", "v2"}
    assert report["v1"]["loans"] == report["v2"]["loans"] > 300


def test_backtest_cli_on_a_real_book_export(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:

    loans = tmp_path / "loans.csv"
    loans.write_text(sample_loan_book(date(2026, 11, 28)))
    outcomes = tmp_path / "outcomes.csv"
    outcomes.write_text(
        "loan_id,outcome,outcome_date\nL-1002,default,2027-01-20\nL-1003,good,\nL-1001,good,\n"
    )
    assert backtest_main(["--book", str(loans), "--outcomes", str(outcomes), "--as-of", "2026-11-28", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["split"] == "all"
    assert report["v2"]["loans"] == 5
    assert report["v2"]["bad"] == 1
    outcomes.write_text("loan_id,outcome,outcome_date\nL-1002,stolen,2027-01-20\n")
    assert backtest_main(["--book", str(loans), "--outcomes", str(outcomes), "--as-of", "2026-11-28"]) == 2
    assert "stolen" in capsys.readouterr().err
