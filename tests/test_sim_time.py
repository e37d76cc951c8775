"""Simulator core under time acceleration, driven by a synthetic wall clock (no sleeping).

Each test plays a scenario through :class:`Simulation` exactly as the runner does
(``advance`` at ``next_due``), then decodes the output independently: NMEA with pynmea2,
CAN with cantools from the vehicle's DBC.
"""

from __future__ import annotations

import contextlib
import itertools
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import cast

import cantools
import pynmea2
import pytest

from firmware_sim import CanCatalog, Scenario, Simulation, Step, distance_m, load_scenario, parse_scenario

_LOADED = cantools.database.load_file(
    str(Path(__file__).parent.parent / "edge" / "data" / "generic_car.dbc"), strict=False
)
assert isinstance(_LOADED, cantools.database.can.Database)
DBC = _LOADED
CATALOG = CanCatalog()
WALL0 = 1_000_000.0
MARKET_WGS84 = (31.301992, 121.245568)


@dataclass
class Played:
    sim: Simulation
    steps: list[tuple[float, Step]]

    def sentences(self) -> Iterator[tuple[float, str]]:
        for wall, step in self.steps:
            for line in step.gnss.split(b"\r\n"):
                if line.startswith(b"$"):
                    yield wall, line.decode("ascii", errors="replace")

    def rmc(self) -> list[tuple[float, pynmea2.RMC]]:
        out = []
        for wall, line in self.sentences():
            if line.startswith("$GNRMC"):
                try:
                    out.append((wall, pynmea2.parse(line, check=True)))
                except (pynmea2.ParseError, pynmea2.ChecksumError):
                    continue
        return out

    def frames(self, name: str) -> list[tuple[float, int, dict]]:
        """(wall, scenario_ms of the step, decoded signals) for every frame of message ``name``."""
        frame_id = DBC.get_message_by_name(name).frame_id
        return [
            (wall, step.scenario_ms, cast(dict, DBC.decode_message(frame_id, frame.data, decode_choices=False)))
            for wall, step in self.steps
            for frame in step.frames
            if frame.arbitration_id == frame_id and not frame.extended
        ]


def play(scenario: Scenario, *, speed: float | None = None) -> Played:
    pace = scenario.pace(override=speed)
    sim = Simulation(scenario, pace=pace, wall_start=WALL0, catalog=CATALOG)
    steps = []
    wall = WALL0
    for _ in range(2_000_000):
        step = sim.advance(wall)
        steps.append((wall, step))
        if step.finished:
            return Played(sim, steps)
        wall = sim.next_due(wall)
    raise AssertionError("the simulation never finished")


def rmc_ms(message: pynmea2.RMC) -> int:
    stamp = datetime.combine(message.datestamp, message.timestamp).replace(tzinfo=UTC)
    return round(stamp.timestamp() * 1000)


def event_ms(scenario: Scenario, name: str) -> list[int]:
    return [e.time_ms for e in scenario.events if e.name == name]


@pytest.fixture(scope="module")
def market() -> Played:
    return play(load_scenario("parked_in_market"))


def test_three_days_replay_in_seconds_with_nmea_on_the_scenario_clock() -> None:
    scenario = load_scenario("parked_in_market")
    played = play(scenario, speed=100_000)
    walls = [wall for wall, _ in played.steps]
    assert walls[-1] - WALL0 == pytest.approx(scenario.duration_ms / 100_000 / 1000, abs=0.01)  # 2.7 s
    stamps = [rmc_ms(m) for _, m in played.rmc()]
    assert stamps == sorted(set(stamps))
    assert stamps[0] == scenario.start_ms
    assert stamps[-1] <= scenario.end_ms
    assert stamps[-1] - stamps[0] >= 3 * 86_400_000 - 10_000_000
    # at most 10 epochs per wall second: at 100,000x that is one epoch per 10,000 s
    gaps = {b - a for a, b in itertools.pairwise(stamps)}
    assert gaps == {10_000_000}


def test_epoch_and_frame_rates_stay_bounded_in_wall_time(market: Played) -> None:
    epochs = Counter(int(wall - WALL0) for wall, m in market.rmc())
    assert max(epochs.values()) <= 11
    frames = Counter(int(wall - WALL0) for wall, step in market.steps for _ in step.frames)
    # 50 + 4 x 10 + 2 x 1 DBC frames/s + 50 background + a few on-change frames
    assert max(frames.values()) <= 150
    assert market.sim.counters["gnss_epochs_skipped"] == 0


def test_market_fixes_jitter_around_the_parking_spot(market: Played) -> None:
    scenario = market.sim.scenario
    park = scenario.segments[-1]
    fixes = [m for _, m in market.rmc() if m.status == "A" and rmc_ms(m) > park.start_ms]
    assert len(fixes) > 100
    distances = [distance_m(m.latitude, m.longitude, *park.position) for m in fixes]
    assert max(distances) < 25  # parked jitter, a few metres
    assert max(distances) > 0.5  # ...but it does jitter
    assert all(distance_m(m.latitude, m.longitude, *MARKET_WGS84) < 150 for m in fixes)
    assert all(float(m.spd_over_grnd) == 0.0 for m in fixes)


def test_market_drive_passes_its_waypoints(market: Played) -> None:
    scenario = market.sim.scenario
    drive = scenario.segments[1]
    assert drive.route is not None
    fixes = [m for _, m in market.rmc() if drive.start_ms <= rmc_ms(m) <= drive.end_ms and m.status == "A"]
    assert fixes
    for m in fixes:
        expected = drive.route.at(rmc_ms(m) - drive.start_ms)
        assert distance_m(m.latitude, m.longitude, expected.lat, expected.lon) < 25
    odometer = [signals["ODOMETER_KM"] for _, ms, signals in market.frames("ODOMETER")]
    assert odometer[-1] - odometer[0] == pytest.approx(drive.route.length_m / 1000, abs=0.2)


def test_night_door_frames_follow_the_script_at_1x() -> None:
    scenario = load_scenario("night_doors")
    played = play(scenario)
    pace = played.sim.pace
    bits = {"FL": "DOOR_OPEN_FL", "RR": "DOOR_OPEN_RR", "TRUNK": "TRUNK_OPEN"}
    opens = [e for e in scenario.events if e.name == "door_open"]
    doors = played.frames("SEATS_DOORS")
    for event in opens:
        signal = bits[event.data["door"]]
        # the on-change frame goes out in the step that plays the event, at its planned wall time
        (wall, _step) = next((w, s) for w, s in played.steps if event in s.events)
        assert wall - WALL0 == pytest.approx(pace.wall_at(event.time_ms), abs=0.002)
        first = next(d for d in doors if d[0] == wall and d[2][signal] == 1)
        assert first[2]["LOCK_STATE"] == 0
        close_ms = event.time_ms + round(event.data["open_for_s"] * 1000)
        during = [d for d in doors if event.time_ms <= d[1] < close_ms]
        assert during
        assert all(d[2][signal] == 1 for d in during)
        after = [d for d in doors if d[1] > close_ms]
        assert after
        assert after[0][2][signal] == 0
    closed = [d for d in doors if not any(e.time_ms <= d[1] <= e.time_ms + e.data["open_for_s"] * 1000 for e in opens)]
    assert all(d[2]["LOCK_STATE"] == 1 for d in closed)
    ignition = {signals["IGNITION_STATE"] for _, _, signals in played.frames("POWER_STATE")}
    assert ignition == {0}


def test_unplug_voltage_falls_below_9_v_then_can_is_silent_while_gnss_goes_on() -> None:
    scenario = load_scenario("unplug")
    played = play(scenario)
    (cut,) = event_ms(scenario, "power_cut")
    (silent,) = event_ms(scenario, "can_silent")
    volts = played.frames("BATTERY_12V")
    before = [v["BATTERY_VOLTAGE"] for _, ms, v in volts if ms < cut]
    assert min(before) > 12.0
    falling = [v["BATTERY_VOLTAGE"] for _, ms, v in volts if cut <= ms < silent]
    assert min(falling) < 9.0
    assert falling == sorted(falling, reverse=True)
    assert not [1 for _, step in played.steps if step.scenario_ms > silent and step.frames]
    late_fixes = [m for _, m in played.rmc() if rmc_ms(m) > silent + 60_000]
    assert len(late_fixes) > 10
    assert all(m.status == "A" for m in late_fixes)


def test_tow_moves_on_gnss_with_ignition_off_and_zero_can_speed() -> None:
    scenario = load_scenario("tow_away")
    played = play(scenario)
    tow = next(s for s in scenario.segments if s.kind == "tow")
    fixes = [m for _, m in played.rmc() if tow.start_ms + 5000 <= rmc_ms(m) <= tow.end_ms - 5000]
    assert len(fixes) > 30
    assert all(float(m.spd_over_grnd) * 1.852 == pytest.approx(20.0, abs=1.5) for m in fixes)
    moved = distance_m(fixes[0].latitude, fixes[0].longitude, fixes[-1].latitude, fixes[-1].longitude)
    assert 1700 < moved < 2100
    during = [v for _, ms, v in played.frames("POWER_STATE") if tow.start_ms <= ms <= tow.end_ms]
    assert during
    assert all(v["IGNITION_STATE"] == 0 and v["ENGINE_RUNNING"] == 0 for v in during)
    speeds = [v for _, ms, v in played.frames("VEHICLE_SPEED") if tow.start_ms <= ms <= tow.end_ms]
    assert speeds
    assert all(v["SPEED_KPH"] == 0 and v["SPEED_VALID"] == 0 for v in speeds)


def test_jamming_loses_the_fix_while_can_speed_continues() -> None:
    scenario = load_scenario("gnss_jamming")
    played = play(scenario)
    (start,) = event_ms(scenario, "jamming_start")
    (total,) = event_ms(scenario, "jamming_total")
    (end,) = event_ms(scenario, "jamming_end")
    rmc = [(rmc_ms(m), m.status) for _, m in played.rmc()]
    assert all(status == "A" for ms, status in rmc if ms < start)
    assert all(status == "V" for ms, status in rmc if total <= ms < end)
    assert len([1 for ms, _ in rmc if total <= ms < end]) >= 15
    assert any(status == "A" for ms, status in rmc if ms > end + 2000)
    # the fix goes during the collapse, before jamming_total
    assert any(status == "V" for ms, status in rmc if start <= ms < total)
    speeds = [v["SPEED_KPH"] for _, ms, v in played.frames("VEHICLE_SPEED") if total <= ms < end]
    assert speeds
    assert all(59 <= s <= 61 for s in speeds)
    gsv_snr = []
    for _, line in played.sentences():
        if line.startswith("$GPGSV"):
            with contextlib.suppress(pynmea2.ChecksumError):
                gsv_snr.append(pynmea2.parse(line, check=True))
    assert gsv_snr


def test_corrupted_lines_are_exactly_the_counted_ones() -> None:
    played = play(load_scenario("gnss_jamming"))
    failures = 0
    for _, line in played.sentences():
        try:
            pynmea2.parse(line, check=True)
        except (pynmea2.ParseError, pynmea2.ChecksumError, ValueError, AttributeError, TypeError):
            failures += 1
    raw_lines = sum(step.gnss.count(b"\r\n") for _, step in played.steps)
    assert raw_lines == played.sim.counters["gnss_sentences"]
    assert played.sim.counters["gnss_lines_corrupted"] > 0
    # a truncated line may lose its '$' start: count those too
    truncated_without_dollar = sum(
        1 for _, step in played.steps for line in step.gnss.split(b"\r\n") if line and not line.startswith(b"$")
    )
    assert failures + truncated_without_dollar == played.sim.counters["gnss_lines_corrupted"]


def test_faults_noise_receiver_restart_and_unplug() -> None:
    scenario = load_scenario("faults")
    played = play(scenario)
    counters = played.sim.counters
    assert counters["noise_bytes_gnss"] == 200
    (stop,) = event_ms(scenario, "gnss_stop")
    (restart,) = event_ms(scenario, "gnss_restart")
    stamps = [rmc_ms(m) for _, m in played.rmc() if m.datestamp.year == 2026]
    assert stamps
    assert not [ms for ms in stamps if stop <= ms < restart + 3000]
    banner = [line for _, line in played.sentences() if line.startswith("$GNTXT")]
    assert len(banner) == 1
    assert any(m.datestamp.year == 1980 for _, m in played.rmc())  # cold start default date
    (unplug,) = event_ms(scenario, "can_unplug")
    (replug,) = event_ms(scenario, "can_replug")
    assert not [1 for _, step in played.steps if unplug < step.scenario_ms < replug and step.frames]
    assert [1 for _, step in played.steps if step.scenario_ms > replug and step.frames]


def test_ignition_follows_segments_with_a_start_pulse() -> None:
    text = """
start = 2026-03-02T08:00:00+08:00
position = [31.22, 121.54]
speed = 10
[[segment]]
kind = "park"
duration = "20s"
[[segment]]
kind = "drive"
speed_kmh = 36
route = [[31.221, 121.54]]
"""
    played = play(parse_scenario(text))
    states = [v["IGNITION_STATE"] for _, _, v in played.frames("POWER_STATE")]
    assert states[0] == 0
    assert 3 in states  # START while cranking
    assert states[-1] == 2
    assert states.index(3) < states.index(2)


def test_background_ids_must_not_be_dbc_messages() -> None:
    text = """
start = 2026-03-02T08:00:00+08:00
position = [31.22, 121.54]
[can]
background_fps = 10
background_ids = [0x3B0]
[[segment]]
kind = "park"
duration = "20s"
"""
    with pytest.raises(Exception, match="DBC messages"):
        Simulation(parse_scenario(text), pace=parse_scenario(text).pace(), wall_start=0.0, catalog=CATALOG)


def test_background_frames_count_and_mix() -> None:
    text = """
start = 2026-03-02T08:00:00+08:00
position = [31.22, 121.54]
[can]
background_fps = 200
extended_share = 0.25
[[segment]]
kind = "park"
duration = "5s"
"""
    played = play(parse_scenario(text))
    background = [f for _, step in played.steps for f in step.frames if f.arbitration_id not in CATALOG.frame_ids]
    assert len(background) == pytest.approx(1000, abs=25)
    extended = [f for f in background if f.extended]
    assert len(extended) == pytest.approx(len(background) / 4, abs=2)
    sequence = [int.from_bytes(f.data[:4], "big") for f in background]
    assert sequence == list(range(1, len(background) + 1))
