"""The reporting policy (edge.reporting): what goes up, the track's error bound, parking, evidence."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.batcher import Batcher
from edge.config import BatchSettings, ConfigError, ReportingSettings, parse_config, reporting_with_overrides
from edge.downlink_apply import DownlinkApplier
from edge.reporting import IGNITION_SIGNAL, ReportingPolicy, TrackSimplifier, segment_distance_m
from edge.rules import RulesConfig
from edge.uplink import ConfigGate
from protocol import Alert, AlertState, DailyStats, DeviceConfig, Fix, Severity, SignalSample, config_topic, seal_config

T0 = 1_767_225_600_000
DEVICE = "car-report"
LAT0, LON0 = 31.2, 121.5
M_PER_DEG_LAT = 6_371_008.8 * math.pi / 180


def fix_at(t_s: float, east_m: float, north_m: float, speed: float | None = 10.0) -> Fix:
    lat = LAT0 + north_m / M_PER_DEG_LAT
    lon = LON0 + east_m / (M_PER_DEG_LAT * math.cos(math.radians(LAT0)))
    return Fix(time_ms=T0 + int(t_s * 1000), lat=lat, lon=lon, speed_mps=speed)


def xy(fix: Fix) -> tuple[float, float]:
    north = (fix.lat - LAT0) * M_PER_DEG_LAT
    east = (fix.lon - LON0) * M_PER_DEG_LAT * math.cos(math.radians(LAT0))
    return east, north


def track_error_m(full: list[Fix], uploaded: list[Fix]) -> float:
    """Largest distance from a full-rate fix to the uploaded polyline segment spanning its time."""
    up = sorted(uploaded, key=lambda f: f.time_ms)
    worst = 0.0
    j = 0
    for fix in full:
        while j + 1 < len(up) and up[j + 1].time_ms < fix.time_ms:
            j += 1
        if fix.time_ms < up[0].time_ms or j + 1 >= len(up):
            continue
        (ax, ay), (bx, by), (px, py) = xy(up[j]), xy(up[j + 1]), xy(fix)
        worst = max(worst, segment_distance_m(px - ax, py - ay, bx - ax, by - ay))
    return worst


def run(policy: ReportingPolicy, records: list[Any]) -> list[Any]:
    return [out for record in records for out in policy.offer(record)]


def test_a_straight_drive_uploads_a_few_fixes_and_keeps_the_error_bound() -> None:
    full = [fix_at(t, 15.0 * t, 0.3 * math.sin(t)) for t in range(600)]  # 10 minutes east at 54 km/h
    policy = ReportingPolicy(ReportingSettings())
    uploaded = [r for r in run(policy, full) if isinstance(r, Fix)]
    assert uploaded[0] == full[0]
    assert len(uploaded) <= 8  # the max interval (120 s) forces one every 2 minutes, nothing else
    assert track_error_m(full, uploaded) <= 10.0
    assert policy.counters["reporting_fixes_in"] == 600


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.floats(-40, 40), st.floats(-40, 40)), min_size=2, max_size=300))
def test_any_track_stays_within_the_tolerance(steps: list[tuple[float, float]]) -> None:
    full, east, north = [], 0.0, 0.0
    for t, (de, dn) in enumerate(steps):
        east, north = east + de, north + dn
        full.append(fix_at(t, east, north))
    simplifier = TrackSimplifier(tolerance_m=10.0, max_interval_ms=120_000)
    uploaded = [u for f in full for u in simplifier.offer(f)] + simplifier.flush()
    assert len({u.time_ms for u in uploaded}) == len(uploaded)  # nothing twice
    assert track_error_m(full, uploaded) <= 10.0 + 1e-6


def test_parking_uploads_the_spot_then_one_fix_per_interval_and_a_tow_moves_at_once() -> None:
    policy = ReportingPolicy(ReportingSettings(parked_after_s=60, parked_fix_interval_s=600))
    records: list[Any] = [SignalSample(IGNITION_SIGNAL, T0 - 1000, "ON")]
    records += [fix_at(t, 10.0 * t, 0.0) for t in range(30)]  # driving
    records.append(SignalSample(IGNITION_SIGNAL, T0 + 30_000, "OFF"))
    records += [fix_at(t, 290.0, 0.0, speed=0.0) for t in range(30, 3630)]  # one hour parked
    out = run(policy, records)
    assert policy.parked
    parked_fixes = [f for f in out if isinstance(f, Fix) and f.time_ms > T0 + 30_000]
    # entering parked at 30 + 60 s, then every 600 s
    assert [round((f.time_ms - T0) / 1000) for f in parked_fixes] == [90, 690, 1290, 1890, 2490, 3090]
    assert policy.batch_max_age_s == 3600.0
    tow = fix_at(3630, 295.0, 0.0, speed=3.0)  # ignition still off, moving: a tow
    assert policy.offer(tow) == [tow]
    assert not policy.parked
    assert policy.batch_max_age_s is None
    assert policy.counters["reporting_parked_entered"] == 1


def test_without_a_speed_the_car_parks_by_staying_in_place() -> None:
    policy = ReportingPolicy(ReportingSettings(parked_after_s=60))
    out = run(policy, [fix_at(t, 0.5 * (t % 3), 0.0, speed=None) for t in range(200)])
    assert policy.parked
    assert len([f for f in out if isinstance(f, Fix)]) == 2  # the first fix, then the parking spot


def test_an_alert_brings_the_full_rate_window_around_it_each_record_once() -> None:
    policy = ReportingPolicy(ReportingSettings(parked_after_s=30, evidence_before_s=20, evidence_after_s=10))
    parked = [fix_at(t, 0.0, 0.0, speed=0.0) for t in range(100)]
    volts = [SignalSample("Vehicle.LowVoltageBattery.CurrentVoltage", T0 + t * 1000 + 500, 12.6) for t in range(100)]
    records: list[Any] = sorted([*parked, *volts], key=lambda r: r.time_ms)
    out = run(policy, records)
    assert len([r for r in out if isinstance(r, Fix)]) == 2
    # numeric: every 10 s while not yet parked (0, 10, 20 s), then one per 900 s
    assert len([r for r in out if isinstance(r, SignalSample)]) == 3
    alert = Alert(
        rule="power_cut",
        severity=Severity.HIGH,
        time_ms=T0 + 100_000,
        episode="ep1",
        state=AlertState.RAISED,
        evidence={"cause": "signal_lost"},
    )
    released = policy.offer(alert)
    assert released[-1] is alert
    evidence = released[:-1]
    assert {r.time_ms for r in evidence if isinstance(r, Fix)} == {T0 + t * 1000 for t in range(80, 100)}
    assert len([r for r in evidence if isinstance(r, SignalSample)]) == 20
    after = [fix_at(t, 0.0, 0.0, speed=0.0) for t in range(100, 115)]
    up_after = run(policy, after)
    assert [f.time_ms for f in up_after] == [T0 + t * 1000 for t in range(100, 111)]  # 10 s after, then parked again
    everything = [*out, *released, *up_after]
    ids = [id(r) for r in everything]
    assert len(ids) == len(set(ids))
    assert policy.counters["reporting_evidence_up"] == 40


def test_state_signals_go_up_on_change_numeric_ones_are_thinned() -> None:
    policy = ReportingPolicy(ReportingSettings(moving_sample_interval_s=10))
    door = "Vehicle.Cabin.Door.Row1.DriverSide.IsOpen"
    samples = [SignalSample(door, T0 + i, i % 2 == 0) for i in range(4)]
    samples += [SignalSample(door, T0 + 10, True), SignalSample(door, T0 + 11, True)]  # a repeat: not a change
    speeds = [SignalSample("Vehicle.Speed", T0 + i * 1000, float(i)) for i in range(30)]
    out = run(policy, [*samples, *speeds])
    assert [s.value for s in out if s.name == door] == [True, False, True, False, True]
    assert [s.time_ms - T0 for s in out if s.name == "Vehicle.Speed"] == [0, 10_000, 20_000]


def test_disabled_uploads_everything_and_stats_pass_through() -> None:
    policy = ReportingPolicy(ReportingSettings(enabled=False))
    records: list[Any] = [fix_at(t, 0.0, 0.0, speed=0.0) for t in range(500)]
    stats = DailyStats(
        day="2026-01-01",
        time_ms=T0 + 600_000,
        distance_m=0.0,
        driving_s=0,
        harsh_accel=0,
        harsh_brake=0,
        final=True,
        odometer_km=None,
    )
    assert run(policy, [*records, stats]) == [*records, stats]
    assert policy.batch_max_age_s is None


def test_config_section_and_downlink_overrides() -> None:
    base = {"device": {"id": DEVICE, "key_file": "k.key"}}
    config = parse_config(
        {**base, "reporting": {"parked_fix_interval_s": 300, "enabled": True}}, Path("/tmp"), environ={}
    )
    assert config.reporting.parked_fix_interval_s == 300.0
    env = {"LIENWATCH_AGENT_REPORTING_PARKED_BATCH_S": "2h"}
    assert parse_config(base, Path("/tmp"), environ=env).reporting.parked_batch_s == 7200.0
    for bad, message in [
        ({"moving_tolerance_m": 0}, "must be a positive number"),
        ({"evidence_before_s": 4000}, "must be in [0, 3600]"),
        ({"parked_batch_s": 100_000}, "at most 86400"),
        ({"nonsense": 1}, "unknown key 'nonsense'"),
        ({"enabled": "yes"}, "must be true or false"),
    ]:
        with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
            parse_config({**base, "reporting": bad}, Path("/tmp"), environ={})
    tightened = reporting_with_overrides(config.reporting, {"parked_fix_interval_s": 60, "moving_tolerance_m": 5})
    assert (tightened.parked_fix_interval_s, tightened.moving_tolerance_m, tightened.enabled) == (60.0, 5.0, True)
    with pytest.raises(ConfigError, match="unknown key 'x'"):
        reporting_with_overrides(config.reporting, {"x": 1})
    with pytest.raises(ConfigError, match="must be a map"):
        reporting_with_overrides(config.reporting, [1])  # type: ignore[arg-type]


class _Engine:
    def set_config(self, rules: RulesConfig) -> None: ...
    def set_markets(self, markets: object) -> None: ...
    def set_regions(self, regions: object) -> None: ...


def test_the_downlink_reporting_section_is_merged_over_the_local_settings(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    gate = ConfigGate(DEVICE, key.public_key(), tmp_path / "downlink.cose")
    local = ReportingSettings(parked_fix_interval_s=900)
    policy = ReportingPolicy(local)
    applier = DownlinkApplier(
        gate,
        _Engine(),
        RulesConfig,
        tmp_path,  # type: ignore[arg-type]
        local_reporting=lambda: local,
        set_reporting=policy.set_settings,
    )

    def push(version: int, body: dict[str, object]) -> None:
        topic = config_topic(DEVICE)
        applier.handle(topic, seal_config(DeviceConfig(DEVICE, version, T0, body), key, topic))

    push(1, {"reporting": {"parked_fix_interval_s": 120, "moving_tolerance_m": 5.0}})
    assert (policy.settings.parked_fix_interval_s, policy.settings.moving_tolerance_m) == (120.0, 5.0)
    assert policy.simplifier.tolerance_m == 5.0
    push(2, {"reporting": {"parked_fix_interval_s": -1}})  # refused whole, the settings stay
    assert policy.settings.parked_fix_interval_s == 120.0
    assert gate.counters["config_rejected_invalid_body"] == 1
    push(3, {"markets": []})  # no section: the local settings again
    assert policy.settings == local


def test_the_batcher_keeps_a_parked_batch_open_for_the_idle_age() -> None:
    batcher = Batcher(BatchSettings(max_age_s=60))
    batcher.set_idle_max_age(3600.0)
    assert batcher.add(fix_at(0, 0, 0, 0.0), 0.0) == []
    assert batcher.add(fix_at(900, 0, 0, 0.0), 900.0) == []
    assert batcher.poll(3599.0) == []
    assert len(batcher.poll(3600.0)) == 1
    batcher.add(fix_at(3600, 0, 0, 0.0), 3600.0)
    batcher.set_idle_max_age(None)  # moving again: the [batch] age
    assert len(batcher.poll(3660.0)) == 1
    batcher.add(fix_at(3700, 0, 0, 0.0), 3700.0)
    batcher.set_idle_max_age(3600.0)
    assert batcher.poll(3711.0, active=True) != []  # an open episode wins: max_age_active_s (10 s)
