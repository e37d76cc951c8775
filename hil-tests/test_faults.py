"""Faults on the running chain: each must end with nothing lost and nothing counted twice.

Every test plays a scenario with an alert (``unplug``: the 12 V supply is cut at about 12 s
of wall time at ``--speed-factor 2``), injects its fault, then stops the agent cleanly and
checks the collector's database directly (chain_checks.check_ledger): no duplicate
(device, seq), no duplicate fix, rows matching the ledger counts, every sequence number
from 1 to the highest stored unless announced skipped or reported evicted, and the last
number the agent committed stored. The alert must arrive and the loan reach the level the
risk table gives, whatever happened on the way.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, date, datetime
from pathlib import Path

import pytest
from chain_checks import (
    INFLIGHT_WINDOW,
    agent_evicted_unsettled,
    agent_logged_alerts,
    alert_rows,
    check_ledger,
    ledger_rows,
    loan_base_level,
    max_level,
    seq_ledger_receipt_view,
    stored_alerts,
)
from chain_driver import LOAN_ID, Chain, Fault, Hardware

from collector.loans.csv_import import sample_loan_book
from firmware_sim.rig import ChainRig

SCENARIO = "unplug"
SPEED_FACTOR = 2.0


def _today() -> date:
    return datetime.now(tz=UTC).date()


def _expected_level() -> str:
    return max_level(loan_base_level(sample_loan_book(_today()), LOAN_ID, _today()), "critical")


def _check_outcome(chain: Chain, high: int, *, alert_expected: bool = True) -> None:
    ledger = check_ledger(chain.db, chain.rig.device_id, expected_high=high)
    assert not ledger.problems, f"{ledger.summary()}: {ledger.problems}"
    raised = {a["rule"] for a in alert_rows(chain.db, chain.rig.device_id) if a["state"] == 0}
    if alert_expected:
        assert raised == {"power_cut"}, raised
        assert chain.wait_level(_expected_level()) == _expected_level()


def test_broker_stopped_and_restarted_mid_scenario(chain: Chain, hil_keys: Path, hardware: Hardware | None) -> None:
    """The broker goes away for 8 s around the power cut; agent and collector reconnect."""
    chain.setup(hil_keys)
    faults = [Fault(6.0, "broker stop", lambda rig: rig.stop_broker()),
              Fault(14.0, "broker start", lambda rig: rig.start_broker())]  # fmt: skip
    chain.play(SCENARIO, speed_factor=SPEED_FACTOR, faults=faults)
    high = chain.finish()
    _check_outcome(chain, high, alert_expected=hardware is None)
    connects = chain.rig.processes["agent"].log_path.read_text().count("event=mqtt_connected")
    assert connects >= 2, f"the agent connected {connects} time(s); the outage did not bite"


def test_agent_sigkilled_and_restarted(chain: Chain, hil_keys: Path, hardware: Hardware | None) -> None:
    """SIGKILL the agent mid-stream, start it again: its outbox and sequence file carry on."""
    chain.setup(hil_keys)

    def restart(rig: ChainRig) -> None:
        rig.start_agent()

    faults = [Fault(5.0, "agent SIGKILL", lambda rig: rig.kill("agent")), Fault(6.0, "agent start", restart)]
    chain.play(SCENARIO, speed_factor=SPEED_FACTOR, faults=faults)
    high = chain.finish()
    _check_outcome(chain, high, alert_expected=False)
    log = chain.rig.processes["agent"].log_path.read_text()
    assert log.count("event=agent_started") == 2
    # the second boot starts above the block reserved by the first; the gap is announced
    second_start = int(re.findall(r"event=agent_started .*?seq_next=(\d+)", log)[1])
    announced = [(c["seq_skipped_from"], c["seq_skipped"]) for _, c in ledger_rows(chain.db, chain.rig.device_id)
                 if "seq_skipped_from" in c]  # fmt: skip
    assert len(announced) <= 1, announced
    if announced:
        first, count = announced[0]
        assert first + count == second_start, (announced, second_start)
    if hardware is None:
        raised = {a["rule"] for a in alert_rows(chain.db, chain.rig.device_id) if a["state"] == 0}
        assert raised == {"power_cut"}, raised
        assert chain.wait_level(_expected_level()) == _expected_level()


def test_collector_sigkilled_and_restarted(chain: Chain, hil_keys: Path, hardware: Hardware | None) -> None:
    """SIGKILL the collector across the power cut; its persistent session keeps what it missed."""
    chain.setup(hil_keys)
    faults = [Fault(7.0, "collector SIGKILL", lambda rig: rig.kill("collector")),
              Fault(15.0, "collector start", lambda rig: rig.restart_collector())]  # fmt: skip
    chain.play(SCENARIO, speed_factor=SPEED_FACTOR, faults=faults)
    high = chain.finish()
    _check_outcome(chain, high, alert_expected=hardware is None)
    assert chain.rig.processes["collector"].starts == 2


def test_outbox_overflows_during_a_long_outage(
    chain: Chain, hil_keys: Path, hardware: Hardware | None, tmp_path: Path
) -> None:
    """The smallest outbox the agent accepts (64 KiB), one fix per batch, receipts on, and the
    agent's network link down for most of the run: routine batches are evicted (counted and
    reported upstream, their seqs announced), the alert batches survive and arrive. The
    collector's ledger bridges the announced evictions, so receipts run to the last batch and
    the outbox drains to empty (``chain.finish`` checks it); the gaps show the evicted seqs as
    known losses and none missing. The alerts: an allowed region drawn around home only, so
    every commute leaves it (region_exit) and every return clears it."""
    region = tmp_path / "home-only.toml"
    region.write_text(
        '[[region]]\nid = "home"\nname = "home district"\ndatum = "wgs84"\n'
        "polygon = [[121.50, 31.20], [121.60, 31.20], [121.60, 31.25], [121.50, 31.25]]\n"
    )
    chain.setup(
        hil_keys,
        agent_extra={
            "outbox": {"max_bytes": 65_536},
            "batch": {"max_age_s": 0.05, "max_fixes": 1, "max_samples": 1},
            "rules": {"regions_file": str(region)},
            "reporting": {"enabled": False},  # every fix its own batch: the outbox must overflow
            # Receipts on: hundreds of evicted seqs are more holes than a receipt's 32 ranges
            # list; the agent announces them (issue 12), so the ledger bridges them.
            "downlink": {"receipts": "auto"},
        },
        relay_agent_link=True,  # a network outage: the broker stays up
        collector_extra={"downlink": {"signing_key": str(chain.rig.keys_dir / "collector.key")}},
    )
    faults = [Fault(2.0, "link cut", lambda rig: rig.relay_agent_link().cut()),
              Fault(32.0, "link restored", lambda rig: rig.relay_agent_link().restore())]  # fmt: skip
    # the normal week prints 10 GNSS epochs per wall second throughout (no 1x windows): ~300
    # one-fix batches during the outage, more than 64 KiB
    chain.play("commute_week", faults=faults)
    high = chain.finish()
    ledger = check_ledger(chain.db, chain.rig.device_id, expected_high=high)
    assert not ledger.problems, f"{ledger.summary()}: {ledger.problems}"
    assert ledger.evicted_batches > 0, f"nothing was evicted: the outage did not fill the outbox ({ledger.summary()})"
    # every missing batch was reported evicted and its seq announced, each counted once; an
    # announced one may still have arrived (its PUBACK lost to the outage, or its receipt late):
    # see chain_checks.check_ledger
    assert len(ledger.missing) <= ledger.evicted_batches + ledger.evicted_acked_batches
    assert set(ledger.missing) <= ledger.announced_evicted, sorted(set(ledger.missing) - ledger.announced_evicted)[:20]
    landed = ledger.announced_evicted - set(ledger.missing)
    assert len(landed) <= ledger.evicted_acked_batches + INFLIGHT_WINDOW, (len(landed), ledger.summary())
    # the receipts settled every acknowledged batch that was evicted (stored, or lost and announced)
    assert agent_evicted_unsettled(chain.rig.agent_data_dir) == 0
    gaps = json.loads(chain.rig.run_cli("collector", "gaps", "--device", chain.rig.device_id,
                                        "--config", str(chain.rig.collector_config)))  # fmt: skip
    assert (gaps["missing"], gaps["evicted"], gaps["high_seq"]) == (0, len(ledger.missing), high), gaps
    assert gaps["receipt_counter"], "the collector signed no receipt"
    # the last receipt signed runs contiguously past every evicted seq to the last batch
    view = seq_ledger_receipt_view(chain.db, chain.rig.device_id)
    assert view is not None, "no seq ledger for the device"
    assert view[1:] == (high, ()), view
    logged = agent_logged_alerts(chain.rig.processes["agent"].log_path.read_text())
    assert stored_alerts(chain.db, chain.rig.device_id) == logged, "alerts were lost or doubled"
    if hardware is None:
        assert logged, "no alert was raised during the outage: nothing showed that alerts survive"
        assert "region_exit" in str(logged), logged


def test_faults_scenario_serial_noise_gnss_restart_can_unplug(
    chain: Chain, hil_keys: Path, hardware: Hardware | None
) -> None:
    """The ``faults`` scenario: 200 bytes of line noise on the GNSS serial line, the receiver
    stopping and cold-restarting, the SLCAN adapter unplugged and plugged in again. The agent
    recovers each input (fixes after the restart, CAN samples after the re-plug) and the ledger
    stays whole."""
    if hardware is not None:
        pytest.skip("the faults scenario is injected by the simulator")
    chain.setup(hil_keys, agent_extra={"reporting": {"enabled": False}})  # every decoded fix goes up
    chain.play("faults")
    high = chain.finish()
    ledger = check_ledger(chain.db, chain.rig.device_id, expected_high=high)
    assert not ledger.problems, f"{ledger.summary()}: {ledger.problems}"
    events = {e.get("event"): e for e in chain.rig.sim_events() if e.get("type") == "event"}
    for name in ("line_noise", "gnss_stop", "gnss_restart", "can_unplug", "can_replug"):
        assert name in events, f"the simulator did not play {name}"
    import sqlite3

    with sqlite3.connect(f"file:{chain.db}?mode=ro", uri=True) as db:
        early = db.execute("SELECT COUNT(*) FROM fixes WHERE time_ms < 1577836800000").fetchone()[0]
        fixes_after = db.execute(
            "SELECT COUNT(*) FROM fixes WHERE time_ms > ?", (events["gnss_restart"]["scenario_time_ms"],)
        ).fetchone()[0]
    assert early == 0, "a fix with the receiver's 1980 default date was stored"
    assert fixes_after > 0, "no fix after the GNSS receiver restarted"
    # CAN samples are sent on change (an idling car changes little), so recovery is read from
    # the agent's log: the bus was lost at the unplug and reopened after the re-plug
    log = chain.rig.processes["agent"].log_path.read_text()
    replug_wall = float(events["can_replug"]["wall_time"])
    reopened = [
        float(m) for m in re.findall(r"ts=([0-9.]+) level=info logger=edge\.canbus\S* event=\"CAN .*reopened", log)
    ]
    assert any(t >= replug_wall - 0.5 for t in reopened), "the CAN bus was not reopened after the re-plug"
    assert "GNSS port" in log  # the GNSS loss was noticed and logged
    assert {a["rule"] for a in alert_rows(chain.db, chain.rig.device_id)} == set()
