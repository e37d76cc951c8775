"""The risk table, row by row, in combination, at its boundaries, and for idempotence."""

from __future__ import annotations

from dataclasses import replace
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from collector.risk.engine import (
    RULES,
    DeviceStatus,
    Movement,
    NextStep,
    OpenAlert,
    RiskConfig,
    RiskConfigError,
    RiskInput,
    RiskLevel,
    assess,
    level_change,
    rule_table,
)
from collector.risk.repayments import Installment, Payment, RepaymentFacts, repayment_facts

HOUR = 3_600_000
DAY = 24 * HOUR
NOW = 1_772_700_000_000  # 2026-03-05T08:40:00Z
AS_OF = date(2026, 3, 5)
SCHEDULE = tuple(Installment(date(2026, m, 1), 350_000) for m in range(1, 7))

CURRENT = repayment_facts(SCHEDULE, [Payment(f"p{m}", date(2026, m, 1), 350_000) for m in (1, 2, 3)], AS_OF)
ONE_LATE = repayment_facts(SCHEDULE, [Payment(f"p{m}", date(2026, m, 1), 350_000) for m in (1, 2)], AS_OF)
THREE_LATE = repayment_facts(SCHEDULE, [], AS_OF)  # 63 days past due
TWO_LATE = repayment_facts(SCHEDULE, [Payment("p1", date(2026, 1, 1), 350_000)], AS_OF)


def alert(rule: str, episode: str | None = None, raised: int = NOW - 4 * DAY, **evidence: Any) -> OpenAlert:
    return OpenAlert(rule, "high", raised, episode or f"ep-{rule}", evidence or {"lat": 31.302, "lon": 121.2456})


def run(
    facts: RepaymentFacts = CURRENT,
    alerts: tuple[OpenAlert, ...] = (),
    device: DeviceStatus | None = None,
    movement: Movement | None = None,
    config: RiskConfig | None = None,
) -> tuple[str, list[str], str]:
    result = assess(
        RiskInput(
            "L1", NOW, facts, alerts, device or DeviceStatus(online=True, last_seen_ms=NOW), movement or Movement()
        ),
        config,
    )
    return result.level.label, [r.code for r in result.reasons], result.next_step.label


def test_facts_fixtures_are_what_the_table_assumes() -> None:
    assert (CURRENT.overdue, CURRENT.consecutive_late) == (False, 0)
    assert (ONE_LATE.overdue, ONE_LATE.consecutive_late, ONE_LATE.days_past_due) == (True, 1, 4)
    assert (TWO_LATE.consecutive_late, TWO_LATE.days_past_due) == (2, 32)
    assert (THREE_LATE.consecutive_late, THREE_LATE.days_past_due) == (3, 63)


OFFLINE_49H = DeviceStatus(online=False, last_seen_ms=NOW - 49 * HOUR, offline_since_ms=NOW - 49 * HOUR)

# One row per rule of the table: (facts, alerts, device) -> (level, reasons, next step).
ROWS: list[tuple[str, RepaymentFacts, tuple[OpenAlert, ...], DeviceStatus | None, tuple[str, list[str], str]]] = [
    ("nothing", CURRENT, (), None, ("normal", [], "monitor")),
    ("overdue", ONE_LATE, (), None, ("watch", ["overdue"], "reminder")),
    ("past_due", TWO_LATE, (), None, ("watch", ["past_due"], "call")),
    ("late_streak", THREE_LATE, (), None, ("watch", ["past_due", "late_streak"], "call")),
    ("stationary_near_market", CURRENT, (alert("stationary_near_market"),), None,
     ("watch", ["stationary_near_market"], "call")),
    ("late_streak_near_market", THREE_LATE, (alert("stationary_near_market"),), None,
     ("high", ["late_streak_near_market", "past_due"], "on_site_check")),
    ("power_cut", CURRENT, (alert("power_cut"),), None, ("watch", ["power_cut"], "call")),
    ("power_cut_while_overdue", ONE_LATE, (alert("power_cut"),), None,
     ("critical", ["power_cut_while_overdue"], "recovery")),
    ("gnss_lost counts as jamming", ONE_LATE, (alert("gnss_lost"),), None,
     ("critical", ["gnss_jamming_while_overdue"], "recovery")),
    ("towing", CURRENT, (alert("towing"),), None, ("watch", ["towing"], "call")),
    ("towing_while_overdue", ONE_LATE, (alert("towing"),), None, ("critical", ["towing_while_overdue"], "recovery")),
    ("gnss_jamming", CURRENT, (alert("gnss_jamming"),), None, ("watch", ["gnss_jamming"], "call")),
    ("gnss_jamming_while_overdue", ONE_LATE, (alert("gnss_jamming"),), None,
     ("critical", ["gnss_jamming_while_overdue"], "recovery")),
    ("region_exit", CURRENT, (alert("region_exit"),), None, ("watch", ["region_exit"], "call")),
    ("region_exit_while_overdue", ONE_LATE, (alert("region_exit"),), None,
     ("high", ["region_exit_while_overdue"], "on_site_check")),
    ("night_door_openings", CURRENT, (alert("night_door_openings"),), None,
     ("watch", ["night_door_openings"], "monitor")),
    ("night doors while overdue", ONE_LATE, (alert("night_door_openings"),), None,
     ("watch", ["night_door_openings", "overdue"], "reminder")),
    ("device_offline", CURRENT, (), OFFLINE_49H, ("watch", ["device_offline"], "call")),
    ("offline_while_overdue", ONE_LATE, (), OFFLINE_49H, ("high", ["offline_while_overdue"], "on_site_check")),
    ("relocation", CURRENT, (alert("relocation"),), None, ("watch", ["relocation"], "call")),
    ("relocation_while_overdue", ONE_LATE, (alert("relocation"),), None,
     ("high", ["relocation_while_overdue"], "on_site_check")),
    ("hv_disconnect", CURRENT, (alert("hv_disconnect"),), None, ("watch", ["hv_disconnect"], "call")),
    ("hv_disconnect_while_overdue", ONE_LATE, (alert("hv_disconnect"),), None,
     ("high", ["hv_disconnect_while_overdue"], "on_site_check")),
    ("soh_drop", CURRENT, (alert("soh_drop"),), None, ("watch", ["soh_drop"], "monitor")),
    ("soh_drop while overdue", ONE_LATE, (alert("soh_drop"),), None, ("watch", ["soh_drop", "overdue"], "reminder")),
    ("tracker_divergence", CURRENT, (alert("tracker_divergence"),), None,
     ("high", ["tracker_divergence"], "on_site_check")),
    ("tracker_divergence_while_overdue", ONE_LATE, (alert("tracker_divergence"),), None,
     ("critical", ["tracker_divergence_while_overdue"], "recovery")),
    ("unknown alert rule", CURRENT, (alert("some_future_rule"),), None, ("normal", [], "monitor")),
]


@pytest.mark.parametrize(("name", "facts", "alerts", "device", "expected"), ROWS, ids=[r[0] for r in ROWS])
def test_rule_rows(
    name: str,
    facts: RepaymentFacts,
    alerts: tuple[OpenAlert, ...],
    device: DeviceStatus | None,
    expected: tuple[str, list[str], str],
) -> None:
    assert run(facts, alerts, device) == expected


def test_every_rule_row_is_exercised() -> None:
    codes = {code for row in ROWS for code in row[4][1]}
    extra = {"severely_past_due", "stationary_while_overdue"}  # covered by the tests below
    assert {r.code for r in RULES} == codes | extra


def test_severely_past_due() -> None:
    facts = repayment_facts(SCHEDULE, [], date(2026, 4, 1))  # 90 days past due
    assert facts.days_past_due == 90
    _, codes, step = run(facts)
    assert codes == ["severely_past_due", "late_streak"]
    assert step == "on_site_check"
    assert run(repayment_facts(SCHEDULE, [], date(2026, 3, 31)))[1] == ["past_due", "late_streak"]


@pytest.mark.parametrize(("days", "matched"), [(6.99, False), (7.0, True), (30.0, True)])
def test_stationary_while_overdue_boundary(days: float, matched: bool) -> None:
    level, codes, _ = run(ONE_LATE, movement=Movement(last_moved_ms=NOW - int(days * DAY)))
    assert ("stationary_while_overdue" in codes) is matched
    assert level == "watch"


def test_stationary_without_overdue_is_normal() -> None:
    assert run(CURRENT, movement=Movement(last_moved_ms=NOW - 30 * DAY))[0] == "normal"


@pytest.mark.parametrize(
    ("offline_hours", "level"),
    [(47.99, "watch"), (48.0, "watch"), (48.0 + 1 / 3600, "high"), (200.0, "high")],
)
def test_offline_boundary_is_strictly_more_than_48h(offline_hours: float, level: str) -> None:
    since = NOW - round(offline_hours * HOUR)
    device = DeviceStatus(online=False, last_seen_ms=since, offline_since_ms=since)
    got, codes, _ = run(ONE_LATE, device=device)
    assert got == level
    assert ("offline_while_overdue" in codes) is (level == "high")


def test_offline_from_last_seen_when_state_unknown() -> None:
    device = DeviceStatus(online=None, last_seen_ms=NOW - 72 * HOUR)
    assert run(ONE_LATE, device=device)[1] == ["offline_while_overdue"]
    assert run(ONE_LATE, device=DeviceStatus(online=True, last_seen_ms=NOW - 72 * HOUR))[1] == ["overdue"]
    assert run(ONE_LATE, device=DeviceStatus())[1] == ["overdue"]


def test_offline_threshold_is_configurable() -> None:
    device = DeviceStatus(online=False, offline_since_ms=NOW - 13 * HOUR)
    assert run(ONE_LATE, device=device, config=RiskConfig(offline_hours=12))[0] == "high"


@pytest.mark.parametrize(("facts", "level"), [(TWO_LATE, "watch"), (THREE_LATE, "high")])
def test_market_needs_exactly_the_streak(facts: RepaymentFacts, level: str) -> None:
    assert run(facts, (alert("stationary_near_market"),))[0] == level


def test_combination_level_is_the_max_and_lists_every_reason() -> None:
    alerts = (alert("stationary_near_market"), alert("night_door_openings"), alert("towing"))
    level, codes, step = run(THREE_LATE, alerts, OFFLINE_49H)
    assert level == "critical"
    assert step == "recovery"
    assert codes == [
        "towing_while_overdue",
        "late_streak_near_market",
        "offline_while_overdue",
        "past_due",
        "night_door_openings",
    ]


def test_reasons_point_at_their_evidence() -> None:
    market = alert("stationary_near_market", "ep-42", dwell_start_ms=NOW - 4 * DAY, market="sh-jiading-ucm")
    result = assess(RiskInput("L1", NOW, THREE_LATE, (market,), movement=Movement(last_moved_ms=NOW - 4 * DAY)))
    first = result.reasons[0].as_dict()
    assert first == {
        "code": "late_streak_near_market",
        "level": "high",
        "next_step": "on_site_check",
        "alert_episode": "ep-42",
        "evidence": {
            "alert": {
                "rule": "stationary_near_market",
                "severity": "high",
                "raised_ms": NOW - 4 * DAY,
                "episode": "ep-42",
                "evidence": {"dwell_start_ms": NOW - 4 * DAY, "market": "sh-jiading-ucm"},
            },
            "repayment": {
                "as_of": "2026-03-05", "days_past_due": 63, "consecutive_late": 3, "total_overdue": "10500.00"
            },
            "movement": {"last_moved_ms": NOW - 4 * DAY, "distance_24h_m": None},
        },
    }


def test_a_rule_is_listed_once_whatever_its_episodes_and_duplicates_collapse() -> None:
    """Two towing episodes: one ``towing_while_overdue`` reason (the issue saw it twice), on the
    latest episode, its evidence naming both, oldest first."""
    a1 = alert("towing", "ep-1", NOW - 2 * HOUR)
    a2 = alert("towing", "ep-2", NOW - HOUR)
    result = assess(RiskInput("L1", NOW, ONE_LATE, (a2, a1, a1)))
    assert [(r.code, r.alert_episode) for r in result.reasons] == [("towing_while_overdue", "ep-2")]
    (reason,) = result.reasons
    assert reason.evidence["episodes"] == ["ep-1", "ep-2"]
    assert reason.evidence["alert"]["episode"] == "ep-2"
    single = assess(RiskInput("L1", NOW, ONE_LATE, (a1,))).reasons[0]
    assert "episodes" not in single.evidence


def test_alerts_after_evaluation_time_are_ignored() -> None:
    future = alert("towing", raised=NOW + 1)
    assert run(ONE_LATE, (future,)) == ("watch", ["overdue"], "reminder")
    assert run(ONE_LATE, (replace(future, raised_ms=NOW),))[0] == "critical"


def test_idempotent_and_order_independent() -> None:
    alerts = (alert("stationary_near_market"), alert("region_exit"), alert("night_door_openings"))
    inp = RiskInput("L1", NOW, THREE_LATE, alerts, OFFLINE_49H, Movement(last_moved_ms=NOW - 9 * DAY))
    first = assess(inp)
    assert assess(inp) == first
    assert assess(replace(inp, alerts=tuple(reversed(alerts)))) == first
    assert first.as_dict() == assess(inp).as_dict()


def test_level_change() -> None:
    watch = assess(RiskInput("L1", NOW, ONE_LATE))
    change = level_change(None, watch)
    assert change is not None
    assert (change.old_level, change.new_level) == (RiskLevel.NORMAL, RiskLevel.WATCH)
    assert change.next_step == NextStep.REMINDER
    assert change.as_dict()["reasons"][0]["code"] == "overdue"
    assert level_change(RiskLevel.WATCH, watch) is None
    assert level_change(None, assess(RiskInput("L1", NOW, CURRENT))) is None
    down = level_change(RiskLevel.HIGH, watch)
    assert down is not None
    assert (down.old_level, down.new_level) == (RiskLevel.HIGH, RiskLevel.WATCH)


def test_config_from_dict() -> None:
    config = RiskConfig.from_dict({"offline_hours": 24, "towing_rules": ["towing", "tow_away"]})
    assert config.offline_hours == 24
    assert config.towing_rules == frozenset({"towing", "tow_away"})
    assert run(ONE_LATE, (alert("tow_away"),), config=config)[0] == "critical"


@pytest.mark.parametrize(
    ("section", "match"),
    [
        ({"offline_hour": 1}, "unknown"),
        ({"offline_hours": 0}, "offline_hours"),
        ({"late_streak": True}, "late_streak"),
        ({"dpd_call": 100, "dpd_on_site": 50}, "dpd_on_site"),
        ({"towing_rules": "towing"}, "towing_rules"),
    ],
)
def test_config_rejects(section: dict[str, Any], match: str) -> None:
    with pytest.raises(RiskConfigError, match=match):
        RiskConfig.from_dict(section)


@pytest.mark.parametrize(
    "build",
    [
        lambda: OpenAlert("", "high", NOW, "e"),
        lambda: OpenAlert("towing", "high", -1, "e"),
        lambda: OpenAlert("towing", "high", NOW, ""),
        lambda: DeviceStatus(last_seen_ms=1.5),  # type: ignore[arg-type]
        lambda: Movement(distance_24h_m=float("nan")),
        lambda: RiskInput("L1", 2**60, CURRENT),
    ],
)
def test_bad_inputs_are_typed_errors(build: Any) -> None:
    with pytest.raises(RiskConfigError):
        build()


def test_rule_table_is_documented() -> None:
    table = rule_table()
    assert len(table) == len(RULES)
    assert table[0] == {
        "code": "power_cut_while_overdue",
        "level": "critical",
        "next_step": "recovery",
        "when": "box unplugged / main power cut while overdue",
        "supersedes": "power_cut, overdue",
    }
    text = (Path(__file__).parents[1] / "docs" / "risk.md").read_text(encoding="utf-8")
    for row in table:
        assert f"`{row['code']}`" in text, row["code"]
