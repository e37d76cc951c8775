"""Two trackers on one car (issue #17): one is torn out while the other keeps moving.

The paid-up loan L-1001 of the sample book is financed against the rig's car, which carries
the wired T-BOX ``tbox-0002`` (agent with NMEA and CAN) and a hidden battery-powered backup
``spy-0002`` (a second agent, GNSS only), linked to the loan through the API. Both simulators
play the same drive live, on the host clock (``sim run --start-now``, 1x), so both boxes
report the same spot at the same time and the collector's "silent for" threshold is real
time. The collector runs with ``tracker_silent_hours = 0.01`` (36 s, the smallest it takes)
and ``tracker_moved_m = 200`` instead of 2 h and 2 km.

After ``UNPLUG_AT_S`` one box is torn out (:func:`chain_driver.unplug`: its agent loses power
at once, its serial and CAN ports vanish) and the other keeps driving: the wired box in one
run, the backup in the other (docs/risk.md: both ways round are ``tracker_divergence``,
high, on-site check). Checked through the API: the loan is ``normal`` while both report,
never shows the reason before the silent box's last record is 36 s old, then shows
``tracker_divergence`` naming the silent box and the one still reporting, and its level
moves to ``high`` (a risk event). Neither box raised an alert of its own, so the level is the
divergence's. The box still running is stopped cleanly and its ledger checked.
"""

from __future__ import annotations

import csv
import io
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from chain_checks import alert_rows, check_ledger
from chain_driver import DEVICE_ID, Chain, Fault, Hardware, PlayResult, unplug

from collector.loans.csv_import import sample_loan_book
from firmware_sim.rig import ChainRig

LOAN = "L-1001"  # paid up: normal from its repayments alone (docs/risk.md, the sample book)
BACKUP_ID = "spy-0002"
REASON = "tracker_divergence"
SILENT_HOURS = 0.01  # 36 s
SILENT_S = SILENT_HOURS * 3600
MOVED_M = 200
MOVING_FIX_S = 5.0  # both boxes (the rig's batches close every 10 s)
UNPLUG_AT_S = 15.0  # wall seconds after the scenario start: a batch or two of each box first
#: beyond the threshold: the other box's next batch (every 10 s) and the API poll, under load
DETECT_MARGIN_S = 30.0

# One drive at 50 km/h, 1x, about 5 minutes (an upper bound: the run ends once the reason is
# shown). Away from the sample places, so no place rule can fire.
DRIVE = """\
name = "two_trackers_drive"
description = "one drive at 1x for the two-tracker HIL test"
start = 2026-03-12T14:00:00+08:00   # moved to the host clock by --start-now
timezone = "Asia/Shanghai"
position = [31.2290, 121.4480]
altitude_m = 6.0
speed = 1
seed = 17

[gnss]
rate_hz = 1
noise_m = 2.0

[can]
background_fps = 20

[[segment]]
kind = "drive"
speed_kmh = 50
route = [[31.2470, 121.4480], [31.2470, 121.4700], [31.2290, 121.4700]]
"""


def _loan_on_the_rig_car(path: Path) -> Path:
    """L-1001 of the sample book (re-dated to today), financed against the rig's T-BOX."""
    today = datetime.now(tz=UTC).date()
    rows = list(csv.DictReader(io.StringIO(sample_loan_book(today))))
    row = next(r for r in rows if r["loan_id"] == LOAN)
    row["device_id"] = DEVICE_ID
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(row), lineterminator="\n")
    writer.writeheader()
    writer.writerow(row)
    path.write_text(out.getvalue())
    return path


def _divergence(chain: Chain) -> dict[str, Any] | None:
    return next((r for r in chain.risk()["reasons"] if r["code"] == REASON), None)


@pytest.mark.parametrize("torn_out", ["wired", "backup"])
def test_one_tracker_torn_out_while_the_other_moves(
    torn_out: str, chain: Chain, hil_keys: Path, hardware: Hardware | None, tmp_path: Path
) -> None:
    if hardware is not None:
        pytest.skip("two simulated boxes on one simulated car")
    started = time.monotonic()
    chain.loan_id = LOAN
    chain.setup(
        hil_keys,
        loans=_loan_on_the_rig_car(tmp_path / "loan.csv"),
        collector_extra={"risk": {"tracker_silent_hours": SILENT_HOURS, "tracker_moved_m": MOVED_M}},
        # a car driving straight uploads a fix only every moving_max_interval_s (120 s by default),
        # and a box that uploads nothing is silent to the collector: a fix every 5 s instead
        agent_extra={"reporting": {"moving_max_interval_s": MOVING_FIX_S}},
    )
    backup = chain.add_tracker(BACKUP_ID)
    assert chain.level() == "normal"
    gone, staying = (chain.rig, backup) if torn_out == "wired" else (backup, chain.rig)
    unplugged: list[float] = []

    def tear_out(_rig: ChainRig) -> None:
        unplug(gone)
        unplugged.append(time.time())

    def shown(result: PlayResult) -> bool:
        return REASON in result.reason_first_seen and "high" in result.level_first_seen

    drive = tmp_path / "drive.toml"
    drive.write_text(DRIVE)
    played = chain.play(
        str(drive),
        live=True,
        faults=[Fault(UNPLUG_AT_S, f"{gone.device_id} unplugged", tear_out)],
        until=shown,
        timeout=UNPLUG_AT_S + SILENT_S + DETECT_MARGIN_S + 60,
    )
    reason = _divergence(chain)
    level = chain.level()
    risk_event_s = chain.risk_event_time("high")
    device_alerts = {box.device_id: alert_rows(chain.db, box.device_id) for box in (chain.rig, backup)}
    high = chain.finish(box=staying)
    elapsed = time.monotonic() - started
    print(f"\n{torn_out} torn out: test ran {elapsed:.1f} s, reason shown {_after(played, unplugged):.1f} s "
          "after the unplug")  # fmt: skip

    # both boxes reported and agreed before the unplug: the loan was normal, no divergence
    assert unplugged, played.faults_done
    assert played.level_first_seen.get("normal", float("inf")) < unplugged[0], played.level_first_seen
    assert reason is not None, f"{REASON} never shown: {played}"
    evidence = reason["evidence"]["alert"]["evidence"]  # the collector-side episode's evidence
    assert evidence["kind"] == "silent_while_other_moves", evidence
    assert evidence["silent_device"] == gone.device_id, evidence
    assert evidence["reporting_device"] == staying.device_id, evidence
    assert (evidence["threshold_hours"], evidence["threshold_m"]) == (SILENT_HOURS, MOVED_M), evidence
    assert evidence["distance_m"] > MOVED_M, evidence
    assert reason["alert_episode"] == f"{REASON}:silent:{gone.device_id}:{evidence['silent_since_ms']}", reason
    # the silence began with the torn-out box's last record (vehicle time = host time, live),
    # about one batch interval (10 s) plus transit before the unplug
    silent_since_s = evidence["silent_since_ms"] / 1000
    assert unplugged[0] - 20 <= silent_since_s <= unplugged[0], (silent_since_s, unplugged)
    # never before the threshold, and soon after it (the other box's next batch reassesses)
    first_shown = played.reason_first_seen[REASON]
    assert silent_since_s + SILENT_S <= first_shown <= silent_since_s + SILENT_S + DETECT_MARGIN_S, (
        first_shown - silent_since_s
    )
    # the loan escalated because of it: normal -> high (docs/risk.md: tracker_divergence is high,
    # on-site check, either way round), recorded as a risk event after the threshold
    assert level == "high", chain.risk()
    assert played.level_first_seen["high"] >= silent_since_s + SILENT_S, played.level_first_seen
    assert reason["level"] == "high", reason
    assert risk_event_s is not None, "no risk event to high"
    assert risk_event_s >= silent_since_s + SILENT_S, risk_event_s - silent_since_s
    assert device_alerts == {chain.rig.device_id: [], BACKUP_ID: []}, device_alerts
    # the box still running lost nothing
    ledger = check_ledger(chain.db, staying.device_id, expected_high=high)
    assert not ledger.problems, f"{ledger.summary()}: {ledger.problems}"
    assert ledger.fixes > 0, ledger.summary()


def _after(played: PlayResult, unplugged: list[float]) -> float:
    seen = played.reason_first_seen.get(REASON)
    return seen - unplugged[0] if seen is not None and unplugged else float("nan")
