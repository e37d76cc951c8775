"""The simulated traction battery (#17): charge, degradation and removal events, the EV_BATTERY frames."""

from __future__ import annotations

import pytest

from firmware_sim import CanCatalog, ScenarioError, Simulation, VehicleModel, load_scenario, parse_scenario

EV = """
start = 2026-05-04T17:00:00+08:00
position = [31.112, 121.381]
[vehicle]
soc_percent = 40.0
soh_percent = 95.0
pack_kwh = 50.0
[[segment]]
kind = "park"
duration = "4h"
[[segment.event]]
at = "10m"
kind = "charge"
duration = "1h"
power_kw = 10.0
[[segment.event]]
at = "2h"
kind = "battery_degrade"
to = 85.0
over = "1h"
[[segment.event]]
at = "3h"
kind = "hv_disconnect"
restore_after = "30m"
"""
MIN = 60_000
H = 60 * MIN


def test_events_expand_into_timeline_events() -> None:
    scenario = parse_scenario(EV, "ev.toml")
    names = [(e.name, (e.time_ms - scenario.start_ms) // MIN) for e in scenario.events]
    assert ("charge_start", 10) in names
    assert ("charge_end", 70) in names
    assert ("battery_degrade", 120) in names
    assert ("hv_disconnect", 180) in names
    assert ("hv_restore", 210) in names
    assert (scenario.vehicle.soh_percent, scenario.vehicle.pack_kwh) == (95.0, 50.0)


def test_charge_raises_soc_degradation_lowers_soh_and_current_follows_the_vss_sign() -> None:
    scenario = parse_scenario(EV, "ev.toml")
    model = VehicleModel(scenario)
    start = scenario.start_ms
    for event in scenario.events:
        if event.time_ms <= start + 40 * MIN:
            model.apply(event)
    charging = model.signals(start + 40 * MIN)
    assert charging["CHARGING"] == 1
    assert charging["HV_CONNECTED"] == 1
    assert charging["SOC_DISPLAYED"] == pytest.approx(40.0 + 10.0 * 0.5 / 50.0 * 100.0)  # 5 kWh of 50
    assert charging["HV_CURRENT"] == pytest.approx(10_000.0 / charging["HV_VOLTAGE"])  # into the pack: positive
    assert model.signals(start + 150 * MIN)["SOH"] == pytest.approx(90.0)  # half way from 95 to 85
    assert model.signals(start + 4 * H)["SOH"] == pytest.approx(85.0)
    for event in scenario.events:
        if start + 40 * MIN < event.time_ms <= start + 190 * MIN:
            model.apply(event)
    parked = model.signals(start + 190 * MIN)
    assert (parked["CHARGING"], parked["HV_CONNECTED"], parked["HV_CURRENT"]) == (0, 0, 0.0)
    assert parked["SOC_DISPLAYED"] == pytest.approx(60.0)
    assert not model.sends("EV_BATTERY")  # the pack (and its BMS) is gone
    assert model.sends("BATTERY_12V")


def test_a_removed_pack_sends_no_ev_battery_frame_until_it_is_back() -> None:
    scenario = parse_scenario(EV, "ev.toml")
    catalog = CanCatalog()
    ev_id = catalog.spec("EV_BATTERY").frame_id
    pace = scenario.pace(override=60.0)
    sim = Simulation(scenario, pace=pace, wall_start=0.0, catalog=catalog)
    seen: list[tuple[int, bool]] = []
    wall = 0.0
    while not sim.finished:
        wall += 0.5
        step = sim.advance(wall)
        ids = {frame.arbitration_id for frame in step.frames}
        seen.append((step.scenario_ms - scenario.start_ms, ev_id in ids))
    gone = [has for t, has in seen if 181 * MIN <= t < 210 * MIN]
    assert gone
    assert not any(gone)
    assert any(has for t, has in seen if 150 * MIN <= t < 180 * MIN)
    assert any(has for t, has in seen if t >= 211 * MIN)


@pytest.mark.parametrize(
    ("event", "where", "message"),
    [
        ("kind='charge'\nat='1m'", "segment[0].event[0].duration", "is required"),
        ("kind='charge'\nat='1m'\nduration='1h'\npower_kw=0.1", "segment[0].event[0].power_kw", "outside"),
        ("kind='battery_degrade'\nat='1m'", "segment[0].event[0].to", "is required"),
        ("kind='battery_degrade'\nat='1m'\nto=101", "segment[0].event[0].to", "outside"),
        ("kind='hv_disconnect'\nat='1m'\nrestore_after='2h'", "segment[0].event[0].at", "after the scenario end"),
        ("kind='hv_disconnect'\nat='1m'\nduration='1m'", "segment[0].event[0]", "unknown key"),
    ],
)
def test_bad_battery_events_name_the_key(event: str, where: str, message: str) -> None:
    segment = "[[segment]]\nkind='park'\nduration='1h'\n[[segment.event]]\n"
    text = f"start = 2026-05-04T17:00:00Z\nposition=[1,2]\n{segment}{event}"
    with pytest.raises(ScenarioError, match=message) as info:
        parse_scenario(text, "bad.toml")
    assert info.value.where == where


def test_the_shipped_ev_battery_scenario() -> None:
    scenario = load_scenario("ev_battery")
    names = [e.name for e in scenario.events]
    assert names.count("charge_start") == 1
    assert names.count("battery_degrade") == 1
    assert names.count("hv_disconnect") == 1
    assert "hv_restore" not in names  # the pack never comes back
    disconnect = next(e for e in scenario.events if e.name == "hv_disconnect")
    assert scenario.segment_at(disconnect.time_ms).kind == "park"
    assert scenario.segment_at(disconnect.time_ms).ignition == "OFF"
