"""Every shipped scenario, recorded by the simulator, replayed through ``lienwatch replay``.

``lienwatch sim record`` (firmware_sim.record) renders each scenario offline into a
plain NMEA log and a candump log on the scenario clock; ``lienwatch replay`` (the agent's
own decoders and rules engine) reads them back with an agent.toml that points at the
sample DBC, signal map and market list (Asia/Shanghai). A normal week must raise nothing;
each anomaly scenario must raise exactly its alert, at the time the timeline says.

The recorder itself is tested here too: candump lines (golden and through python-can's
LogReader), the sampling plan (dense while moving and near events, sparse while parked,
the bus heard at least every 20 s), that every timeline event is played, byte-for-byte
reproducibility, the CLI's errors, and one run of the real entry points in subprocesses.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import json
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import can
import pytest

from edge.cli.replay import main as replay_main
from edge.gnss import read_nmea_file
from firmware_sim import CanFrame, Scenario, load_scenario
from firmware_sim import cli as sim_cli
from firmware_sim.record import (
    RecordError,
    RecordPlan,
    candump_line,
    dense_spans,
    record_to_files,
    recording_pace,
    render,
)
from protocol import Fix, NoFix
from tests.child_processes import ChildProcesses

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "edge" / "data"
SHANGHAI = ZoneInfo("Asia/Shanghai")
VOLTAGE_ID = "3C0"  # BATTERY_12V in the generic car DBC
MAX_CAN_GAP_MS = 20_000
DAY_MS = 86_400_000

# A week of 1 Hz driving (8,400 epochs) costs ~20 s to render and replay on this machine,
# so the normal week is recorded the way a thrifty box would keep it: one epoch per 5 s
# while driving, and asleep while parked, waking every 5 min for one epoch and one round of
# the bus. The 3-day dwell uses the default plan. `lienwatch sim record --scenario
# commute_week` at the defaults also replays without an alert (checked by hand, see the
# scenario-replay section of docs/rules.md).
PLANS = {"commute_week": RecordPlan(gnss_hz=0.2, parked_interval_s=300.0)}


@dataclass
class Replayed:
    """One scenario recorded and replayed."""

    scenario: Scenario
    nmea: Path
    can: Path
    report: dict[str, Any]
    alerts: list[dict[str, Any]]
    stats: list[dict[str, Any]]
    counters: dict[str, Any]

    def event_ms(self, name: str, index: int = 0) -> int:
        times: list[int] = [e.time_ms for e in self.scenario.events if e.name == name]
        return times[index]

    def rules(self) -> list[tuple[str, str]]:
        return [(a["rule"], a["state"]) for a in self.alerts]


def write_agent_toml(folder: Path) -> Path:
    path = folder / "agent.toml"
    path.write_text(
        "[can]\n"
        'interface = "virtual"\n'
        'channel = "replay"\n'
        f'dbc = ["{DATA / "generic_car.dbc"}"]\n'
        f'signal_map = "{DATA / "generic_car_map.toml"}"\n'
        "\n[rules]\n"
        'timezone = "Asia/Shanghai"\n'
        f'markets_file = "{DATA / "markets.sample.toml"}"\n',
        encoding="utf-8",
    )
    return path


def replay(config: Path, nmea: Path, can_log: Path) -> tuple[int, list[dict[str, Any]], dict[str, Any]]:
    """``lienwatch replay --jsonl`` in-process: (exit status, JSON lines, counters)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = replay_main(["--config", str(config), "--nmea", str(nmea), "--can", str(can_log), "--jsonl"])
    records = [json.loads(line) for line in out.getvalue().splitlines()]
    counters = json.loads(err.getvalue().splitlines()[-1])["replay_counters"]
    return int(status), records, counters


@pytest.fixture(scope="module")
def replayed(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Replayed]:
    """Record and replay a shipped scenario once per module (cached by name)."""
    folder = tmp_path_factory.mktemp("scenario_replays")
    config = write_agent_toml(folder)
    cache: dict[str, Replayed] = {}

    def get(name: str) -> Replayed:
        if name not in cache:
            scenario = load_scenario(name)
            nmea, can_log = folder / f"{name}.nmea", folder / f"{name}.log"
            report = record_to_files(scenario, nmea, can_log, PLANS.get(name, RecordPlan())).as_dict()
            status, records, counters = replay(config, nmea, can_log)
            assert status == 0
            alerts = [r for r in records if "rule" in r]
            stats = [r["stats"] for r in records if "stats" in r]
            cache[name] = Replayed(scenario, nmea, can_log, report, alerts, stats, counters)
        return cache[name]

    return get


def local(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, SHANGHAI).strftime("%Y-%m-%d %H:%M:%S")


def can_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(time_ms, 'ID#DATA') of each candump line."""
    for line in path.read_text(encoding="ascii").splitlines():
        stamp, _channel, frame = line.split()
        seconds, micros = stamp.strip("()").split(".")
        yield int(seconds) * 1000 + int(micros) // 1000, frame


def epochs(path: Path) -> list[Fix | NoFix]:
    return list(read_nmea_file(path))


# -- every scenario through the rules ---------------------------------------------------------


def test_commute_week_raises_no_alert_and_its_drives_are_counted(replayed: Callable[[str], Replayed]) -> None:
    week = replayed("commute_week")
    assert week.alerts == []
    assert week.counters["rules"].get("stale_events", 0) == 0
    finals = [s for s in week.stats if s["final"]]
    # Monday .. Saturday end inside the week (Sunday's final record needs Monday's first input)
    assert [s["day"] for s in finals] == [
        "2026-03-02",
        "2026-03-03",
        "2026-03-04",
        "2026-03-05",
        "2026-03-06",
        "2026-03-07",
    ]
    for day in finals[:5]:  # two 9.3 km legs per weekday, measured along 0.2 Hz fixes
        assert 17_000 < day["distance_m"] < 19_500, day
        assert 20 * 60 < day["driving_s"] < 32 * 60, day
    assert finals[5]["distance_m"] == 0.0  # parked all Saturday


def test_parked_in_market_raises_stationary_near_market_after_72_hours(replayed: Callable[[str], Replayed]) -> None:
    run = replayed("parked_in_market")
    assert run.rules() == [("stationary_near_market", "raised")]
    alert = run.alerts[0]
    evidence = alert["evidence"]
    assert alert["severity"] == "high"
    assert evidence["market_id"] == "sh-jiading-ucm"
    assert evidence["market_datum"] == "gcj02"
    assert 25.0 < evidence["distance_to_market_m"] < 50.0  # the car parks about 36 m from the market point
    arrived = run.event_ms("stop_begin", 0)
    # the dwell starts on the last, 15 km/h metres of the drive between the rows of cars
    assert arrived - 60_000 <= evidence["dwell_start_ms"] <= arrived + 60_000
    assert alert["episode"] == f"stationary_near_market:{evidence['dwell_start_ms']}"
    raised_after = alert["time_ms"] - evidence["dwell_start_ms"]
    assert 259_200_000 <= raised_after <= 259_200_000 + 60_000  # 72 h, seen by the next parked epoch
    assert run.scenario.end_ms - alert["time_ms"] > 7_000_000  # two hours before the scenario ends


def test_night_doors_raise_night_door_openings_at_the_third_opening(replayed: Callable[[str], Replayed]) -> None:
    run = replayed("night_doors")
    # the episode would clear after 2 h without an opening (04:24) or at 06:00; the scenario ends at 04:00
    assert run.rules() == [("night_door_openings", "raised")]
    alert = run.alerts[0]
    opened = [run.event_ms("door_open", i) for i in range(4)]
    assert alert["severity"] == "warning"
    assert alert["time_ms"] == opened[2]
    assert alert["episode"] == f"night_door_openings:{opened[0]}"
    assert [(o["local"], o["door"]) for o in alert["evidence"]["openings"]] == [
        ("2026-03-11 01:05:00", "Row1.DriverSide"),
        ("2026-03-11 01:32:00", "Row2.PassengerSide"),
        ("2026-03-11 01:58:00", "Trunk.Rear"),
    ]
    assert [local(t) for t in opened] == [
        "2026-03-11 01:05:00",
        "2026-03-11 01:32:00",
        "2026-03-11 01:58:00",
        "2026-03-11 02:24:00",
    ]


def test_unplug_raises_power_cut_on_the_voltage_drop(replayed: Callable[[str], Replayed]) -> None:
    run = replayed("unplug")
    assert run.rules() == [("power_cut", "raised")]  # never restored in the scenario
    alert = run.alerts[0]
    cut = run.event_ms("power_cut")
    evidence = alert["evidence"]
    assert alert["severity"] == "panic"
    assert evidence["cause"] == "low_voltage"
    assert evidence["voltage_v"] == 8.0
    # 12.5 V -> 8.0 V linearly over 2 s crosses 9.0 V at +1.556 s; the recording hears the bus once a second
    assert cut + 1556 <= evidence["since_ms"] <= cut + 2000
    assert 3000 <= alert["time_ms"] - evidence["since_ms"] <= 4000  # low_for_s 3, seen by the next input
    assert alert["episode"] == f"power_cut:{evidence['since_ms']}"


def test_tow_away_raises_towing_within_three_fixes(replayed: Callable[[str], Replayed]) -> None:
    run = replayed("tow_away")
    # it would clear after settle_s (600 s) without movement; the scenario ends 300 s after the tow
    assert run.rules() == [("towing", "raised")]
    alert = run.alerts[0]
    towed = run.event_ms("tow_start")
    assert alert["severity"] == "high"
    assert alert["evidence"]["cause"] == "speed"
    assert alert["evidence"]["ignition"] == "OFF"
    assert towed <= alert["time_ms"] <= towed + 3000  # three 1 Hz fixes above 10 km/h
    assert 19.0 < alert["evidence"]["speed_kmh"] < 21.0
    assert run.event_ms("tow_end") - towed > 300_000  # 2 km at 20 km/h: ~6 min of towing, one episode


def test_gnss_jamming_raises_gnss_lost_and_gnss_jamming_and_clears_both(replayed: Callable[[str], Replayed]) -> None:
    run = replayed("gnss_jamming")
    assert run.rules() == [
        ("gnss_lost", "raised"),
        ("gnss_jamming", "raised"),
        ("gnss_jamming", "cleared"),
        ("gnss_lost", "cleared"),
    ]
    lost, jammed, jam_clear, lost_clear = run.alerts
    start, total, end = run.event_ms("jamming_start"), run.event_ms("jamming_total"), run.event_ms("jamming_end")
    since = lost["evidence"]["since_ms"]
    assert start < since < total  # the fix goes while C/N0 collapses
    assert since == lost["evidence"]["last_fix_ms"]
    assert lost["time_ms"] == jammed["time_ms"] == since + 60_000  # lost_after_s, CAN says 60 km/h
    assert 55.0 < lost["evidence"]["speed_kmh"] < 65.0
    assert lost["episode"] == f"gnss_lost:{since}"
    assert jammed["episode"] == f"gnss_jamming:{since}"
    assert jammed["evidence"]["mean_snr"] < 20.0  # under snr_floor_dbhz ...
    assert jammed["evidence"]["baseline_snr"] - jammed["evidence"]["mean_snr"] > 15.0  # ... and snr_drop_db
    assert jam_clear["time_ms"] == lost_clear["time_ms"] == end  # the first fix after the jammer stops
    gnss = run.counters["gnss"]
    assert gnss["bad_checksums"] + gnss["missing_checksums"] + gnss["truncated_sentences"] > 0  # corrupt_share
    assert 180 <= gnss["no_fix_epochs"] <= 200  # 3 min of nothing plus the end of the collapse


# -- the recorder: what the logs hold ---------------------------------------------------------


def test_parked_in_market_logs_follow_the_sampling_plan(replayed: Callable[[str], Replayed]) -> None:
    run = replayed("parked_in_market")
    scenario = run.scenario
    records = epochs(run.nmea)
    times = [r.time_ms for r in records]
    assert all(isinstance(r, Fix) for r in records)
    assert times == sorted(times)
    assert scenario.start_ms <= times[0]
    assert times[-1] <= scenario.end_ms
    drive = next(s for s in scenario.segments if s.kind == "drive")
    driving = [t for t in times if drive.start_ms <= t < drive.end_ms]
    assert {b - a for a, b in itertools.pairwise(driving)} == {1000}  # the scenario's 1 Hz
    dense = dense_spans(scenario, RecordPlan())
    # dense: idle + drive (until +381.988 s), then the door opened 45 s into the park for 20 s,
    # + 60 s, up to the next whole second (+507 s); and the last minute before the end
    # (+266,781.988 s), started early on a 20 s CAN round counted from +507 s
    start = scenario.start_ms
    assert dense == [(start, start + 507_000), (start + 266_707_000, scenario.end_ms)]
    assert scenario.end_ms == start + 266_781_988
    sparse_start, sparse_end = dense[0][1], dense[1][0]
    assert (sparse_end - sparse_start) % 20_000 == 0  # a whole number of CAN rounds
    parked = [t for t in times if sparse_start <= t <= sparse_end]
    assert parked[0] == sparse_start
    assert parked[-1] > sparse_end - 60_000
    assert {b - a for a, b in itertools.pairwise(parked)} == {60_000}  # one epoch a minute
    assert run.report["dense_s"] + run.report["sparse_s"] == scenario.duration_ms / 1000
    assert run.report["events"] == len(scenario.events)

    frames = list(can_lines(run.can))
    stamps = [t for t, _ in frames]
    assert stamps == sorted(stamps)
    assert scenario.start_ms <= stamps[0]
    assert stamps[-1] <= scenario.end_ms
    voltage = [t for t, frame in frames if frame.startswith(VOLTAGE_ID + "#")]
    assert max(b - a for a, b in itertools.pairwise(voltage)) <= MAX_CAN_GAP_MS
    door = run.event_ms("door_open")
    assert any(t == door and frame.startswith("3B0#") for t, frame in frames)  # on change, at the event's time


def test_commute_week_parks_as_a_sleeping_box_that_wakes_every_five_minutes(
    replayed: Callable[[str], Replayed],
) -> None:
    week = replayed("commute_week")
    plan = PLANS["commute_week"]
    assert (week.report["parked_interval_s"], week.report["can_round_s"]) == (300.0, 300.0)
    fixes = [r.time_ms for r in epochs(week.nmea)]
    stamps = sorted({t for t, _ in can_lines(week.can)})
    dense = dense_spans(week.scenario, plan)
    assert len(dense) == 12  # the start, ten drives (with the door openings around them), the end
    for (_, asleep), (awake, _) in itertools.pairwise(dense):
        assert (awake - asleep) % 300_000 == 0  # whole wakes between dense stretches
        wakes = list(range(asleep, awake + 1, 300_000))
        # one epoch and one round of the bus per wake, at the same millisecond, nothing in between
        assert [t for t in fixes if asleep <= t <= awake] == wakes
        assert [t for t in stamps if asleep <= t <= awake] == wakes
    driving = [t for t in fixes if dense[1][0] <= t < dense[1][1]]
    assert {b - a for a, b in itertools.pairwise(driving)} == {5000}  # 0.2 Hz


def test_unplug_logs_show_the_voltage_ramp_then_silence_while_gnss_continues(
    replayed: Callable[[str], Replayed],
) -> None:
    run = replayed("unplug")
    cut, silent = run.event_ms("power_cut"), run.event_ms("can_silent")
    frames = list(can_lines(run.can))
    volts = [
        (t, int(frame[6:8] + frame[4:6], 16) * 0.001)  # BATTERY_VOLTAGE: 16 bits little-endian, 1 mV
        for t, frame in frames
        if frame.startswith(VOLTAGE_ID + "#") and t >= cut
    ]
    # the "on change" frame at the cut, the 1 Hz rounds after it; nothing once CAN is silent
    assert sorted({t - cut for t, _ in volts}) == [0, 1000, 2000]
    at = dict(volts)
    assert at[cut] > 12.3
    assert 10.0 < at[cut + 1000] < 10.5
    assert at[cut + 2000] == pytest.approx(8.0, abs=0.01)
    assert max(t for t, _ in frames) < silent  # nothing at all (background included) once the box is cut off
    records = epochs(run.nmea)
    assert records[-1].time_ms == run.scenario.end_ms  # the receiver runs on its backup battery
    assert sum(1 for r in records if r.time_ms > silent) > 10


def test_gnss_jamming_log_shows_the_snr_collapse_then_no_fix(replayed: Callable[[str], Replayed]) -> None:
    run = replayed("gnss_jamming")
    start, total, end = run.event_ms("jamming_start"), run.event_ms("jamming_total"), run.event_ms("jamming_end")
    records = epochs(run.nmea)
    before = [r.mean_snr for r in records if isinstance(r, Fix) and r.time_ms < start and r.mean_snr is not None]
    collapse = [r for r in records if start <= r.time_ms < total]
    jammed = [r for r in records if total <= r.time_ms < end]
    assert min(before) > 35.0
    assert isinstance(collapse[0], Fix)
    assert isinstance(collapse[-1], NoFix)
    snr = [r.mean_snr for r in collapse if r.mean_snr is not None]
    assert snr[0] - snr[-1] > 20.0
    assert jammed
    assert all(isinstance(r, NoFix) and r.mean_snr is None for r in jammed)
    assert isinstance(next(r for r in records if r.time_ms >= end), Fix)


def test_every_timeline_event_is_played_in_order() -> None:
    scenario = load_scenario("night_doors")
    played = [name for step in render(scenario, RecordPlan(), None) for name in step.events]
    assert played == [event.name for event in scenario.events]


def test_recording_is_reproducible_byte_for_byte(tmp_path: Path) -> None:
    scenario = load_scenario("tow_away")
    first = record_to_files(scenario, tmp_path / "a.nmea", tmp_path / "a.log")
    second = record_to_files(scenario, tmp_path / "b.nmea", tmp_path / "b.log")
    assert first.as_dict() == second.as_dict()
    assert (tmp_path / "a.nmea").read_bytes() == (tmp_path / "b.nmea").read_bytes()
    assert (tmp_path / "a.log").read_bytes() == (tmp_path / "b.log").read_bytes()
    assert (tmp_path / "a.nmea").read_bytes().startswith(b"# lienwatch sim record: scenario tow_away (tow_away.toml)\n")


def test_denser_plan_gives_10_hz_fixes_and_the_100_ms_messages_at_their_rate(tmp_path: Path) -> None:
    scenario = load_scenario("gnss_jamming")
    record_to_files(scenario, tmp_path / "j.nmea", tmp_path / "j.log", RecordPlan(gnss_hz=10))
    start = scenario.start_ms
    fixes = [r.time_ms for r in epochs(tmp_path / "j.nmea") if start + 10_000 <= r.time_ms < start + 20_000]
    assert fixes == list(range(start + 10_000, start + 20_000, 100))
    speed = [t for t, frame in can_lines(tmp_path / "j.log") if frame.startswith("1A0#") and t < start + 2000]
    assert speed == list(range(start + 100, start + 2000, 100))  # at the start only the 20 ms message is due


def test_sparse_stretches_cover_parking_away_from_events() -> None:
    scenario = load_scenario("night_doors")
    pace = recording_pace(scenario, RecordPlan(parked_interval_s=60, event_margin_s=30))
    door = next(e.time_ms for e in scenario.events if e.name == "door_open")
    # dense: one epoch (and one CAN round) per 0.15 * 60 / 20 synthetic wall seconds, every scenario second
    assert pace.speed_at(door) == pytest.approx(1 / 0.45)
    assert pace.speed_at(door - 31_000) == pytest.approx(20 / 0.15)  # one CAN round per 20 s
    assert pace.speed_at(door + 29_000) == pytest.approx(1 / 0.45)


# -- candump lines ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("frame", "line"),
    [
        (CanFrame(0x1A0, bytes.fromhex("0011223344556677")), "(1712345678.123000) can0 1A0#0011223344556677"),
        (CanFrame(0x18FF00A0, b"\x01\x02", extended=True), "(1712345678.123000) can0 18FF00A0#0102"),
        (CanFrame(0x7FF, b""), "(1712345678.123000) can0 7FF#"),
        (CanFrame(0x123, remote=True, dlc=4), "(1712345678.123000) can0 123#R4"),
        (CanFrame(0x123, bytes(12), fd=True, bitrate_switch=True), "(1712345678.123000) can0 123##1" + "00" * 12),
    ],
)
def test_candump_lines(frame: CanFrame, line: str) -> None:
    assert candump_line(frame, 1_712_345_678_123) == line


def test_candump_lines_read_back_through_python_can(tmp_path: Path) -> None:
    path = tmp_path / "bus.log"
    frames = [
        (1_712_345_678_001, CanFrame(0x3C0, bytes.fromhex("3131E2FF00000000"))),
        (1_712_345_678_999, CanFrame(0x18FF00A0, b"\xaa", extended=True)),
        (1_712_345_679_000, CanFrame(0x123, remote=True, dlc=2)),
        (1_712_345_679_500, CanFrame(0x124, bytes(range(16)), fd=True, bitrate_switch=True)),
    ]
    path.write_text("".join(candump_line(f, t, "vcan1") + "\n" for t, f in frames), encoding="ascii")
    with can.LogReader(path) as reader:
        read = list(reader)
    assert [(round(m.timestamp * 1000), m.arbitration_id, m.is_extended_id) for m in read] == [
        (t, f.arbitration_id, f.extended) for t, f in frames
    ]
    assert [bytes(m.data) for m in read if not m.is_remote_frame] == [f.data for _, f in frames if not f.remote]
    assert [m.channel for m in read] == ["vcan1"] * 4
    assert read[2].is_remote_frame
    assert read[2].dlc == 2
    assert read[3].is_fd
    assert read[3].bitrate_switch


def test_candump_line_refuses_times_before_1970() -> None:
    with pytest.raises(RecordError, match="before 1970"):
        candump_line(CanFrame(0x100), -1)


# -- the plan and the CLI -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"gnss_hz": 0.05}, r"GNSS rate 0.05 Hz is outside \[0.1, 10\]"),
        ({"gnss_hz": 11.0}, r"GNSS rate 11.0 Hz is outside \[0.1, 10\]"),
        ({"gnss_hz": float("nan")}, "GNSS rate nan Hz"),
        ({"parked_interval_s": 0.5}, r"parked interval 0.5 s is outside \[1, 3600\]"),
        ({"parked_interval_s": float("inf")}, r"parked interval inf s is outside"),
        ({"event_margin_s": -1.0}, r"event margin -1.0 s is outside \[0, 3600\]"),
        ({"channel": "can 0"}, "CAN channel name 'can 0' must match"),
        ({"channel": ""}, "CAN channel name '' must match"),
    ],
)
def test_bad_plans_are_refused_with_the_limit(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(RecordError, match=message) as caught:
        RecordPlan(**kwargs)
    assert caught.value.reason == "record_error"


def test_sim_record_cli_writes_both_logs_and_a_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    nmea, can_log = tmp_path / "u.nmea", tmp_path / "u.log"
    argv = ["record", "--scenario", "unplug", "--nmea", str(nmea), "--can", str(can_log), "--channel", "vcan0"]
    assert sim_cli.main([*argv, "--parked-interval", "120", "--event-margin", "30"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["scenario"] == "unplug"
    assert (summary["parked_interval_s"], summary["event_margin_s"], summary["gnss_hz"]) == (120.0, 30.0, 1.0)
    assert summary["counters"]["events"] == summary["events"] == 4
    assert summary["can_frames"] == len(can_log.read_text().splitlines())
    assert summary["nmea_bytes"] < nmea.stat().st_size  # plus the comment header
    assert {line.split()[1] for line in can_log.read_text().splitlines()} == {"vcan0"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["u.log", "u.nmea"]


def test_sim_record_cli_errors_exit_2_and_leave_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    out.mkdir()
    broken = tmp_path / "broken.toml"
    broken.write_text('start = 2026-03-02T00:00:00+08:00\nposition = [31.2, 121.5]\n[[segment]]\nkind = "fly"\n')
    cases = [
        (["--scenario", "unplug", "--nmea", str(out / "same"), "--can", str(out / "same")], "must be different files"),
        (["--scenario", "unplug", "--nmea", str(tmp_path / "no" / "u.nmea"), "--can", str(out / "u.log")], "u.nmea"),
        (["--scenario", "unplug", "--nmea", str(out / "u.nmea"), "--can", str(out)], "cannot write the log"),
        (
            ["--scenario", "unplug", "--nmea", str(out / "u.nmea"), "--can", str(out / "u.log"), "--gnss-hz", "0"],
            "0.0 Hz",
        ),
        (["--scenario", str(broken), "--nmea", str(out / "u.nmea"), "--can", str(out / "u.log")], "segment[0].kind"),
        (["--scenario", "no_such_scenario", "--nmea", str(out / "u.nmea"), "--can", str(out / "u.log")], "no_such"),
    ]
    for argv, message in cases:
        assert sim_cli.main(["record", *argv]) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("lienwatch sim: "), err
        assert message in err, err
        assert list(out.iterdir()) == [], argv  # no half-written log, no .partial left


def test_real_commands_record_and_replay_in_subprocesses(tmp_path: Path, processes: ChildProcesses) -> None:
    nmea, can_log = tmp_path / "jam.nmea", tmp_path / "jam.log"
    recorded = processes.run(
        [sys.executable, "-m", "firmware_sim", "record", "--scenario", "gnss_jamming",
         "--nmea", str(nmea), "--can", str(can_log)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert recorded.returncode == 0, recorded.stderr
    assert json.loads(recorded.stdout)["scenario"] == "gnss_jamming"
    config = write_agent_toml(tmp_path)
    replayed = processes.run(
        [sys.executable, "-m", "edge", "replay", "--config", str(config),
         "--nmea", str(nmea), "--can", str(can_log), "--jsonl"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert replayed.returncode == 0, replayed.stderr
    alerts = [json.loads(line) for line in replayed.stdout.splitlines() if '"rule"' in line]
    assert [(a["rule"], a["state"]) for a in alerts] == [
        ("gnss_lost", "raised"),
        ("gnss_jamming", "raised"),
        ("gnss_jamming", "cleared"),
        ("gnss_lost", "cleared"),
    ]
