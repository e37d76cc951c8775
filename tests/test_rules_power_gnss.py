"""power_cut, gnss_lost and gnss_jamming on hand-made timelines."""

from __future__ import annotations

import json

from edge.rules import Engine, RulesConfig
from protocol import AlertState, NoFix, Severity
from tests.timeline import MARKET_WGS, SPEED, T0, VOLTAGE, S, alerts, drive, fix, merged, raised_of, run, sig

# ------------------------------------------------------------------ power_cut


def test_low_voltage_for_exactly_three_seconds_raises_panic_and_hysteresis_clears() -> None:
    engine = Engine(RulesConfig())
    run(engine, [sig(VOLTAGE, T0, 12.6), sig(VOLTAGE, T0 + S, 8.9)])
    assert alerts(engine.feed(fix(T0 + 4 * S - 1, *MARKET_WGS)), "power_cut") == []
    [alert] = alerts(engine.feed(fix(T0 + 4 * S, *MARKET_WGS)), "power_cut")
    assert alert.severity is Severity.PANIC
    assert alert.episode == f"power_cut:{T0 + S}"
    assert alert.evidence["cause"] == "low_voltage"
    assert alert.evidence["voltage_v"] == 8.9
    # 9.5 V is above the threshold but below threshold + hysteresis (10.0 V): still cut.
    assert alerts(engine.feed(sig(VOLTAGE, T0 + 10 * S, 9.5)), "power_cut") == []
    [clear] = alerts(engine.feed(sig(VOLTAGE, T0 + 11 * S, 10.0)), "power_cut")
    assert clear.state is AlertState.CLEARED
    assert clear.episode == alert.episode


def test_short_dip_does_not_raise() -> None:
    engine = Engine(RulesConfig())
    out = run(engine, [sig(VOLTAGE, T0, 12.6), sig(VOLTAGE, T0 + S, 8.0), sig(VOLTAGE, T0 + 3 * S, 12.4)])
    out += run(engine, [fix(T0 + 10 * S, *MARKET_WGS)])
    assert alerts(out) == []


def test_supply_signal_vanishing_while_fixes_continue_raises_signal_lost() -> None:
    engine = Engine(RulesConfig.from_dict({"power_cut": {"missing_after_s": 10}}))
    run(engine, [sig(VOLTAGE, T0, 12.6)])
    out = run(engine, [fix(T0 + i * S, *MARKET_WGS) for i in range(1, 10)])
    assert alerts(out) == []
    [alert] = alerts(engine.feed(fix(T0 + 10 * S, *MARKET_WGS)), "power_cut")
    assert alert.evidence["cause"] == "signal_lost"
    assert alert.episode == f"power_cut:{T0}"
    [clear] = alerts(engine.feed(sig(VOLTAGE, T0 + 60 * S, 12.5)), "power_cut")
    assert clear.episode == alert.episode


def test_a_reboot_gap_is_not_a_vanished_signal() -> None:
    engine = Engine(RulesConfig.from_dict({"power_cut": {"missing_after_s": 10}}))
    run(engine, [sig(VOLTAGE, T0, 12.6), fix(T0 + S, *MARKET_WGS)])
    restored = Engine(engine.config, state=json.loads(json.dumps(engine.snapshot())))
    # The box was off for an hour; the first fix after boot comes before any CAN frame.
    out = run(restored, [fix(T0 + 3600 * S + i * S, *MARKET_WGS) for i in range(5)])
    out += run(restored, [sig(VOLTAGE, T0 + 3606 * S, 12.6)])
    assert alerts(out) == []


def test_missing_after_zero_disables_the_signal_lost_path() -> None:
    engine = Engine(RulesConfig.from_dict({"power_cut": {"missing_after_s": 0}}))
    out = run(engine, [sig(VOLTAGE, T0, 12.6), *(fix(T0 + i * 60 * S, *MARKET_WGS) for i in range(1, 30))])
    assert alerts(out) == []


# ------------------------------------------------------------------ gnss_lost / gnss_jamming


def test_gnss_lost_after_exactly_60_s_while_moving_then_cleared_by_a_fix() -> None:
    engine = Engine(RulesConfig())
    run(engine, merged(drive(T0, *MARKET_WGS, 10, 15.0), [sig(SPEED, T0 + 5 * S, 54.0)]))
    last_fix = T0 + 10 * S
    out = run(engine, [NoFix(last_fix + i * S, sats_in_view=0) for i in range(1, 60)])
    assert alerts(out) == []
    [alert] = alerts(engine.feed(NoFix(last_fix + 60 * S, sats_in_view=0)))
    assert (alert.rule, alert.severity, alert.state) == ("gnss_lost", Severity.HIGH, AlertState.RAISED)
    assert alert.episode == f"gnss_lost:{last_fix}"
    assert alert.evidence["speed_kmh"] == 54.0
    assert engine.active_rules == frozenset({"gnss_lost"})
    [clear] = alerts(engine.feed(fix(last_fix + 90 * S, *MARKET_WGS, speed_mps=15.0)))
    assert (clear.rule, clear.state, clear.episode) == ("gnss_lost", AlertState.CLEARED, alert.episode)


def test_no_fix_while_parked_or_just_after_starting_to_move_is_fine() -> None:
    engine = Engine(RulesConfig())
    run(engine, [fix(T0, *MARKET_WGS), sig(SPEED, T0, 0.0)])
    out = run(engine, [NoFix(T0 + i * S, sats_in_view=0) for i in range(1, 3600)])  # an hour in a garage
    # Driving out: the receiver gets 60 s from the moment the car moves.
    out += run(engine, [sig(SPEED, T0 + 3600 * S, 20.0)])
    out += run(engine, [NoFix(T0 + (3600 + i) * S) for i in range(1, 60)])
    assert alerts(out) == []
    [alert] = alerts(engine.feed(NoFix(T0 + 3660 * S)))
    assert alert.episode == f"gnss_lost:{T0 + 3600 * S}"


def test_snr_collapse_with_the_loss_raises_jamming_too() -> None:
    engine = Engine(RulesConfig())
    run(engine, merged(drive(T0, *MARKET_WGS, 60, 20.0), [sig(SPEED, T0 + S, 72.0)]))
    # Tracked satellites' mean SNR drops from a 40 dB-Hz baseline to 22 (> 15 dB drop).
    out = run(engine, [NoFix(T0 + (60 + i) * S, sats_in_view=8, mean_snr=22.0) for i in range(1, 61)])
    names = [(a.rule, a.state) for a in alerts(out)]
    assert names == [("gnss_lost", AlertState.RAISED), ("gnss_jamming", AlertState.RAISED)]
    jam = alerts(out, "gnss_jamming")[0]
    assert jam.evidence["baseline_snr"] == 40.0
    assert jam.evidence["mean_snr"] == 22.0
    assert jam.episode == f"gnss_jamming:{T0 + 60 * S}"
    out = engine.feed(fix(T0 + 200 * S, *MARKET_WGS, speed_mps=20.0))
    assert sorted((a.rule, a.state) for a in alerts(out)) == [
        ("gnss_jamming", AlertState.CLEARED),
        ("gnss_lost", AlertState.CLEARED),
    ]


def test_loss_without_snr_collapse_is_not_jamming() -> None:
    engine = Engine(RulesConfig())
    run(engine, merged(drive(T0, *MARKET_WGS, 10, 20.0), [sig(SPEED, T0 + S, 72.0)]))
    # A tunnel: nothing tracked (no SNR at all), or SNR only 10 dB under the baseline.
    out = run(engine, [NoFix(T0 + (10 + i) * S, sats_in_view=0) for i in range(1, 40)])
    out += run(engine, [NoFix(T0 + (50 + i) * S, sats_in_view=6, mean_snr=30.0) for i in range(1, 40)])
    assert [a.rule for a in raised_of(out)] == ["gnss_lost"]


def test_a_gap_between_fixes_found_only_when_the_next_fix_arrives_is_not_a_loss() -> None:
    """A box that slept (or a sparse log) while the last CAN speed said "moving": the next fix
    shows GNSS working, so nothing is raised (and nothing needs clearing)."""
    engine = Engine(RulesConfig())
    run(engine, merged(drive(T0, *MARKET_WGS, 10, 15.0), [sig(SPEED, T0 + 5 * S, 54.0)]))
    out = run(engine, [fix(T0 + 4000 * S, *MARKET_WGS, speed_mps=0.0)])
    assert alerts(out) == []
    assert engine.active_rules == frozenset()
    # The same gap seen while it lasts (a tick, as the agent sends every second) does raise.
    [alert] = alerts(engine.tick(T0 + 4100 * S))
    assert alert.rule == "gnss_lost"
