"""night_door_openings: local night window, sliding window, midnight and DST edges."""

from __future__ import annotations

import json
from typing import Any

from edge.rules import Engine, RulesConfig
from protocol import AlertState, Severity, SignalSample
from tests.timeline import (
    BERLIN,
    DOOR_FL,
    DOOR_FR,
    MIN,
    SHANGHAI,
    TRUNK,
    S,
    alerts,
    local_ms,
    raised_of,
    run,
    sig,
)

RULE = "night_door_openings"


def openings(door: str, times: list[int]) -> list[SignalSample]:
    """Closed at boot, then open/close around each time."""
    events = [sig(door, times[0] - 10 * MIN, False)]
    for t in times:
        events += [sig(door, t, True), sig(door, t + 30 * S, False)]
    return events


def test_three_openings_across_midnight_in_shanghai() -> None:
    engine = Engine(RulesConfig())
    times = [local_ms(SHANGHAI, 2024, 5, 6, 23, 50), local_ms(SHANGHAI, 2024, 5, 7, 0, 5)]
    third = local_ms(SHANGHAI, 2024, 5, 7, 0, 20)
    events = [*openings(DOOR_FL, times), sig(TRUNK, times[0] - MIN, False), sig(TRUNK, third, True)]
    out = run(engine, sorted(events, key=lambda e: e.time_ms))
    [alert] = alerts(out, RULE)
    assert alert.state is AlertState.RAISED
    assert alert.severity is Severity.WARNING
    assert alert.time_ms == third
    assert alert.episode == f"{RULE}:{times[0]}"
    ev: dict[str, Any] = dict(alert.evidence)
    assert [(o["local"], o["door"]) for o in ev["openings"]] == [
        ("2024-05-06 23:50:00", "Row1.DriverSide"),
        ("2024-05-07 00:05:00", "Row1.DriverSide"),
        ("2024-05-07 00:20:00", "Trunk.Rear"),
    ]
    assert ev["timezone"] == "Asia/Shanghai"


def test_daytime_openings_do_not_count_and_window_edges_are_exact() -> None:
    engine = Engine(RulesConfig())
    day = [local_ms(SHANGHAI, 2024, 5, 6, h, 0) for h in (9, 10, 11, 12)]
    assert alerts(run(engine, openings(DOOR_FL, day))) == []
    # Start inclusive (22:00:00), end exclusive (06:00:00).
    engine = Engine(RulesConfig())
    t = [local_ms(SHANGHAI, 2024, 5, 6, 22, 0), local_ms(SHANGHAI, 2024, 5, 6, 23, 0)]
    late = local_ms(SHANGHAI, 2024, 5, 7, 6, 0)
    assert alerts(run(engine, openings(DOOR_FL, [*t, late]))) == []
    # Three openings exactly 2 h apart (first to third) still fit the window ...
    engine = Engine(RulesConfig())
    t = [local_ms(SHANGHAI, 2024, 5, 7, hour, 0) for hour in (1, 2, 3)]
    assert len(raised_of(run(engine, openings(DOOR_FR, t)), RULE)) == 1
    # ... one millisecond more and they do not.
    engine = Engine(RulesConfig())
    t[2] += 1
    assert alerts(run(engine, openings(DOOR_FR, t))) == []


def test_first_value_after_boot_is_not_an_opening_and_repeats_are_not_transitions() -> None:
    engine = Engine(RulesConfig())
    t = local_ms(SHANGHAI, 2024, 5, 7, 1, 0)
    events = [sig(DOOR_FL, t, True), sig(DOOR_FL, t + S, True), sig(DOOR_FL, t + 2 * S, True)]
    events += [sig(DOOR_FR, t + 3 * S, True)]
    assert alerts(run(engine, events)) == []
    assert engine.counters["door_openings"] == 0


def test_berlin_october_dst_change_uses_the_local_wall_clock() -> None:
    # 2024-10-27: clocks go back at 03:00 CEST to 02:00 CET. 05:10-05:30 CET is night
    # (04:10-04:30 UTC); with the summer offset it would be 06:10-06:30 and not night.
    config = RulesConfig.from_dict({"timezone": "Europe/Berlin"})
    engine = Engine(config)
    times = [local_ms(BERLIN, 2024, 10, 27, 5, m) for m in (10, 20, 30)]
    [alert] = raised_of(run(engine, openings(DOOR_FL, times)), RULE)
    assert alert.evidence["openings"][0]["local"] == "2024-10-27 05:10:00"  # type: ignore[index]
    # The repeated hour: 02:30 CEST and 02:30 CET are different instants, both night.
    # (A 4 h window keeps the episode open until the night ends.)
    engine = Engine(RulesConfig.from_dict({"timezone": "Europe/Berlin", "night_door_openings": {"window_s": 14400}}))
    times = [
        local_ms(BERLIN, 2024, 10, 27, 2, 30),
        local_ms(BERLIN, 2024, 10, 27, 2, 45),
        local_ms(BERLIN, 2024, 10, 27, 2, 30, fold=1),
    ]
    assert times[2] - times[0] == 60 * MIN
    [alert] = raised_of(run(engine, openings(DOOR_FL, times)), RULE)
    # The night ends at 06:00 CET = 05:00 UTC (nine hours of night that date).
    end = local_ms(BERLIN, 2024, 10, 27, 6, 0)
    assert alerts(engine.feed(sig(DOOR_FR, end - S, False))) == []
    [clear] = alerts(engine.feed(sig(DOOR_FR, end, True)), RULE)
    assert clear.state is AlertState.CLEARED
    assert clear.episode == alert.episode
    assert clear.evidence["reason"] == "night_over"


def test_one_episode_per_night_then_cleared_after_a_quiet_window_and_restore_keeps_it() -> None:
    engine = Engine(RulesConfig())
    times = [local_ms(SHANGHAI, 2024, 5, 7, 1, m) for m in (0, 10, 20, 30, 40)]
    out = run(engine, openings(DOOR_FL, times))
    [alert] = raised_of(out, RULE)
    restored = Engine(RulesConfig(), state=json.loads(json.dumps(engine.snapshot())))
    assert restored.active_rules == frozenset({RULE})
    quiet_end = times[-1] + 2 * 3600 * S
    assert alerts(restored.tick(quiet_end - 1)) == []
    [clear] = alerts(restored.tick(quiet_end), RULE)
    assert clear.episode == alert.episode
    assert clear.evidence == {"reason": "quiet", "openings": 5, "last_opening_ms": times[-1]}
