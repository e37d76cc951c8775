"""A settled loan stops the tracking (issue #16), the whole chain in separate processes.

The collector serves with a downlink signing key; mid-scenario the loan of the box is settled
through the API. The collector signs the box's configuration with ``tracking: {"enabled":
false, "reason": "settled"}`` and publishes it retained; the agent applies it and from then
on stores and sends no position. Checked on the collector's database: no stored fix was
generated (simulator wall time) after the agent logged the change, while the scenario went on
for a good while after it.
"""

from __future__ import annotations

import re
import sqlite3
import time
from pathlib import Path

from chain_checks import ScenarioClock
from chain_driver import LOAN_ID, Chain, Fault, Hardware

from firmware_sim.rig import ChainRig

SCENARIO = "unplug"
SPEED_FACTOR = 2.0
SETTLE_AT_S = 4.0
_TRACKING_OFF = re.compile(r"ts=([0-9.]+) .*event=tracking_changed enabled=False reason=settled")


def test_a_settled_loans_box_stops_sending_positions(chain: Chain, hil_keys: Path, hardware: Hardware | None) -> None:
    rig = chain.rig
    rig.start_broker()
    rig.generate_keys(hil_keys)
    rig.write_collector_config(downlink={"signing_key": str(rig.keys_dir / "collector.key"), "resync_interval_s": 1.0})
    rig.start_collector()
    rig.provision_device()
    rig.import_sample_loans()
    settled: list[dict[str, object]] = []

    def settle(r: ChainRig) -> None:
        settled.append(r.http("POST", f"/v1/loans/{LOAN_ID}/status", json={"status": "settled"}))

    result = chain.play(SCENARIO, speed_factor=SPEED_FACTOR, faults=[Fault(SETTLE_AT_S, "loan settled", settle)])
    chain.finish()
    assert settled[0]["status"] == "settled"
    assert settled[0]["configs_signed"], settled  # signed in the request, published by the running collector
    log = rig.processes["agent"].log_path.read_text()
    found = _TRACKING_OFF.search(log)
    assert found, "the agent never logged tracking_changed enabled=False"
    applied_wall = float(found.group(1))
    assert applied_wall - result.scenario_start_wall < SETTLE_AT_S + 15, "the stop configuration arrived late"

    with sqlite3.connect(rig.database_path) as db:
        fix_times = [t for (t,) in db.execute("SELECT time_ms FROM fixes WHERE device_id = ?", (rig.device_id,))]
    assert fix_times, "no position was stored before the settlement"
    if hardware is None:
        events = list(rig.sim_events())
        clock = ScenarioClock(events)
        last_fix_wall = clock.wall_at(max(fix_times))
        assert last_fix_wall is not None
        assert last_fix_wall <= applied_wall + 0.5, (last_fix_wall, applied_wall)
        sim_end_wall = max(float(e["wall_time"]) for e in events if "wall_time" in e)
        assert sim_end_wall - applied_wall > 10, "the scenario ended too soon after the change to show anything"
    else:
        assert time.time() - applied_wall > 10
