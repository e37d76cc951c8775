"""Simulator scenarios: the shipped files say what the issue asks; bad files get precise errors."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from firmware_sim import (
    Pace,
    ScenarioError,
    distance_m,
    list_scenarios,
    load_scenario,
    parse_duration_ms,
    parse_scenario,
)
from firmware_sim.pace import PacePiece

SHANGHAI = ZoneInfo("Asia/Shanghai")
MARKET_WGS84 = (31.301992, 121.245568)
REQUIRED = {"commute_week", "parked_in_market", "night_doors", "unplug", "tow_away", "gnss_jamming"}

MINIMAL = """
start = 2026-03-02T08:00:00+08:00
position = [31.22, 121.54]
[[segment]]
kind = "park"
duration = "1h"
"""


def local(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=SHANGHAI)


def named(scenario_name: str, event: str) -> list:
    return [e for e in load_scenario(scenario_name).events if e.name == event]


def test_every_required_scenario_ships_starts_in_2026_and_plays_under_a_minute() -> None:
    assert set(list_scenarios()) >= REQUIRED
    for name in list_scenarios():
        scenario = load_scenario(name)
        assert scenario.name == name
        assert datetime.fromtimestamp(scenario.start_ms / 1000, tz=UTC).year == 2026
        assert scenario.pace().wall_duration_s < 60.0, name
        assert scenario.description


def test_commute_week_is_a_plain_week_far_from_the_market() -> None:
    scenario = load_scenario("commute_week")
    assert scenario.duration_ms >= 7 * 86_400_000 - 60_000
    drives = [s for s in scenario.segments if s.kind == "drive"]
    assert len(drives) == 10
    for segment in scenario.segments:
        assert distance_m(*segment.position, *MARKET_WGS84) > 20_000
        assert segment.kind in ("drive", "park")
    for event in scenario.events:
        assert event.name in {
            "stop_begin",
            "stop_end",
            "drive_start",
            "drive_end",
            "ignition_on",
            "ignition_off",
            "door_open",
            "door_close",
        }
        if event.name == "door_open":
            assert 7 <= local(event.time_ms).hour <= 19  # doors only in the daytime
    nights = [s for s in scenario.segments if s.kind == "park" and local(s.start_ms).hour >= 18]
    assert all(distance_m(*s.position, 31.2210, 121.5440) < 1 for s in nights)  # at home


def test_parked_in_market_parks_three_days_within_150_m_of_the_market() -> None:
    scenario = load_scenario("parked_in_market")
    last = scenario.segments[-1]
    assert last.kind == "park"
    assert last.end_ms - last.start_ms >= 3 * 86_400_000
    assert distance_m(*last.position, *MARKET_WGS84) < 150
    assert distance_m(*scenario.position, *MARKET_WGS84) > 1000  # it drives in
    assert scenario.gnss.noise_m >= 2.0


def test_night_doors_open_four_times_between_one_and_half_past_two_local() -> None:
    opens = named("night_doors", "door_open")
    assert len(opens) == 4
    for event in opens:
        t = local(event.time_ms)
        assert (1, 0) <= (t.hour, t.minute) <= (2, 30)
    scenario = load_scenario("night_doors")
    pace = scenario.pace()
    assert all(pace.speed_at(e.time_ms) == 1.0 for e in opens)  # latency is measured at 1x
    assert all(scenario.segment_at(e.time_ms).ignition == "OFF" for e in opens)


def test_unplug_drops_below_9_volts_then_goes_silent() -> None:
    (cut,) = named("unplug", "power_cut")
    (silent,) = named("unplug", "can_silent")
    assert cut.data["min_voltage"] < 9.0
    assert 0 < silent.time_ms - cut.time_ms >= cut.data["drop_s"] * 1000
    scenario = load_scenario("unplug")
    assert silent.time_ms < scenario.end_ms - 60_000  # GNSS keeps reporting afterwards
    assert scenario.pace().speed_at(cut.time_ms) == 1.0


def test_tow_away_moves_two_km_at_20_kmh_with_the_ignition_off() -> None:
    scenario = load_scenario("tow_away")
    (tow,) = [s for s in scenario.segments if s.kind == "tow"]
    assert tow.route is not None
    assert tow.ignition == "OFF"
    assert tow.route.length_m == pytest.approx(2000, rel=0.02)
    assert set(tow.route.leg_speeds_kmh) == {20.0}
    assert not [e for e in scenario.events if e.name == "ignition_on"]
    assert scenario.pace().speed_at(tow.start_ms) == 1.0


def test_gnss_jamming_loses_the_fix_for_three_minutes_at_60_kmh() -> None:
    scenario = load_scenario("gnss_jamming")
    (total,) = named("gnss_jamming", "jamming_total")
    (end,) = named("gnss_jamming", "jamming_end")
    assert end.time_ms - total.time_ms == 180_000
    segment = scenario.segment_at(total.time_ms)
    assert segment.kind == "drive"
    assert segment.route is not None
    assert set(segment.route.leg_speeds_kmh) == {60.0}
    assert segment.end_ms > end.time_ms  # still driving when the fix comes back


def test_minimal_scenario_defaults() -> None:
    scenario = parse_scenario(MINIMAL, "mini.toml")
    assert scenario.name == "mini"
    assert scenario.timezone == "Asia/Shanghai"
    assert scenario.start_ms == 1_772_409_600_000
    assert scenario.duration_ms == 3_600_000
    assert [e.name for e in scenario.events] == ["stop_begin", "stop_end"]
    assert scenario.gnss.rate_hz == 1.0


def test_drive_duration_comes_from_the_route_and_ignition_events_follow_segments() -> None:
    text = (
        MINIMAL
        + """
[[segment]]
kind = "drive"
speed_kmh = 36
route = [[31.229, 121.54], [31.229, 121.55, 72]]
"""
    )
    scenario = parse_scenario(text)
    drive = scenario.segments[1]
    assert drive.route is not None
    first_leg = distance_m(31.22, 121.54, 31.229, 121.54)
    second_leg = distance_m(31.229, 121.54, 31.229, 121.55)
    assert drive.end_ms - drive.start_ms == round(first_leg / 10 * 1000 + second_leg / 20 * 1000)
    names = [e.name for e in scenario.events]
    assert names == ["stop_begin", "stop_end", "ignition_on", "drive_start", "drive_end"]


def test_event_at_accepts_offsets_and_absolute_times() -> None:
    text = (
        MINIMAL
        + """
[[segment.event]]
at = "10m"
kind = "door_open"
door = "RL"
open_for = 30
[[segment.event]]
at = 2026-03-02T00:30:00Z
kind = "line_noise"
bytes = 10
"""
    )
    scenario = parse_scenario(text)
    by_name = {e.name: e for e in scenario.events}
    assert by_name["door_open"].time_ms == scenario.start_ms + 600_000
    assert by_name["door_close"].time_ms == scenario.start_ms + 630_000
    assert by_name["door_open"].data == {"door": "RL", "open_for_s": 30.0}
    assert by_name["line_noise"].time_ms == scenario.start_ms + 30 * 60_000
    assert by_name["line_noise"].data == {"link": "gnss", "bytes": 10}


@pytest.mark.parametrize(
    ("value", "ms"),
    [(90, 90_000), (1.5, 1500), ("500ms", 500), ("2h30m", 9_000_000), ("3d", 259_200_000), ("1m 30s", 90_000)],
)
def test_durations(value: object, ms: int) -> None:
    assert parse_duration_ms(value) == ms


@pytest.mark.parametrize("value", ["", "3x", "h", "-5s", "5s3", True, -1, float("inf"), [1]])
def test_bad_durations(value: object) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration_ms(value)


@pytest.mark.parametrize(
    ("text", "where", "message"),
    [
        (
            "start = 2026-03-02T08:00:00+08:00\nposition=[1,2]\n[[segment]]\nkind='park'\nduration='1h'\ncolour=1",
            "segment[0]",
            "unknown key",
        ),
        ("position=[1,2]\n[[segment]]\nkind='park'\nduration='1h'", "start", "is required"),
        (
            "start = 2026-03-02T08:00:00\nposition=[1,2]\n[[segment]]\nkind='park'\nduration='1h'",
            "start",
            "no UTC offset",
        ),
        ("start = 2026-03-02T08:00:00Z\n[[segment]]\nkind='park'\nduration='1h'", "position", "is required"),
        (
            "start = 2026-03-02T08:00:00Z\nposition=[91,2]\n[[segment]]\nkind='park'\nduration='1h'",
            "position",
            "WGS-84",
        ),
        ("start = 2026-03-02T08:00:00Z\nposition=[1,2]", "segment", "at least one"),
        (
            "start = 2026-03-02T08:00:00Z\nposition=[1,2]\n[[segment]]\nkind='fly'\nduration='1h'",
            "segment[0].kind",
            "not one of",
        ),
        (
            "start = 2026-03-02T08:00:00Z\nposition=[1,2]\n[[segment]]\nkind='park'\nduration='soon'",
            "segment[0].duration",
            "not like",
        ),
        (
            "start = 2026-03-02T08:00:00Z\nposition=[1,2]\n[[segment]]\nkind='park'\nduration='0s'",
            "segment[0].duration",
            "outside",
        ),
        (
            "start = 2026-03-02T08:00:00Z\nposition=[1,2]\n[[segment]]\nkind='park'\nduration='500d'",
            "segment[0].duration",
            "outside",
        ),
        (
            "start = 2026-03-02T08:00:00Z\nposition=[1,2]\n[[segment]]\nkind='drive'\nduration='1h'\nroute=[[1,3]]",
            "segment[0].duration",
            "lasts as long as its route",
        ),
        ("start = 2026-03-02T08:00:00Z\nposition=[1,2]\n[[segment]]\nkind='drive'", "segment[0].route", "needs route"),
        (
            "start = 2026-03-02T08:00:00Z\nposition=[1,2]\n[[segment]]\nkind='drive'\nroute=[[1,2.1,400]]",
            "segment[0].route[0]",
            "leg speed",
        ),
        (
            "start = 2026-03-02T08:00:00Z\nposition=[1,2]\n[[segment]]\nkind='tow'\nignition='ON'\nroute=[[1,2.1]]",
            "segment[0].ignition",
            "ignition off",
        ),
        (
            "start = 2026-03-02T08:00:00Z\nposition=[1,2]\n[[segment]]\nkind='park'\nduration='1h'\nroute=[[1,2.1]]",
            "segment[0].route",
            "does not move",
        ),
        (
            "start = 2026-03-02T08:00:00Z\nposition=[1,2]\nspeed=0\n[[segment]]\nkind='park'\nduration='1h'",
            "speed",
            "outside",
        ),
        (
            "start = 2026-03-02T08:00:00Z\nposition=[1,2]\ntimezone='Mars/Olympus'\n[[segment]]\nkind='park'\n"
            "duration='1h'",
            "timezone",
            "IANA",
        ),
        (
            "start = 2026-03-02T08:00:00Z\nposition=[1,2]\n[gnss]\nrate_hz=20\n[[segment]]\nkind='park'\nduration='1h'",
            "gnss.rate_hz",
            "outside",
        ),
        (
            "start = 2026-03-02T08:00:00Z\nposition=[1,2]\n[gnss]\nconstellations=['GP','GX']\n[[segment]]\n"
            "kind='park'\nduration='1h'",
            "gnss.constellations",
            "drawn from",
        ),
        (
            "start = 2026-03-02T08:00:00Z\nposition=[1,2]\n[can]\nbackground_ids=[4096]\n[[segment]]\nkind='park'\n"
            "duration='1h'",
            "can.background_ids",
            "11-bit",
        ),
        (
            "start = 2026-03-02T08:00:00Z\nposition=[1,2]\n[[segment]]\nkind='park'\nduration='1h'\n[[segment.event]]\n"
            "kind='door_open'\nat='2h'",
            "segment[0].event[0].at",
            "outside its segment",
        ),
        (
            "start = 2026-03-02T08:00:00Z\nposition=[1,2]\n[[segment]]\nkind='park'\nduration='1h'\n[[segment.event]]\n"
            "kind='door_open'\nat='59m'\nopen_for='5m'",
            "segment[0].event[0].at",
            "after the scenario end",
        ),
        (
            "start = 2026-03-02T08:00:00Z\nposition=[1,2]\n[[segment]]\nkind='park'\nduration='1h'\n[[segment.event]]\n"
            "kind='door_open'\nat='1m'\ndoor='HOOD'",
            "segment[0].event[0].door",
            "not one of",
        ),
        (
            "start = 2026-03-02T08:00:00Z\nposition=[1,2]\n[[segment]]\nkind='park'\nduration='1h'\n[[segment.event]]\n"
            "kind='meteor'\nat='1m'",
            "segment[0].event[0].kind",
            "not one of",
        ),
        (
            "start = 2026-03-02T08:00:00Z\nposition=[1,2]\n[[segment]]\nkind='park'\nduration='1h'\n[[segment.event]]\n"
            "kind='jamming'\nat='1m'",
            "segment[0].event[0].duration",
            "is required",
        ),
        (
            "start = 2026-03-02T08:00:00Z\nposition=[1,2]\n[[segment]]\nkind='park'\nduration='1h'\n[[segment.event]]\n"
            "kind='power_cut'\nat='1m'\ndrop='10s'\nsilent_after='5s'",
            "segment[0].event[0].silent_after",
            "shorter",
        ),
        (
            "start = 2026-03-02T08:00:00Z\nposition=[1,2]\n[[segment]]\nkind='park'\nduration='1h'\n[[segment.event]]\n"
            "kind='line_noise'\nat='1m'\nbytes=0",
            "segment[0].event[0].bytes",
            "outside",
        ),
        (
            "start = 2026-03-02T08:00:00Z\nposition=[1,2]\n[[segment]]\nkind='park'\nduration='1h'\n[[segment.event]]\n"
            "kind='door_open'\nat='1m'\nopen_for='1s'\nbogus=1",
            "segment[0].event[0]",
            "unknown key",
        ),
        ("this is = not toml [", "", "not valid TOML"),
        (
            "start = 2026-03-02T08:00:00Z\nposition=[1,2]\nname='Bad Name'\n[[segment]]\nkind='park'\nduration='1h'",
            "name",
            "must match",
        ),
        ("start = 2026-03-02T08:00:00Z\nposition=[1,2]\nsegment = 5", "segment", "array of tables"),
    ],
)
def test_invalid_scenarios_name_the_key_and_the_rule(text: str, where: str, message: str) -> None:
    with pytest.raises(ScenarioError, match=message) as info:
        parse_scenario(text, "bad.toml")
    assert info.value.where == where
    assert info.value.source == "bad.toml"
    assert str(info.value).startswith("bad.toml: ")


def test_oversized_and_undecodable_files_are_refused() -> None:
    with pytest.raises(ScenarioError, match="exceed the limit"):
        parse_scenario("#" * 1_000_001)
    with pytest.raises(ScenarioError, match="not valid TOML"):
        parse_scenario(b"\xff\xfe start")


def test_unknown_scenario_name_lists_the_shipped_ones(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError, match="commute_week"):
        load_scenario("no_such_scenario")
    path = tmp_path / "mine.toml"
    path.write_text(MINIMAL)
    assert load_scenario(path).name == "mine"


def test_pace_maps_both_ways_and_carves_realtime_windows() -> None:
    pace = Pace.build([(0, 100_000, 10.0), (100_000, 200_000, 100.0)], [(95_000, 105_000)])
    assert pace.pieces == (
        PacePiece(0, 95_000, 10.0),
        PacePiece(95_000, 105_000, 1.0),
        PacePiece(105_000, 200_000, 100.0),
    )
    assert pace.wall_duration_s == pytest.approx(9.5 + 10 + 0.95)
    for ms in (0, 50_000, 95_000, 99_000, 105_000, 150_000, 200_000):
        assert pace.scenario_at(pace.wall_at(ms)) == ms
    assert pace.scenario_at(-1) == 0
    assert pace.scenario_at(1e9) == 200_000


def test_speed_override_and_factor() -> None:
    scenario = load_scenario("night_doors")
    assert scenario.pace(override=21600).wall_duration_s == pytest.approx(1.0)
    doubled = scenario.pace(factor=2.0)
    (first,) = [e for e in scenario.events if e.name == "door_open"][:1]
    assert doubled.speed_at(first.time_ms) == 1.0  # windows stay at 1x
    assert doubled.speed_at(scenario.start_ms) == 6000.0
    with pytest.raises(ScenarioError, match="--speed"):
        scenario.pace(override=0)


def test_shifted_scenario_keeps_its_shape() -> None:
    scenario = load_scenario("unplug")
    later = scenario.shifted(scenario.duration_ms)
    assert later.start_ms == scenario.end_ms
    assert [e.name for e in later.events] == [e.name for e in scenario.events]
    assert later.events[0].time_ms - scenario.events[0].time_ms == scenario.duration_ms


# -- one clock: ``sim run --end-now`` / ``--hold`` (Scenario.ending_at) -----------------------

DAY = 86_400_000
NOW = 1_796_216_492_000  # 2026-12-02T13:01:32Z, a Wednesday afternoon


def _local_clock(time_ms: int, zone: str) -> tuple[int, int, int]:
    t = datetime.fromtimestamp(time_ms / 1000, tz=ZoneInfo(zone))
    return t.hour, t.minute, t.second


@pytest.mark.parametrize("name", ["parked_in_market", "night_doors", "gnss_jamming", "commute_week"])
def test_ending_at_moves_by_whole_days_and_parks_until_the_target(name: str) -> None:
    scenario = load_scenario(name)
    anchored = scenario.ending_at(NOW)
    offset = anchored.start_ms - scenario.start_ms
    assert offset % DAY == 0
    assert 0 <= NOW - (scenario.end_ms + offset) < DAY  # the latest whole-day shift ending by the target
    assert anchored.end_ms == NOW
    # every event keeps its local time of day (a night is still a night)
    for before, after in zip(scenario.events, anchored.events, strict=False):
        if before.name == after.name and before.name != "stop_end":
            assert _local_clock(after.time_ms, scenario.timezone) == _local_clock(before.time_ms, scenario.timezone)
    last = anchored.segments[-1]
    assert last.kind == "park"
    assert last.end_ms == NOW
    assert anchored.segment_at(NOW - 1).kind == "park"


def test_a_scenario_ending_on_the_move_is_parked_where_it_stopped() -> None:
    scenario = load_scenario("gnss_jamming")
    assert scenario.segments[-1].moving
    anchored = scenario.ending_at(NOW)
    drive, parked = anchored.segments[-2:]
    assert (parked.kind, parked.ignition, parked.start_ms) == ("park", "OFF", drive.end_ms)
    assert drive.route is not None
    assert parked.position == drive.route.end
    assert [e.name for e in anchored.events if e.time_ms == drive.end_ms][-2:] == ["ignition_off", "stop_begin"]


def test_the_anchored_play_never_runs_ahead_of_the_wall_clock_and_ends_on_it() -> None:
    scenario = load_scenario("parked_in_market")
    wall_start_s = 1_796_216_400.0
    base = scenario.pace()
    target = round((wall_start_s + base.wall_duration_s + 5.0) * 1000)
    anchored = scenario.ending_at(target, catch_up_s=5.0, hold=True)
    pace = anchored.pace()
    assert anchored.hold_from_ms == target
    assert pace.wall_at(target) == pytest.approx(base.wall_duration_s + 5.0, abs=0.01)
    for step in range(0, int(base.wall_duration_s + 60) * 4):
        elapsed = step / 4
        assert pace.scenario_at(elapsed) <= (wall_start_s + elapsed) * 1000 + 1
    # held: 1x after the target, parked, for longer than any run
    assert pace.speed_at(target + 1) == 1.0
    assert pace.scenario_at(base.wall_duration_s + 5.0 + 100) == pytest.approx(target + 100_000, abs=2)
    assert anchored.segment_at(target + 30 * DAY).kind == "park"
    assert anchored.end_ms - target > 365 * DAY
    # --speed does not speed up the hold
    assert anchored.pace(override=50.0).speed_at(target + 1) == 1.0


def test_hold_without_end_now_keeps_the_scenario_dates() -> None:
    scenario = load_scenario("unplug")
    held = scenario.ending_at(scenario.end_ms, hold=True)
    assert held.start_ms == scenario.start_ms
    assert held.hold_from_ms == scenario.end_ms
    assert held.pace().speed_at(scenario.end_ms + 1) == 1.0


def test_loop_and_hold_do_not_mix(capsys: pytest.CaptureFixture[str]) -> None:
    from firmware_sim.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["run", "--scenario", "unplug", "--gnss-link", "g", "--can-link", "c", "--loop", "--hold"])
    assert exit_info.value.code == 2
    assert "--loop cannot be combined with --end-now or --hold" in capsys.readouterr().err


def test_the_extended_park_reports_its_dwell_up_to_the_target() -> None:
    scenario = load_scenario("parked_in_market")
    anchored = scenario.ending_at(NOW, hold=True)
    (begin,) = [e for e in anchored.events if e.name == "stop_begin" and e.segment == anchored.segments[-1].index]
    assert begin.data["duration_s"] == (NOW - begin.time_ms) / 1000


# -- live play: ``sim run --start-now`` -----------------------------------------------------

_ONE_X_DRIVE = """
name = "one_x"
start = 2026-03-12T14:00:00+08:00
position = [31.2290, 121.4480]
speed = 1

[[segment]]
kind = "drive"
speed_kmh = 50
route = [[31.2470, 121.4480]]
"""


def test_start_now_plays_a_1x_scenario_on_the_host_clock(tmp_path: Path) -> None:
    import io
    import json
    import threading

    from firmware_sim.runner import run_scenario

    scenario = parse_scenario(_ONE_X_DRIVE, "one_x.toml")
    out, stop = io.StringIO(), threading.Event()
    timer = threading.Timer(2.5, stop.set)
    timer.start()
    try:
        run_scenario(scenario, gnss_link=tmp_path / "gnss0", can_link=tmp_path / "can0", events_out=out, stop=stop,
                     start_now=True)  # fmt: skip
    finally:
        timer.cancel()
        timer.join()
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    (start,) = [line for line in lines if line["type"] == "start"]
    started_ms = datetime.fromisoformat(start["scenario_start"]).timestamp() * 1000
    assert abs(started_ms - start["wall_time"] * 1000) < 50  # moved to the moment the clock started
    clocks = [line for line in lines if line["type"] == "clock"]
    assert len(clocks) >= 2
    for line in clocks:  # vehicle time is the host clock while it plays
        assert abs(line["scenario_time_ms"] - line["wall_time"] * 1000) < 100, line
    (drive_start,) = [line for line in lines if line.get("event") == "drive_start"]
    assert abs(drive_start["scenario_time_ms"] - started_ms) < 1


def test_start_now_and_end_now_do_not_mix(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    from firmware_sim.cli import main
    from firmware_sim.runner import run_scenario

    with pytest.raises(SystemExit) as exit_info:
        main(["run", "--scenario", "unplug", "--gnss-link", "g", "--can-link", "c", "--start-now", "--end-now"])
    assert exit_info.value.code == 2
    assert "--start-now cannot be combined with --end-now" in capsys.readouterr().err
    with pytest.raises(ValueError, match="--start-now cannot be combined with --end-now"):
        run_scenario(parse_scenario(_ONE_X_DRIVE, "one_x.toml"), gnss_link=tmp_path / "g", can_link=tmp_path / "c",
                     start_now=True, end_now=True)  # fmt: skip
