"""``lienwatch demo --keep``: one consistent story on one clock, and a parked car that stays quiet.

Runs the demo itself (``python -m protocol demo --keep``: simulator -> agent -> broker ->
collector -> API, every part its own process) for the default scenario and checks the API
against the scenario's own timeline, read from the simulator's event lines: the vehicle
has been parked since the scenario's ``stop_begin`` and the scenario ended now, so the
stationary time is the dwell, the default track window (the last 24 hours) holds fixes and
the condition report has days. Then the chain is left running past the agent's signal-loss
timeout (``[rules.power_cut] missing_after_s``, 90 s, the demo's real setting): the held
car keeps reporting, and no new alert and no risk change may appear.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from firmware_sim.rig import API_KEYS
from tests.child_processes import ChildProcesses
from tests.collector_process import wait_until

DAY_MS = 86_400_000
SIGNAL_LOSS_S = 90.0  # the agent's default [rules.power_cut] missing_after_s (edge/rules/config.py)
HEARTBEAT_S = 30.0  # the 12 V voltage heartbeat of the signal map


def _events(workdir: Path) -> list[dict[str, Any]]:
    path = workdir / "sim-events.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _event(events: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any] | None:
    found = [e for e in events if e.get("type") == kind and (name is None or e.get("event") == name)]
    return found[-1] if found else None


def test_demo_keep_tells_one_story_and_a_parked_car_stays_quiet(processes: ChildProcesses, tmp_path: Path) -> None:
    workdir = tmp_path / "demo"
    out_path = tmp_path / "demo.out"
    with out_path.open("wb") as out:
        demo = processes.start(
            [sys.executable, "-m", "protocol", "demo", "--keep", "--workdir", str(workdir), "--timeout", "300"],
            stdout=out,
            stderr=subprocess.STDOUT,
        )

    def output() -> str:
        return out_path.read_text(errors="replace")

    def alive() -> bool:
        """False while the demo runs (so ``alive() or condition`` waits for the condition); raises if it exited."""
        if demo.poll() is not None:
            raise AssertionError(f"demo exited {demo.returncode}:\n{output()}")
        return False

    try:
        wait_until(lambda: alive() or "The chain keeps running" in output(), timeout=400, what="the demo's OK")
        url = re.search(r"API docs: (http://127\.0\.0\.1:\d+)/docs", output())
        assert url, output()
        api = httpx.Client(
            base_url=url.group(1), headers={"Authorization": f"Bearer {API_KEYS['risk_analyst']}"}, timeout=10
        )
        held = wait_until(lambda: alive() or _event(_events(workdir), "hold"), timeout=120, what="the scenario end")
        events = _events(workdir)
        parked = _event(events, "event", "stop_begin")
        drive = _event(events, "event", "drive_start")
        assert parked is not None
        assert drive is not None
        end_ms, parked_ms = held["scenario_time_ms"], parked["scenario_time_ms"]
        # the scenario ended now: on the host's calendar, not in the scenario file's spring
        assert abs(end_ms - time.time() * 1000) < 120_000
        dwell_days = (end_ms - parked_ms) / DAY_MS
        assert 3.0 < dwell_days < 4.1  # parked_in_market: three days and a bit, plus up to a day of catch-up

        # --- evidence: the stationary time is the scenario's dwell
        def loan() -> dict[str, Any]:
            return api.get("/v1/loans/L-1002").json()  # type: ignore[no-any-return]

        def assessed_after_end() -> dict[str, Any] | None:
            body = loan()
            return body if body["risk"]["evaluated_ms"] >= end_ms else None

        body = wait_until(assessed_after_end, what="an assessment after the scenario's end")
        reasons = {r["code"]: r for r in body["risk"]["reasons"]}
        assert "stationary_while_overdue" not in reasons  # 3 days < 7: the bug said 240 days
        # v2 decides (docs/risk.md): the dwell is the explained reason market_while_overdue, resting
        # on the device's market alert, whose dwell began where the scenario parked
        market = reasons["market_while_overdue"]["evidence"]
        alert = market["alert"]["evidence"]
        assert abs(alert["dwell_start_ms"] - parked_ms) < 120_000
        stationary_days = (body["risk"]["evaluated_ms"] - alert["dwell_start_ms"]) / DAY_MS
        assert abs(stationary_days - dwell_days) < 0.05

        # --- the track's default period (the last 24 hours) holds the parked car's fixes
        points = api.get("/v1/loans/L-1002/track", params={"reason": "demo story check"}).json()["points"]
        assert points
        assert all(end_ms - DAY_MS - 60_000 <= p["time_ms"] <= time.time() * 1000 for p in points)
        assert all(p["speed_mps"] < 2.0 for p in points)

        # --- the condition report: the drive day has the route's distance, the parked days none
        condition = api.get("/v1/loans/L-1002/condition").json()
        days = {d["day"]: d for d in condition["days"]}
        assert days
        drive_day = time.strftime("%Y-%m-%d", time.gmtime(drive["scenario_time_ms"] / 1000))
        assert abs(days[drive_day]["distance_km"] - drive["length_m"] / 1000) < 0.5
        assert sum(d["distance_km"] for day, d in days.items() if day != drive_day) < 0.2

        # --- left running past the signal-loss timeout: quiet
        alerts_before = sorted((a["rule"], a["episode"]) for a in api.get("/v1/loans/L-1002/alerts").json())
        risk_before = loan()["risk"]
        events_before = api.get("/v1/loans/L-1002/risk-events").json()
        stored_before = _batches(url.group(1))
        printed_before = output()
        time.sleep(SIGNAL_LOSS_S + 2 * HEARTBEAT_S)
        alive()
        assert _batches(url.group(1)) > stored_before  # the parked car keeps reporting
        assert sorted((a["rule"], a["episode"]) for a in api.get("/v1/loans/L-1002/alerts").json()) == alerts_before
        risk_after = loan()["risk"]
        assert (risk_after["level"], risk_after["changed_ms"]) == (risk_before["level"], risk_before["changed_ms"])
        assert risk_after["evaluated_ms"] > risk_before["evaluated_ms"]  # reassessed, unchanged
        assert api.get("/v1/loans/L-1002/risk-events").json() == events_before
        assert "power_cut" not in (workdir / "agent.log").read_text()
        later = output()[len(printed_before) :]
        assert not re.search(r"^\S+\s+(alert|risk)\s", later, re.MULTILINE), later
        api.close()
    finally:
        if demo.poll() is None:
            demo.send_signal(signal.SIGINT)
            demo.wait(60)
    assert "stopped: simulator, agent, collector and broker" in output()


def _batches(api_url: str) -> int:
    status = httpx.get(
        f"{api_url}/v1/devices/tbox-0002", headers={"Authorization": f"Bearer {API_KEYS['admin']}"}, timeout=10
    ).json()["status"]
    return int(status["batches_stored"])
