"""Engine-wide behaviour: ordering, hostile input, config and snapshot errors, properties."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.errors import ConfigError
from edge.place_files import load_markets_file
from edge.rules import (
    Engine,
    EventError,
    RulesConfig,
    StateError,
)
from protocol import AlertState, NoFix
from tests.timeline import (
    DOOR_FL,
    IGNITION,
    MARKET_WGS,
    SPEED,
    T0,
    VOLTAGE,
    H,
    S,
    alerts,
    fix,
    offset,
    raised_of,
    run,
    sig,
)

SAMPLE_MARKETS = Path(__file__).resolve().parents[1] / "edge" / "data" / "markets.sample.toml"

# ------------------------------------------------------------------ ordering and duplicates


def test_replayed_and_out_of_order_gnss_epochs_are_counted_and_dropped() -> None:
    engine = Engine(RulesConfig())
    run(engine, [fix(T0, *MARKET_WGS), fix(T0 + S, *MARKET_WGS)])
    assert run(engine, [fix(T0 + S, *MARKET_WGS), fix(T0, *MARKET_WGS), NoFix(T0 + S)]) == []
    assert engine.counters["duplicate_epochs"] == 3
    assert engine.counters["fixes"] == 2


def test_slightly_late_samples_are_processed_at_the_clock_and_old_ones_dropped() -> None:
    engine = Engine(RulesConfig())
    run(engine, [sig(VOLTAGE, T0, 12.6), fix(T0 + 10 * S, *MARKET_WGS)])
    # 1.5 s late (inside the 2 s tolerance): processed as if at T0 + 10 s.
    run(engine, [sig(VOLTAGE, T0 + 8500, 8.0)])
    assert engine.counters["late_events"] == 1
    assert engine.snapshot()["rules"]["power_cut"]["low_since_ms"] == T0 + 10 * S
    # 5 s late: dropped.
    run(engine, [sig(SPEED, T0 + 5 * S, 50.0)])
    assert engine.counters["stale_events"] == 1
    # Same sample again, and an older one for the same name: duplicates.
    run(engine, [sig(VOLTAGE, T0 + 8500, 8.0), sig(VOLTAGE, T0 + 8000, 8.0)])
    assert engine.counters["duplicate_samples"] == 2
    # A tick in the past changes nothing.
    assert engine.tick(T0) == []
    assert engine.counters["stale_ticks"] == 1


def test_bad_values_unknown_signals_and_wrong_types_are_counted_not_crashes() -> None:
    engine = Engine(RulesConfig())
    out = run(
        engine,
        [
            sig(SPEED, T0, "fast"),
            sig(SPEED, T0, -3.0),
            sig(VOLTAGE, T0, True),
            sig(IGNITION, T0, "WARP"),
            sig(DOOR_FL, T0, 7),
            sig("Vehicle.Cabin.Light.IsOn", T0, True),
        ],
    )
    assert out == []
    assert engine.counters["bad_signal_values"] == 5
    assert engine.counters["ignored_samples"] == 1
    with pytest.raises(EventError, match="got dict"):
        engine.feed({"time_ms": T0})  # type: ignore[arg-type]
    with pytest.raises(EventError, match="tick time"):
        engine.tick(1.5)  # type: ignore[arg-type]
    assert engine.counters["rejected_events"] == 2
    counters = engine.counters.as_dict()
    assert counters["bad_signal_values"] == 5
    assert counters["alerts_raised"] == 0


# ------------------------------------------------------------------ configuration


def test_config_defaults_and_from_dict() -> None:
    config = RulesConfig.from_dict(
        {
            "timezone": "Europe/Berlin",
            "markets_file": "markets.toml",
            "power_cut": {"min_voltage_v": 18, "low_for_s": 5},
            "night_door_openings": {"doors": ["Vehicle.Body.Trunk.Rear.IsOpen"]},
        },
        Path("/etc/lienwatch"),
    )
    assert config.timezone == "Europe/Berlin"
    assert config.markets_file == Path("/etc/lienwatch/markets.toml")
    assert config.power_cut.min_voltage_v == 18.0
    assert config.power_cut.hysteresis_v == 1.0
    assert config.night_door_openings.doors == ("Vehicle.Body.Trunk.Rear.IsOpen",)
    defaults = RulesConfig()
    dwell = defaults.stationary_near_market
    assert (dwell.radius_m, dwell.min_duration_s) == (150.0, 259200.0)
    assert (defaults.night_door_openings.min_openings, defaults.night_door_openings.window_s) == (3, 7200.0)
    assert (defaults.towing.max_move_m, defaults.gnss_lost.lost_after_s) == (300.0, 60.0)
    assert defaults.timezone == "Asia/Shanghai"


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"timezon": "UTC"}, "unknown key rules.timezon"),
        ({"power_cut": {"min_voltage": 9}}, "unknown key rules.power_cut.min_voltage"),
        ({"power_cut": {"min_voltage_v": "9"}}, "rules.power_cut.min_voltage_v must be a finite number"),
        ({"power_cut": {"min_voltage_v": -1}}, "min_voltage_v=-1.0 must be > 0"),
        ({"towing": {"speed_fixes": True}}, "rules.towing.speed_fixes must be an integer"),
        ({"timezone": "Mars/Olympus"}, "timezone 'Mars/Olympus' is not a known IANA zone"),
        ({"night_door_openings": {"night_start": "25:00"}}, "night_start='25:00' must be HH:MM"),
        ({"night_door_openings": {"doors": "Vehicle.Door"}}, "rules.night_door_openings.doors must be a list"),
        ({"gnss_lost": []}, "rules.gnss_lost must be a table/map"),
        ({"max_hdop": float("nan")}, "rules.max_hdop must be a finite number"),
    ],
)
def test_bad_config_names_the_key(section: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(".", r"\.")):
        RulesConfig.from_dict(section)


def test_set_config_keeps_state_and_clears_episodes_of_disabled_rules() -> None:
    engine = Engine(RulesConfig())
    run(engine, [sig(VOLTAGE, T0, 5.0), fix(T0 + 5 * S, *MARKET_WGS)])
    assert engine.active_rules == frozenset({"power_cut"})
    base = engine.config
    engine.set_config(replace(base, power_cut=replace(base.power_cut, enabled=False)))
    [clear] = alerts(engine.tick(T0 + 6 * S))
    assert (clear.rule, clear.state, clear.evidence) == ("power_cut", AlertState.CLEARED, {"reason": "rule_disabled"})
    assert engine.active_rules == frozenset()
    assert engine.feed(sig(VOLTAGE, T0 + 7 * S, 4.0)) == []


# ------------------------------------------------------------------ snapshots


def test_snapshot_is_json_and_restores_exactly() -> None:
    engine = Engine(RulesConfig(), markets=load_markets_file(SAMPLE_MARKETS))
    run(engine, [sig(IGNITION, T0, "OFF"), sig(DOOR_FL, T0, False), fix(T0, *MARKET_WGS), NoFix(T0 + S)])
    text = json.dumps(engine.snapshot())
    restored = Engine(RulesConfig(), markets=load_markets_file(SAMPLE_MARKETS), state=json.loads(text))
    assert json.dumps(restored.snapshot()) == text


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda s: s.update(format="other/9"), "format 'other/9'"),
        (lambda s: s.update(extra=1), "unknown key state.extra"),
        (lambda s: s["rules"].update(teleport={}), "unknown key state.rules.teleport"),
        (lambda s: s["rules"]["power_cut"].pop("voltage"), "state.rules.power_cut.voltage is missing"),
        (lambda s: s["rules"]["power_cut"].update(voltage="12"), "state.rules.power_cut.voltage must be a finite"),
        (lambda s: s["rules"]["towing"].update(fast_fixes=1.5), "state.rules.towing.fast_fixes must be an integer"),
        (lambda s: s["stream"].update(sample_ms=[]), "state.stream.sample_ms must be a map"),
        (lambda s: s.update(rules=[]), "state.rules must be a map"),
    ],
)
def test_corrupt_snapshots_raise_state_error(mutate, message: str) -> None:  # type: ignore[no-untyped-def]
    state = json.loads(json.dumps(Engine(RulesConfig()).snapshot()))
    mutate(state)
    with pytest.raises(StateError, match=message):
        Engine(RulesConfig(), state=state)
    with pytest.raises(StateError, match="must be a map"):
        Engine(RulesConfig(), state=[])  # type: ignore[arg-type]


def test_older_snapshot_without_a_rule_starts_that_rule_fresh() -> None:
    state = json.loads(json.dumps(Engine(RulesConfig()).snapshot()))
    del state["rules"]["region_exit"]
    assert Engine(RulesConfig(), state=state).active_rules == frozenset()


# ------------------------------------------------------------------ properties: no alert storms


@settings(max_examples=40, deadline=None)
@given(
    period_s=st.sampled_from([1, 5, 30, 120, 600]),
    jitter_m=st.floats(min_value=0.0, max_value=60.0),
    seed=st.integers(min_value=0, max_value=2**16),
    restart_at=st.floats(min_value=0.0, max_value=1.0),
)
def test_one_dwell_episode_gives_exactly_one_raised_alert(
    period_s: int, jitter_m: float, seed: int, restart_at: float
) -> None:
    import random

    rng = random.Random(seed)
    markets = load_markets_file(SAMPLE_MARKETS)
    config = RulesConfig.from_dict({"stationary_near_market": {"min_duration_s": 2 * 3600}})
    engine = Engine(config, markets=markets)
    out = []
    end = T0 + 3 * H
    restart = T0 + int(restart_at * 3 * H)
    t = T0
    since_outlier = 99
    while t <= end:
        north, east = rng.uniform(-jitter_m, jitter_m), rng.uniform(-jitter_m, jitter_m)
        hdop = rng.choice([0.8, 1.2, 2.0, 9.9])  # some fixes are poor and get ignored
        # Isolated multipath outliers 1 km off (never two good ones within leave_fixes).
        far = since_outlier >= 3 and rng.random() < 0.05
        since_outlier = 0 if far else since_outlier + (hdop <= 5.0)
        pos = offset(*MARKET_WGS, 1000.0 if far else north, east)
        out += engine.feed(fix(t, *pos, hdop=0.9 if far else hdop))
        if restart <= t < restart + period_s * S:
            engine = Engine(config, markets=markets, state=json.loads(json.dumps(engine.snapshot())))
        t += period_s * S
    raised = raised_of(out, "stationary_near_market")
    assert len(raised) == 1
    assert raised[0].evidence["dwell_s"] >= 2 * 3600  # type: ignore[operator]
    assert alerts(out, "stationary_near_market") == raised  # never cleared while parked


@settings(max_examples=30, deadline=None)
@given(
    rate_hz=st.sampled_from([1, 2, 5, 10]),
    low_s=st.integers(min_value=4, max_value=120),
    noise=st.floats(min_value=0.0, max_value=0.5),
)
def test_one_power_cut_gives_one_raised_and_one_cleared(rate_hz: int, low_s: int, noise: float) -> None:
    engine = Engine(RulesConfig())
    out = []
    step = S // rate_hz
    t = T0
    for phase_v, seconds in ((12.6, 30), (6.0, low_s), (12.6, 30)):
        for i in range(seconds * rate_hz):
            wobble = noise if i % 2 else -noise
            out += engine.feed(sig(VOLTAGE, t, phase_v + wobble))
            t += step
    assert [a.state for a in alerts(out, "power_cut")] == [AlertState.RAISED, AlertState.CLEARED]
