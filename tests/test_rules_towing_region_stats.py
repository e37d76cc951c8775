"""towing, region_exit and the daily statistics on hand-made timelines."""

from __future__ import annotations

from pathlib import Path

from edge.place_files import load_regions_file
from edge.rules import Engine, RulesConfig
from protocol import AlertState, DailyStats, Severity
from tests.timeline import (
    IGNITION,
    MARKET_WGS,
    ODOMETER,
    SHANGHAI,
    SPEED,
    T0,
    H,
    S,
    alerts,
    drive,
    fix,
    local_ms,
    merged,
    offset,
    parked,
    raised_of,
    run,
    sig,
)

SAMPLE_REGIONS = Path(__file__).resolve().parents[1] / "edge" / "data" / "regions.sample.toml"

# ------------------------------------------------------------------ towing


def test_moved_301_m_with_ignition_off_raises_towing_and_settling_clears_it() -> None:
    engine = Engine(RulesConfig())
    run(engine, [sig(IGNITION, T0, "ON"), fix(T0, *MARKET_WGS), sig(IGNITION, T0 + S, "OFF")])
    # Parked with 30 m jitter: nothing. 299 m slowly (GNSS speed under 10 km/h): nothing.
    out = run(engine, parked(T0 + 2 * S, T0 + H, *MARKET_WGS, every_ms=60 * S, jitter_m=30.0))
    out += run(engine, [fix(T0 + H + S, *offset(*MARKET_WGS, 0, 299.0), speed_mps=1.0)])
    assert alerts(out) == []
    [alert] = alerts(engine.feed(fix(T0 + H + 2 * S, *offset(*MARKET_WGS, 0, 301.0), speed_mps=1.0)))
    assert (alert.rule, alert.severity, alert.state) == ("towing", Severity.HIGH, AlertState.RAISED)
    assert alert.evidence["cause"] == "moved"
    assert alert.evidence["ignition_off_ms"] == T0 + S
    assert 300.0 < float(alert.evidence["distance_m"]) < 302.0  # type: ignore[arg-type]
    # The car now stands still at the tow yard for 10 minutes: cleared, new reference.
    yard = offset(*MARKET_WGS, 0, 301.0)
    out = run(engine, parked(T0 + H + 3 * S, T0 + H + 3 * S + 600 * S, *yard, every_ms=10 * S))
    [clear] = alerts(out)
    assert (clear.state, clear.episode, clear.evidence["reason"]) == (AlertState.CLEARED, alert.episode, "settled")


def test_sustained_speed_with_ignition_off_raises_and_ignition_on_clears() -> None:
    engine = Engine(RulesConfig())
    run(engine, [sig(IGNITION, T0, "LOCK"), fix(T0, *MARKET_WGS)])
    fixes = list(drive(T0 + S, *MARKET_WGS, 3, 4.0))  # 14.4 km/h, 12 m: on a flatbed
    out = run(engine, fixes[:2])
    assert alerts(out) == []
    [alert] = alerts(engine.feed(fixes[2]))  # the third fix above 10 km/h
    assert alert.evidence["cause"] == "speed"
    [clear] = alerts(engine.feed(sig(IGNITION, T0 + 10 * S, "START")))
    assert clear.evidence["reason"] == "ignition_on"


def test_driving_with_ignition_on_or_unknown_is_not_towing() -> None:
    engine = Engine(RulesConfig())
    assert alerts(run(engine, drive(T0, *MARKET_WGS, 120, 20.0))) == []
    engine = Engine(RulesConfig())
    out = run(engine, merged([sig(IGNITION, T0, "ON")], drive(T0, *MARKET_WGS, 120, 20.0)))
    assert alerts(out) == []


# ------------------------------------------------------------------ region_exit


def test_leaving_the_allowed_region_for_three_fixes_raises_and_returning_clears() -> None:
    engine = Engine(RulesConfig(), regions=load_regions_file(SAMPLE_REGIONS))
    inside = (31.23, 121.47)  # People's Square
    outside = (32.06, 118.79)  # Nanjing
    out = run(engine, [fix(T0, *inside), fix(T0 + S, *outside), fix(T0 + 2 * S, *outside)])
    assert alerts(out) == []
    [alert] = alerts(engine.feed(fix(T0 + 3 * S, *outside)))
    assert (alert.rule, alert.severity) == ("region_exit", Severity.WARNING)
    assert alert.episode == f"region_exit:{T0 + S}"
    assert alert.evidence["regions"] == ["cn-sh-coarse"]
    assert alert.evidence["last_inside_ms"] == T0
    out = run(engine, [fix(T0 + (10 + i) * S, *inside) for i in range(3)])
    [clear] = alerts(out)
    assert (clear.state, clear.episode) == (AlertState.CLEARED, alert.episode)


def test_no_region_means_rule_off_and_removing_regions_clears() -> None:
    engine = Engine(RulesConfig())
    assert alerts(run(engine, [fix(T0 + i * S, 0.5, 0.5) for i in range(5)])) == []
    engine = Engine(RulesConfig(), regions=load_regions_file(SAMPLE_REGIONS))
    [alert] = raised_of(run(engine, [fix(T0 + i * S, 32.06, 118.79) for i in range(3)]))
    engine.set_regions([])
    [clear] = alerts(engine.tick(T0 + 10 * S))
    assert (clear.episode, clear.evidence["reason"]) == (alert.episode, "regions_removed")


# ------------------------------------------------------------------ daily statistics


def test_daily_stats_distance_time_harsh_events_and_midnight_rollover() -> None:
    config = RulesConfig.from_dict({"daily_stats": {"interim_s": 0}})
    engine = Engine(config)
    start = local_ms(SHANGHAI, 2024, 5, 6, 23, 0)
    # 30 minutes parked with 30 m jitter: no distance, no driving time.
    out = run(engine, parked(start, start + 1800 * S, *MARKET_WGS, every_ms=S, jitter_m=30.0))
    # After a 61 s gap (not joined), 10 minutes at 20 m/s due east (12 km) at 10 Hz,
    # with the odometer on CAN.
    t1 = start + 1861 * S
    out += run(engine, merged(drive(t1, *MARKET_WGS, 600, 20.0, hz=10), [sig(ODOMETER, t1, 12345.6)]))
    # Harsh braking from CAN speed: 72 -> 50 km/h in one second (6.1 m/s^2), then a
    # harsh acceleration 50 -> 70 km/h (5.6 m/s^2).
    t2 = t1 + 601 * S
    out += run(engine, [sig(SPEED, t2, 72.0), sig(SPEED, t2 + S, 50.0), sig(SPEED, t2 + 2 * S, 70.0)])
    assert [r for r in out if isinstance(r, DailyStats)] == []
    midnight = local_ms(SHANGHAI, 2024, 5, 7, 0, 0)
    [final] = [r for r in engine.feed(fix(midnight, *MARKET_WGS)) if isinstance(r, DailyStats)]
    assert final.day == "2024-05-06"
    assert final.final is True
    assert abs(final.distance_m - 12_000.0) < 5.0
    assert final.driving_s == 600.0
    assert (final.harsh_accel, final.harsh_brake) == (1, 1)
    assert final.odometer_km == 12345.6
    assert final.time_ms == t2 + 2 * S  # the last data of that day
    # The next day starts empty but keeps the odometer reading.
    nxt = local_ms(SHANGHAI, 2024, 5, 8, 0, 0)
    [second] = [r for r in engine.feed(fix(nxt, *MARKET_WGS)) if isinstance(r, DailyStats)]
    assert (second.day, second.distance_m, second.odometer_km) == ("2024-05-07", 0.0, 12345.6)


def test_interim_stats_are_emitted_hourly_and_not_final() -> None:
    engine = Engine(RulesConfig())
    out = run(engine, parked(T0, T0 + 2 * H, *MARKET_WGS, every_ms=60 * S))
    stats = [r for r in out if isinstance(r, DailyStats)]
    assert [(s.day, s.final, s.time_ms) for s in stats] == [
        ("2024-05-06", False, T0 + H),
        ("2024-05-06", False, T0 + 2 * H),
    ]
