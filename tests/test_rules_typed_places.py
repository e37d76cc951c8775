"""Typed places (#17): pawn lots, impound yards, ports ... each with its own dwell and severity."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge.errors import ConfigError
from edge.place_files import load_markets_file
from edge.rules import Engine, RulesConfig
from protocol import AlertState, Severity
from protocol.errors import PlacesError
from protocol.places import load_places
from tests.timeline import MIN, T0, H, alerts, fix, offset, parked, run

RULE = "stationary_near_market"
SAMPLE_PLACES = Path(__file__).resolve().parents[1] / "edge" / "data" / "places.sample.toml"
PAWN_WGS = (31.151878, 121.415360)


def place(id_: str, place_type: str | None, lat: float = 31.0, lon: float = 121.0) -> dict[str, object]:
    item: dict[str, object] = {"id": id_, "name": id_, "lat": lat, "lon": lon, "radius_m": 200, "datum": "wgs84"}
    if place_type is not None:
        item["type"] = place_type
    return item


def test_the_sample_places_carry_their_types_and_an_untyped_item_is_a_used_car_market() -> None:
    market, pawn = load_markets_file(SAMPLE_PLACES)
    assert (market.id, market.type, pawn.id, pawn.type) == (
        "sh-jiading-ucm",
        "used_car_market",
        "sh-minhang-pawn",
        "pawn_lot",
    )
    assert abs(pawn.lat - PAWN_WGS[0]) < 1e-5
    assert abs(pawn.lon - PAWN_WGS[1]) < 1e-5
    [untyped] = load_places([place("m1", None)])
    assert untyped.type == "used_car_market"


@pytest.mark.parametrize("bad", ["pawnshop", "", 3, None])
def test_an_unknown_place_type_is_refused_naming_the_item(bad: object) -> None:
    item = place("m1", "x") | {"type": bad}
    with pytest.raises(PlacesError, match=r"markets item 0 type .* must be one of \['used_car_market', 'pawn_lot'"):
        load_places([item])


def dwell(engine: Engine, spot: tuple[float, float], hours: float) -> list[object]:
    return run(engine, parked(T0, T0 + int(hours * H), *spot, every_ms=10 * MIN, jitter_m=5.0))


def test_a_pawn_lot_raises_after_24_hours_not_72() -> None:
    engine = Engine(RulesConfig(), markets=load_markets_file(SAMPLE_PLACES))
    assert alerts(dwell(engine, PAWN_WGS, 23.9)) == []
    [alert] = alerts(run(engine, [fix(T0 + 24 * H, *PAWN_WGS)]))
    assert (alert.rule, alert.severity, alert.state) == (RULE, Severity.HIGH, AlertState.RAISED)
    assert alert.evidence["place_type"] == "pawn_lot"
    assert alert.evidence["min_duration_s"] == 86_400.0
    assert alert.evidence["market_id"] == "sh-minhang-pawn"
    [clear] = alerts(run(engine, [fix(T0 + 25 * H + k * MIN, *offset(*PAWN_WGS, 2000.0, 0.0)) for k in range(3)]))
    assert (clear.state, clear.severity, clear.evidence["reason"]) == (AlertState.CLEARED, Severity.HIGH, "left")


def test_each_type_has_its_own_threshold_and_severity_and_the_config_overrides_them() -> None:
    spots = {t: (31.0 + 0.1 * i, 121.0) for i, t in enumerate(("impound_yard", "border_crossing", "port"))}
    markets = load_places([place(t, t, *spot) for t, spot in spots.items()])
    expected = {
        "impound_yard": (24, Severity.WARNING),
        "border_crossing": (6, Severity.HIGH),
        "port": (48, Severity.HIGH),
    }
    for place_type, (hours, severity) in expected.items():
        engine = Engine(RulesConfig(), markets=markets)
        assert alerts(dwell(engine, spots[place_type], hours - 0.2)) == [], place_type
        [alert] = alerts(run(engine, [fix(T0 + hours * H, *spots[place_type])]))
        assert (alert.severity, alert.evidence["place_type"]) == (severity, place_type)
    config = RulesConfig.from_dict(
        {"stationary_near_market": {"place_types": {"port": {"min_duration_s": 3600, "severity": "panic"}}}}
    )
    engine = Engine(config, markets=markets)
    assert alerts(dwell(engine, spots["port"], 0.9)) == []
    [alert] = alerts(run(engine, [fix(T0 + H, *spots["port"])]))
    assert (alert.severity, alert.evidence["min_duration_s"]) == (Severity.PANIC, 3600.0)
    assert config.stationary_near_market.threshold("impound_yard") == (86_400.0, "warning")  # untouched


def test_used_car_markets_keep_min_duration_s() -> None:
    config = RulesConfig.from_dict({"stationary_near_market": {"min_duration_s": 7200}})
    engine = Engine(config, markets=load_places([place("m", None)]))
    assert alerts(dwell(engine, (31.0, 121.0), 1.9)) == []
    [alert] = alerts(run(engine, [fix(T0 + 2 * H, 31.0, 121.0)]))
    assert alert.evidence["place_type"] == "used_car_market"


def test_overlapping_places_raise_by_the_first_type_whose_dwell_is_reached() -> None:
    markets = load_places([place("market", "used_car_market"), place("pawn", "pawn_lot", 31.0005, 121.0)])
    engine = Engine(RulesConfig(), markets=markets)
    # nearer the market (72 h), but inside the pawn lot too (24 h): the pawn lot raises at 24 h
    spot = (31.0001, 121.0)
    assert alerts(dwell(engine, spot, 23.5)) == []
    [alert] = alerts(run(engine, [fix(T0 + 24 * H, *spot)]))
    assert alert.evidence["market_id"] == "pawn"


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"place_types": {"pawnshop": {}}}, r"place_types\.pawnshop is not a place type"),
        ({"place_types": {"port": {"severity": "urgent"}}}, r"severity='urgent' must be one of"),
        ({"place_types": {"port": {"min_duration_s": 0}}}, r"min_duration_s=0\.0 must be > 0"),
        ({"place_types": {"port": {"dwell": 5}}}, r"unknown key rules\.stationary_near_market\.place_types\.port\."),
    ],
)
def test_bad_place_type_settings_name_the_key(section: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        RulesConfig.from_dict({"stationary_near_market": section})
