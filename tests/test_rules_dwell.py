"""stationary_near_market: dwell near a used-car market, on hand-made timelines."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from edge.place_files import load_markets_file
from edge.rules import Engine, RulesConfig
from protocol import AlertState, Severity
from protocol.geo import distance_m
from protocol.places import load_places
from tests.timeline import MARKET_WGS, MIN, T0, H, alerts, fix, offset, parked, raised_of, run

RULE = "stationary_near_market"
SAMPLE_MARKETS = Path(__file__).resolve().parents[1] / "edge" / "data" / "markets.sample.toml"


def make_engine(state: dict[str, Any] | None = None) -> Engine:
    return Engine(RulesConfig(), markets=load_markets_file(SAMPLE_MARKETS), state=state)


def test_raises_exactly_at_72_hours_with_30m_jitter_and_names_the_market() -> None:
    engine = make_engine()
    before = run(engine, parked(T0, T0 + 72 * H - 10 * MIN, *MARKET_WGS, every_ms=10 * MIN, jitter_m=30.0))
    assert alerts(before, RULE) == []
    out = engine.feed(fix(T0 + 72 * H, *offset(*MARKET_WGS, 20.0, -10.0)))
    [alert] = alerts(out, RULE)
    assert alert.state is AlertState.RAISED
    assert alert.severity is Severity.HIGH
    assert alert.time_ms == T0 + 72 * H
    assert alert.episode == f"{RULE}:{T0}"
    ev: dict[str, Any] = dict(alert.evidence)
    assert ev["market_id"] == "sh-jiading-ucm"
    assert ev["market_name"] == "Demo used-car market (Shanghai Jiading)"
    assert ev["dwell_start_ms"] == T0
    assert ev["dwell_s"] == 72 * 3600.0
    assert distance_m(ev["centre_lat"], ev["centre_lon"], *MARKET_WGS) < 15.0
    assert ev["distance_to_market_m"] < 15.0
    assert engine.active_rules == frozenset({RULE})
    # Staying longer never raises again.
    more = run(engine, parked(T0 + 73 * H, T0 + 96 * H, *MARKET_WGS, every_ms=30 * MIN, jitter_m=30.0))
    assert alerts(more, RULE) == []


def test_one_millisecond_short_of_72_hours_does_not_raise() -> None:
    engine = make_engine()
    out = run(engine, [fix(T0, *MARKET_WGS), fix(T0 + 72 * H - 1, *MARKET_WGS)])
    assert alerts(out, RULE) == []


def test_parked_far_from_any_market_stays_silent() -> None:
    engine = make_engine()
    far = offset(*MARKET_WGS, 1500.0, 0.0)
    out = run(engine, parked(T0, T0 + 100 * H, *far, every_ms=H, jitter_m=30.0))
    assert alerts(out) == []


def test_gcj02_position_taken_literally_would_miss_the_market() -> None:
    # The market's GCJ-02 coordinates are ~470 m from its WGS-84 position: a car parked at
    # the GCJ-02 numbers (a datum mix-up) is outside the 400 m radius.
    gcj = (31.3000, 121.2500)
    assert 400 < distance_m(*gcj, *MARKET_WGS) < 700
    engine = make_engine()
    out = run(engine, parked(T0, T0 + 80 * H, *gcj, every_ms=H))
    assert alerts(out) == []


def test_poor_fixes_are_ignored_and_single_outliers_do_not_reset_the_dwell() -> None:
    engine = make_engine()
    run(engine, parked(T0, T0 + 30 * H, *MARKET_WGS, every_ms=H))
    far = offset(*MARKET_WGS, 2000.0, 0.0)
    # A multipath jump with a bad HDOP and another with few satellites: ignored.
    run(engine, [fix(T0 + 30 * H + MIN, *far, hdop=12.0), fix(T0 + 30 * H + 2 * MIN, *far, sats=3)])
    assert engine.counters["poor_fixes"] == 2
    # Two good outliers in a row: still fewer than leave_fixes (3).
    run(engine, [fix(T0 + 30 * H + 3 * MIN, *far), fix(T0 + 30 * H + 4 * MIN, *far)])
    out = run(engine, parked(T0 + 31 * H, T0 + 72 * H, *MARKET_WGS, every_ms=H))
    [alert] = raised_of(out, RULE)
    assert alert.episode == f"{RULE}:{T0}"


def test_six_hour_gap_at_the_same_spot_continues_the_dwell() -> None:
    engine = make_engine()
    run(engine, parked(T0, T0 + 30 * H, *MARKET_WGS, every_ms=10 * MIN, jitter_m=30.0))
    # The box sleeps for 6 h; the car is found at the same spot afterwards.
    out = run(engine, parked(T0 + 36 * H, T0 + 72 * H, *MARKET_WGS, every_ms=10 * MIN, jitter_m=30.0))
    [alert] = raised_of(out, RULE)
    assert alert.time_ms == T0 + 72 * H
    assert alert.evidence["dwell_start_ms"] == T0


def test_gap_after_which_the_car_is_elsewhere_starts_a_new_dwell() -> None:
    engine = make_engine()
    run(engine, parked(T0, T0 + 30 * H, *MARKET_WGS, every_ms=H))
    moved = offset(*MARKET_WGS, 200.0, 150.0)  # 250 m away, still inside the market
    start = T0 + 36 * H
    out = run(engine, parked(start, start + 72 * H, *moved, every_ms=H))
    [alert] = raised_of(out, RULE)
    assert alert.episode == f"{RULE}:{start}"
    assert alert.time_ms == start + 72 * H


def test_restart_in_the_middle_of_a_dwell_through_json_keeps_the_count() -> None:
    engine = make_engine()
    run(engine, parked(T0, T0 + 40 * H, *MARKET_WGS, every_ms=10 * MIN, jitter_m=30.0))
    saved = json.loads(json.dumps(engine.snapshot()))
    restored = make_engine(state=saved)
    assert restored.snapshot() == engine.snapshot()
    out = run(restored, parked(T0 + 41 * H, T0 + 72 * H, *MARKET_WGS, every_ms=H, jitter_m=30.0))
    [alert] = raised_of(out, RULE)
    assert alert.episode == f"{RULE}:{T0}"
    # Restore again after the alert: the episode id survives and the clear matches it.
    again = make_engine(state=json.loads(json.dumps(restored.snapshot())))
    assert again.active_rules == frozenset({RULE})
    gone = offset(*MARKET_WGS, 0.0, 5000.0)
    out = run(again, [fix(T0 + 73 * H + i * 1000, *gone, speed_mps=15.0) for i in range(3)])
    [clear] = alerts(out, RULE)
    assert clear.state is AlertState.CLEARED
    assert clear.episode == alert.episode
    assert clear.evidence["reason"] == "left"
    assert again.active_rules == frozenset()


def test_markets_replaced_at_run_time() -> None:
    engine = Engine(RulesConfig())  # no markets yet
    out = run(engine, parked(T0, T0 + 72 * H, *MARKET_WGS, every_ms=H))
    assert alerts(out) == []
    engine.set_markets(load_markets_file(SAMPLE_MARKETS))
    [alert] = raised_of(engine.feed(fix(T0 + 73 * H, *MARKET_WGS)), RULE)
    engine.set_markets([])
    [clear] = alerts(engine.feed(fix(T0 + 74 * H, *MARKET_WGS)), RULE)
    assert clear.state is AlertState.CLEARED
    assert clear.episode == alert.episode
    assert clear.evidence["reason"] == "market_removed"


def test_datum_of_an_imported_market_decides_where_it_is() -> None:
    items = [
        {"id": "a", "name": "as wgs84", "lat": 31.301992, "lon": 121.245568, "radius_m": 100, "datum": "wgs84"},
    ]
    engine = Engine(RulesConfig(), markets=load_places(items))
    out = run(engine, parked(T0, T0 + 72 * H, *MARKET_WGS, every_ms=H))
    assert [a.evidence["market_id"] for a in raised_of(out, RULE)] == ["a"]
