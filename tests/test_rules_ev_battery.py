"""Traction battery (#17): hv_disconnect, soh_drop and the EV figures of the daily statistics."""

from __future__ import annotations

import json

import pytest

from edge.errors import ConfigError
from edge.rules import Engine, RulesConfig, StateError
from protocol import AlertState, DailyStats, Severity, SignalSample
from tests.timeline import IGNITION, MIN, SPEED, T0, VOLTAGE, H, S, alerts, engine, run, sig

PACK = "Vehicle.Powertrain.TractionBattery"
SOC = f"{PACK}.StateOfCharge.Displayed"
SOH = f"{PACK}.StateOfHealth"
PACK_V = f"{PACK}.CurrentVoltage"
PACK_A = f"{PACK}.CurrentCurrent"
CHARGING = f"{PACK}.Charging.IsCharging"
CONNECTED = f"{PACK}.IsPowerConnected"
DAY = 24 * H


def parked_bus(t0: int, t1: int, every_ms: int, *, bms: bool) -> list[SignalSample]:
    """A parked car's bus: the 12 V heartbeat, and the BMS's pack voltage while it is there."""
    out = []
    for t in range(t0, t1 + 1, every_ms):
        out.append(sig(VOLTAGE, t, 12.6 if (t // every_ms) % 2 else 12.3))
        if bms:
            out.append(sig(PACK_V, t, 380.0 + (t // every_ms) % 2 * 3))
    return out


# ------------------------------------------------------------------ hv_disconnect


def test_a_pack_whose_bms_vanishes_from_a_live_bus_while_parked_raises_once_and_clears_when_back() -> None:
    rules = engine()
    out = run(rules, [sig(IGNITION, T0, "OFF"), *parked_bus(T0, T0 + 10 * MIN, 60 * S, bms=True)])
    removed_at = T0 + 10 * MIN  # the last BMS sample
    out += run(rules, parked_bus(T0 + 11 * MIN, T0 + 13 * MIN, 60 * S, bms=False))
    assert alerts(out) == []  # 3 min without the BMS: under missing_after_s (240 s)
    [alert] = alerts(rules.feed(sig(VOLTAGE, T0 + 14 * MIN, 12.6)))
    assert (alert.rule, alert.severity, alert.state) == ("hv_disconnect", Severity.HIGH, AlertState.RAISED)
    assert alert.episode == f"hv_disconnect:{removed_at}"
    assert alert.evidence["cause"] == "bms_silent"
    assert alert.evidence["ignition"] == "OFF"
    assert alert.evidence["pack_voltage_v"] == 380.0
    assert alerts(run(rules, parked_bus(T0 + 15 * MIN, T0 + 40 * MIN, 60 * S, bms=False))) == []  # once
    assert "hv_disconnect" in rules.active_rules
    [clear] = alerts(rules.feed(sig(PACK_V, T0 + 41 * MIN, 383.0)))
    assert clear.state is AlertState.CLEARED
    assert clear.episode == alert.episode
    assert clear.evidence["reason"] == "bms_back"


def test_a_whole_bus_asleep_is_not_a_missing_pack() -> None:
    rules = engine()
    run(rules, [sig(IGNITION, T0, "OFF"), *parked_bus(T0, T0 + 5 * MIN, 60 * S, bms=True)])
    # the box sleeps and wakes every 5 minutes: one round of the bus per wake, 12 V first
    wakes = parked_bus(T0 + 10 * MIN, T0 + 5 * H, 5 * MIN, bms=True)
    assert alerts(run(rules, wakes)) == []
    # and a snapshot taken mid-way restores the same behaviour
    restored = Engine(rules.config, state=json.loads(json.dumps(rules.snapshot())))
    assert alerts(run(restored, parked_bus(T0 + 5 * H + 5 * MIN, T0 + 8 * H, 5 * MIN, bms=True))) == []


def test_no_opinion_without_a_known_ignition_while_driving_or_without_a_traction_battery() -> None:
    unknown = engine()
    out = run(unknown, [*parked_bus(T0, T0 + 2 * MIN, 60 * S, bms=True)])
    out += run(unknown, parked_bus(T0 + 3 * MIN, T0 + 30 * MIN, 60 * S, bms=False))
    assert alerts(out) == []  # ignition never heard
    driving = engine()
    out = run(driving, [sig(IGNITION, T0, "ON"), *parked_bus(T0, T0 + 2 * MIN, 60 * S, bms=True)])
    out += run(driving, [sig(SPEED, t, 50.0 + t % 7) for t in range(T0 + 3 * MIN, T0 + 30 * MIN, 20 * S)])
    assert alerts(out, "hv_disconnect") == []  # the car is on: a BMS fault, not a removal while parked
    combustion = engine()
    out = run(combustion, [sig(IGNITION, T0, "OFF"), *parked_bus(T0, T0 + 3 * H, 60 * S, bms=False)])
    assert alerts(out) == []  # never heard a BMS: no traction battery at all


def test_a_pack_voltage_collapse_while_the_bms_talks_raises_pack_voltage_low() -> None:
    rules = engine(hv_disconnect={"low_for_s": 10})
    run(rules, [sig(IGNITION, T0, "OFF"), sig(PACK_V, T0, 381.0)])
    assert alerts(run(rules, [sig(PACK_V, T0 + S, 12.0), sig(VOLTAGE, T0 + 10 * S, 12.5)])) == []
    [alert] = alerts(rules.feed(sig(VOLTAGE, T0 + 11 * S, 12.6)))
    assert alert.evidence["cause"] == "pack_voltage_low"
    assert alert.episode == f"hv_disconnect:{T0 + S}"
    assert alerts(rules.feed(sig(PACK_V, T0 + 20 * S, 70.0))) == []  # under 60 + 20 V hysteresis
    [clear] = alerts(rules.feed(sig(PACK_V, T0 + 21 * S, 380.0)))
    assert clear.evidence["reason"] == "voltage_back"


def test_hv_disconnect_can_be_switched_off_and_its_keys_are_checked() -> None:
    rules = engine(hv_disconnect={"enabled": False})
    run(rules, [sig(IGNITION, T0, "OFF"), *parked_bus(T0, T0 + MIN, 60 * S, bms=True)])
    assert alerts(run(rules, parked_bus(T0 + 2 * MIN, T0 + H, 60 * S, bms=False))) == []
    with pytest.raises(ConfigError, match=r"rules\.hv_disconnect\.missing_after"):
        RulesConfig.from_dict({"hv_disconnect": {"missing_after": 10}})
    with pytest.raises(ConfigError, match=r"min_pack_voltage_v=0\.0 must be >= 1"):
        RulesConfig.from_dict({"hv_disconnect": {"min_pack_voltage_v": 0}})


def test_out_of_range_battery_values_are_counted_and_dropped() -> None:
    rules = engine()
    run(rules, [sig(SOH, T0, 120.0), sig(PACK_V, T0, -1.0), sig(PACK_A, T0, "12"), sig(CHARGING, T0, 2)])
    assert rules.counters["bad_signal_values"] == 4


# ------------------------------------------------------------------ soh_drop


def test_a_steep_soh_drop_raises_after_two_confirming_readings() -> None:
    rules = engine()
    out = run(rules, [sig(SOH, T0 + d * DAY, 94.0 - 0.01 * d) for d in range(20)])  # normal ageing
    out += run(rules, [sig(SOH, T0 + 20 * DAY, 89.5)])  # 4.4 under the 30-day best: fine
    out += run(rules, [sig(SOH, T0 + 20 * DAY + H, 88.9)])  # 5.1 under: first abnormal reading
    assert alerts(out) == []
    [alert] = alerts(rules.feed(sig(SOH, T0 + 20 * DAY + 2 * H, 88.5)))
    assert (alert.rule, alert.severity) == ("soh_drop", Severity.WARNING)
    assert alert.episode == f"soh_drop:{T0 + 20 * DAY + H}"
    assert alert.evidence["reference_percent"] == 94.0
    assert alert.evidence["drop_percent"] == 5.5
    assert alerts(run(rules, [sig(SOH, T0 + 21 * DAY + d * H, 88.0) for d in range(48)])) == []  # once
    # the reference ages out of the 30-day window, but lost capacity stays lost: no clear
    assert alerts(run(rules, [sig(SOH, T0 + 60 * DAY + d * DAY, 88.0 - 0.01 * d) for d in range(5)])) == []
    assert "soh_drop" in rules.active_rules


def test_one_glitch_does_not_raise_and_a_recalibration_clears() -> None:
    rules = engine()
    out = run(rules, [sig(SOH, T0, 95.0), sig(SOH, T0 + H, 60.0), sig(SOH, T0 + 2 * H, 95.0)])
    assert alerts(out) == []
    out = run(rules, [sig(SOH, T0 + 3 * H, 88.0), sig(SOH, T0 + 4 * H, 88.0)])
    [alert] = alerts(out)
    assert alerts(rules.feed(sig(SOH, T0 + 5 * H, 92.0))) == []  # 3 under 95: not back within 2.5
    [clear] = alerts(rules.feed(sig(SOH, T0 + 6 * H, 93.0)))
    assert (clear.state, clear.episode, clear.evidence["reason"]) == (AlertState.CLEARED, alert.episode, "recovered")


def test_an_old_reference_ages_out_of_the_window() -> None:
    rules = engine(soh_drop={"window_days": 10})
    run(rules, [sig(SOH, T0, 95.0)])
    # 11 days later the car reports 89 %: the 95 % reading is outside the window, 89 is the new reference
    assert alerts(run(rules, [sig(SOH, T0 + 11 * DAY, 89.0), sig(SOH, T0 + 11 * DAY + H, 89.0)])) == []


def test_the_first_reading_and_a_better_pack_never_raise() -> None:
    rules = engine(soh_drop={"confirm_samples": 1})
    assert alerts(run(rules, [sig(SOH, T0, 70.0), sig(SOH, T0 + H, 99.0), sig(SOH, T0 + 2 * H, 97.0)])) == []


# ------------------------------------------------------------------ daily statistics


def stats_of(records: list[object]) -> list[DailyStats]:
    return [r for r in records if isinstance(r, DailyStats)]


def test_energy_used_and_charged_sessions_and_health_per_day() -> None:
    rules = engine(daily_stats={"interim_s": 0})
    events = [sig(SOH, T0, 93.5), sig(CHARGING, T0, False), sig(PACK_V, T0, 400.0), sig(PACK_A, T0, -10.0)]
    # driving: 4 kW drawn for 30 min, samples every 30 s
    events += [sig(PACK_A, T0 + k * 30 * S, -10.0 + (k % 2) * 0.01) for k in range(1, 61)]
    # a charging session: 10 kW in for one hour
    start = T0 + 2 * H
    events += [sig(CHARGING, start, True), sig(PACK_A, start, 25.0)]
    events += [sig(PACK_A, start + k * 60 * S, 25.0 + (k % 2) * 0.01) for k in range(1, 61)]
    events += [sig(CHARGING, start + H, False), sig(PACK_A, start + H, 0.0)]
    events += [sig(CHARGING, start + 2 * H, True), sig(CHARGING, start + 2 * H + MIN, False)]  # a short second one
    out = run(rules, events)
    out += run(rules, [sig(VOLTAGE, T0 + DAY, 12.6)])  # the next day's first input ends the day
    [day] = stats_of(out)
    assert day.final
    assert day.energy_used_kwh == pytest.approx(2.0, abs=0.01)
    assert day.energy_charged_kwh == pytest.approx(10.0, abs=0.01)
    assert day.charging_sessions == 2
    assert day.soh_percent == 93.5
    out = run(rules, [sig(VOLTAGE, T0 + 2 * DAY, 12.6)])
    [quiet] = stats_of(out)
    assert (quiet.energy_used_kwh, quiet.energy_charged_kwh, quiet.charging_sessions) == (0.0, 0.0, 0)
    assert quiet.soh_percent == 93.5  # carried over like the odometer


def test_gaps_are_not_integrated_and_a_car_without_traction_battery_has_no_ev_figures() -> None:
    rules = engine(daily_stats={"interim_s": 0})
    out = run(rules, [sig(PACK_V, T0, 400.0), sig(PACK_A, T0, -10.0), sig(PACK_A, T0 + 10 * MIN, -10.5)])
    out += run(rules, [sig(VOLTAGE, T0 + DAY, 12.6)])
    [day] = stats_of(out)
    assert day.energy_used_kwh == 0.0  # 10 min between samples: the box slept, nothing is guessed
    combustion = engine(daily_stats={"interim_s": 0})
    out = run(combustion, [sig(VOLTAGE, T0, 12.6), sig(VOLTAGE, T0 + DAY, 12.4)])
    [day] = stats_of(out)
    assert (day.energy_used_kwh, day.energy_charged_kwh, day.charging_sessions, day.soh_percent) == (None,) * 4


def test_snapshots_carry_the_ev_state_and_older_snapshots_still_restore() -> None:
    rules = engine()
    run(rules, [sig(IGNITION, T0, "OFF"), sig(SOH, T0, 94.0), sig(CHARGING, T0, True), sig(PACK_V, T0, 390.0)])
    snapshot = json.loads(json.dumps(rules.snapshot()))
    assert snapshot["rules"]["ev_daily_stats"]["sessions"] == 1
    assert snapshot["rules"]["hv_disconnect"]["bms_ms"] == T0
    assert snapshot["rules"]["soh_drop"]["day_max"] == [94.0]
    restored = Engine(rules.config, state=snapshot)
    run(restored, [sig(CHARGING, T0 + S, True)])
    assert restored.snapshot()["rules"]["ev_daily_stats"]["sessions"] == 1  # still the same session
    for key in ("ev_daily_stats", "hv_disconnect", "soh_drop"):  # a snapshot from before #17
        del snapshot["rules"][key]
    assert Engine(rules.config, state=snapshot).snapshot()["rules"]["ev_daily_stats"]["seen"] is False
    snapshot["rules"]["soh_drop"] = {"day_index": [1], "day_max": ["x"]}
    with pytest.raises(StateError, match=r"state\.rules\.soh_drop"):
        Engine(rules.config, state=snapshot)


def test_the_silence_counts_from_the_moment_the_car_is_switched_off() -> None:
    """A time-compressed drive hears the 1 s BMS message rarely: switching off must not look like a removal."""
    rules = engine()
    out = run(rules, [sig(IGNITION, T0, "ON"), sig(PACK_V, T0, 380.0)])
    out += run(rules, [sig(VOLTAGE, T0 + k * 40 * S, 14.0 + k % 2) for k in range(1, 9)])  # 320 s of driving
    out += run(rules, [sig(IGNITION, T0 + 330 * S, "OFF"), sig(VOLTAGE, T0 + 340 * S, 12.6)])
    assert alerts(out, "hv_disconnect") == []
    out = run(rules, [sig(VOLTAGE, T0 + 330 * S + k * 60 * S, 12.6 + k % 2 * 0.3) for k in range(1, 5)])
    [alert] = alerts(out, "hv_disconnect")  # parked and still no BMS 240 s after the switch-off
    assert alert.episode == f"hv_disconnect:{T0 + 330 * S}"
