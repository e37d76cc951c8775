"""The cellular link a T-BOX really has: it goes silent instead of breaking.

A TCP relay between the agent and the broker (firmware_sim.rig.LinkCutter) black-holes the
connection, no byte either way, no RST, no FIN, for ``LIENWATCH_HIL_STALL_S`` seconds
(default 180, the three minutes of issue 12), then flaps it every ``FLAP_S`` seconds. The
``unplug`` scenario cuts the 12 V supply while the link is silent, so the power-cut alert is
raised during the stall. The collector signs receipts and the agent runs with receipts
``required``: a batch the broker acknowledged just before the silence, whose receipt never
came, is published again.

Checks: nothing lost, nothing stored twice (chain_checks.check_ledger), every alert the agent
logged stored exactly once, and the power-cut alert stored within the keepalive plus the
reconnect backoff after the link returned (measured; printed and recorded as a property).

Why the stall is a parameter: three minutes of silence makes this one test take about four
minutes; ``LIENWATCH_HIL_STALL_S=60`` checks the same behaviour in about a minute and a
half (the agent's keepalive is 10 s here, so 60 s is six keepalive periods of silence). The
stall must outlast the power-cut rule's wait (about 45 s of wall time after the cut at
``--speed-factor 2``) so that the alert is raised while the link is silent.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest
from chain_checks import agent_logged_alerts, alert_rows, check_ledger, stored_alerts
from chain_driver import Chain, Fault, Hardware

from firmware_sim.rig import ChainRig

SCENARIO = "unplug"
SPEED_FACTOR = 2.0
STALL_S = float(os.environ.get("LIENWATCH_HIL_STALL_S", "180"))
STALL_AT_S = 4.0  # the power cut comes at about 12 s of wall time (SPEED_FACTOR 2)
FLAP_S = 3.0  # after the stall: down, up, down, ... every FLAP_S, ending up
FLAPS = 10
KEEPALIVE_S = 10
BACKOFF_MAX_S = 2.0  # the rig's [mqtt] backoff_max_s
#: a link that returns is noticed at once, or after at most two keepalive periods (paho
#: sends PINGREQ after one silent period and gives up after the next), then one backoff
#: delay, a connect, the publish, the collector's commit; the margin covers two shared cores
BOUND_S = 2 * KEEPALIVE_S + BACKOFF_MAX_S + 10.0


def _link(rig: ChainRig, state: str) -> None:
    link = rig.relay_agent_link()
    if state == "down":
        link.blackhole()
    else:
        link.restore()


def test_link_black_holed_then_flapping(
    chain: Chain, hil_keys: Path, hardware: Hardware | None, record_property: pytest.RecordProperty
) -> None:
    chain.setup(
        hil_keys,
        agent_extra={
            "mqtt": {"keepalive_s": KEEPALIVE_S},
            "downlink": {"receipts": "required", "receipt_timeout_s": 20.0},
        },
        relay_agent_link=True,
        collector_extra={"downlink": {"signing_key": str(chain.rig.keys_dir / "collector.key")}},
    )
    back_at = STALL_AT_S + STALL_S
    faults = [
        Fault(STALL_AT_S, "black hole", lambda rig: _link(rig, "down")),
        Fault(back_at, "link returns", lambda rig: _link(rig, "up")),
    ]
    for i in range(1, FLAPS + 1):
        state = "down" if i % 2 else "up"
        faults.append(Fault(back_at + i * FLAP_S, f"flap {state}", lambda rig, s=state: _link(rig, s)))
    if FLAPS % 2:
        faults.append(Fault(back_at + (FLAPS + 1) * FLAP_S, "flap up", lambda rig: _link(rig, "up")))
    result = chain.play(SCENARIO, speed_factor=SPEED_FACTOR, faults=faults, timeout=STALL_S + 180.0)
    high = chain.finish()

    ledger = check_ledger(chain.db, chain.rig.device_id, expected_high=high)
    assert not ledger.problems, f"{ledger.summary()}: {ledger.problems}"
    log = chain.rig.processes["agent"].log_path.read_text()
    assert stored_alerts(chain.db, chain.rig.device_id) == agent_logged_alerts(log), "alerts lost or doubled"
    if hardware is not None:
        return
    done = dict(result.faults_done)
    stall_wall = result.scenario_start_wall + done["black hole"]
    back_wall = result.scenario_start_wall + done["link returns"]
    cut = chain.rig.sim_event("event", "power_cut")
    assert cut is not None, "the simulator never cut the power"
    assert stall_wall <= float(cut["wall_time"]) < back_wall, "the power cut did not happen during the stall"
    raised = [a for a in alert_rows(chain.db, chain.rig.device_id) if a["rule"] == "power_cut" and a["state"] == 0]
    assert len(raised) == 1, raised
    after_return_s = _received_ms(chain, raised[0]["time_ms"]) / 1000.0 - back_wall
    record_property("stall_s", STALL_S)
    record_property("alert_stored_after_link_returned_s", round(after_return_s, 2))
    print(f"\nstall {STALL_S:.0f} s, keepalive {KEEPALIVE_S} s, backoff max {BACKOFF_MAX_S} s: power-cut alert "
          f"stored {after_return_s:.2f} s after the link returned (bound {BOUND_S:.0f} s); "
          f"agent connects: {log.count('event=mqtt_connected')}")  # fmt: skip
    # Raised during the silence (the rule waits ~45 s of wall time after the cut), so it can
    # only have been stored once the link was back.
    assert 0 <= after_return_s <= BOUND_S


def _received_ms(chain: Chain, alert_time_ms: int) -> int:
    """Collector clock (wall ms) when the batch carrying the raised power-cut alert was stored."""
    with sqlite3.connect(f"file:{chain.db}?mode=ro", uri=True) as db:
        row = db.execute(
            "SELECT b.received_ms FROM alerts a JOIN batches b ON b.id = a.batch_id "
            "WHERE a.device_id = ? AND a.rule = 'power_cut' AND a.time_ms = ? AND a.state = 0",
            (chain.rig.device_id, alert_time_ms),
        ).fetchone()
    assert row is not None
    return int(row[0])
