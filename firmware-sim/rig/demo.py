"""``lienwatch demo``: the whole chain on embedded defaults, shown as it happens.

simulator -> agent -> private Mosquitto -> collector (SQLite, temporary data directory) -> API

It provisions a device key, imports the sample loan book (loan L-1002, three instalments
late, is financed against the car whose T-BOX is ``tbox-0002``), plays a scenario at high
speed and follows the loan's risk level through the API. It exits 0 when the expected level
is reached, 1 otherwise (with the tail of every process's log), and always stops every
process it started (Ctrl-C included).

One clock: the simulator plays the scenario on today's calendar (``sim run --end-now``:
moved by whole days so every local time of day is kept, ending when its play ends), the loan
book is re-dated to today and the collector runs on the host clock, so the vehicle data,
the loan book and the collector's "now" agree. Every time the demo prints is in one zone,
:data:`LOCAL_ZONE` (the borrower's), named in the first lines. With ``--keep`` the car then
stays parked and reporting at 1x (``sim run --hold``) and the demo keeps printing what changes.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx

from .chain import API_KEYS, ChainRig, RigError
from .demo_console import add_demo_users, console_lines

__all__ = ["DEMOS", "main"]

DEVICE_ID = "tbox-0002"
LOAN_ID = "L-1002"
LEVELS = ("normal", "watch", "high", "critical")
LOCAL_ZONE = "Asia/Shanghai"
#: simulator events not worth a line in the demo
QUIET_EVENTS = frozenset({"idle_start", "idle_end", "drive_start", "door_close", "stop_end"})
#: after the scenario ends, how long the rest of the chain gets to deliver and assess
END_GRACE_S = 30.0
#: a normal week: how long after the end to watch for late alerts before declaring success
QUIET_WAIT_S = 10.0

#: scenario -> (what it shows, the level the late loan must reach, the alert rule expected)
DEMOS: dict[str, tuple[str, str, str]] = {
    "parked_in_market": ("driven into a used-car market and parked there for three days", "high",
                         "stationary_near_market"),
    "night_doors": ("whose doors are opened again and again in the middle of the night", "watch",
                    "night_door_openings"),
    "unplug": ("whose T-BOX is unplugged from the 12 V supply", "critical", "power_cut"),
    "tow_away": ("towed away with the ignition off", "critical", "towing"),
    "gnss_jamming": ("whose GNSS is jammed while it drives", "critical", "gnss_jamming"),
    "commute_week": ("driven through a normal commute week (nothing should happen)", "watch", ""),
    "ev_battery": ("whose traction battery loses its health fast and is then taken out at night", "watch",
                   "hv_disconnect"),
    "relocation": ("that stops coming home: driven to another city and kept there night after night", "watch",
                   "relocation"),
    "pawn_lot_second_lien": ("left in a pawn lot as the pledge for a second loan", "high", "stationary_near_market"),
}  # fmt: skip


class _InterruptedError(Exception):
    pass


def _stamp() -> str:
    return datetime.now(tz=ZoneInfo(LOCAL_ZONE)).strftime("%H:%M:%S")


def _say(text: str) -> None:
    print(f"{_stamp()}  {text}", flush=True)


def _fmt_time(value: Any) -> str:
    """An epoch-ms time (or an ISO-8601 one) in :data:`LOCAL_ZONE`, like every time the demo prints."""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp() * 1000
        except ValueError:
            return value
    if isinstance(value, (int, float)):
        return datetime.fromtimestamp(value / 1000, tz=ZoneInfo(LOCAL_ZONE)).strftime("%Y-%m-%d %H:%M:%S")
    return str(value)


class _Follower:
    """Turns the simulator's event lines and the API's state into progress lines."""

    def __init__(self, rig: ChainRig) -> None:
        self.rig = rig
        self.events_seen = 0
        self.last_clock_print = 0.0
        self.alerts_seen: set[tuple[str, str]] = set()
        self.rules_seen: set[str] = set()
        self.batches_seen = -1
        self.last_batch_print = 0.0
        self.level: str | None = None
        self.sim_done = False

    def sim_lines(self) -> Iterator[str]:
        events = list(self.rig.sim_events())
        new, self.events_seen = events[self.events_seen :], len(events)
        for event in new:
            kind = event.get("type") or "?"
            if kind in ("clock", "progress"):
                now = time.monotonic()
                if now - self.last_clock_print >= 2.0:
                    self.last_clock_print = now
                    pct = event.get("progress_pct", event.get("percent"))
                    pct_text = f" ({pct:.0f}%)" if isinstance(pct, (int, float)) else ""
                    when = event.get("scenario_time_ms", event.get("scenario_time", "?"))
                    if not self.sim_done:
                        yield f"scenario   clock {_fmt_time(when)}{pct_text}"
            elif kind == "hold":
                self.sim_done = True
                yield (
                    f"scenario   finished at {_fmt_time(event.get('scenario_time_ms'))}: the car stays parked "
                    "and its T-BOX keeps reporting in real time"
                )
            elif kind in ("end", "done", "finished", "scenario_end"):
                self.sim_done = True
                yield "scenario   finished"
            elif kind == "event":
                name = event.get("event", "?")
                if name in QUIET_EVENTS:
                    continue
                extra = {k: event[k] for k in ("door", "state", "duration_s", "lat", "lon") if k in event}
                details = " ".join(f"{k}={v}" for k, v in extra.items())
                yield f"vehicle    {name:<14} at {_fmt_time(event.get('scenario_time_ms', '?'))} {details}"

    def api_lines(self) -> Iterator[str]:
        status = self.rig.get(f"/v1/devices/{DEVICE_ID}").get("status") or {}
        batches = status.get("batches_stored")
        now = time.monotonic()
        every_s = 60.0 if self.sim_done else 3.0  # a parked car reporting: a line a minute
        if isinstance(batches, int) and batches != self.batches_seen and now - self.last_batch_print >= every_s:
            self.last_batch_print = now
            self.batches_seen = batches
            yield (
                f"collector  {batches} batches stored from {DEVICE_ID} "
                f"({status.get('fixes_stored', 0)} fixes, {status.get('alerts_stored', 0)} alert records, "
                f"{status.get('duplicates', 0)} duplicates ignored)"
            )
        for alert in self.rig.get(f"/v1/loans/{LOAN_ID}/alerts", role="risk_analyst"):
            key = (str(alert.get("rule")), str(alert.get("episode")))
            if key not in self.alerts_seen:
                self.alerts_seen.add(key)
                self.rules_seen.add(key[0])
                evidence = json.dumps(alert.get("evidence", {}), default=str)
                yield (
                    f"alert      {alert.get('rule')} ({alert.get('severity')}) raised on the vehicle at "
                    f"{_fmt_time(alert.get('raised_ms', alert.get('time_ms')))}; evidence {evidence[:200]}"
                )
        loan = self.rig.get(f"/v1/loans/{LOAN_ID}", role="risk_analyst")
        risk = loan.get("risk", {})
        level = risk.get("level")
        if level != self.level:
            old, self.level = self.level, level
            facts = loan.get("repayment", {})
            yield (
                f"risk       loan {LOAN_ID}: {old or 'normal'} -> {str(level).upper()}  "
                f"(next step: {risk.get('next_step')}; {facts.get('consecutive_late', '?')} consecutive late, "
                f"{facts.get('days_past_due', '?')} days past due)"
            )
            for reason in risk.get("reasons", []):
                yield f"             reason {reason.get('code')} [{reason.get('level')}]"


def _check_alive(rig: ChainRig) -> None:
    for name, proc in rig.processes.items():
        if name != "sim" and not proc.running:
            raise RigError(f"{name} stopped unexpectedly:\n{proc.tail()}")


def _follow(rig: ChainRig, follower: _Follower) -> None:
    """``--keep``: print what the simulator, the collector and the risk level do until interrupted."""
    while True:
        for line in follower.sim_lines():
            _say(line)
        with contextlib.suppress(httpx.HTTPError):  # a slow answer must not end the demo
            for line in follower.api_lines():
                _say(line)
        _check_alive(rig)
        time.sleep(1)


def run_demo(scenario: str, *, speed: float | None, workdir: Path, timeout: float, keep: bool) -> int:
    story, expected, rule = DEMOS.get(scenario, (scenario, "high", ""))
    _say(f"LienWatch demo: a car {story}.")
    _say(f"Every time shown is {LOCAL_ZONE} time (the borrower's zone, UTC{datetime.now(ZoneInfo(LOCAL_ZONE)):%z}).")
    _say("The scenario plays on today's calendar: its last moment is now, the loan book is dated today.")
    _say(f"The car's T-BOX is {DEVICE_ID}; its loan {LOAN_ID} is three instalments late.")
    _say(f"Expected: the loan reaches '{expected}' within {timeout:.0f} s. Work directory: {workdir}")
    rig = ChainRig(workdir, device_id=DEVICE_ID, say=_say)
    started = time.monotonic()
    try:
        rig.start_broker()
        rig.generate_keys()
        rig.write_collector_config(downlink={"signing_key": str(rig.keys_dir / "collector.key")})
        rig.start_collector()
        rig.provision_device()
        out = rig.run_cli("collector", "loans", "import", "--sample", "--config", str(rig.collector_config))
        _say(f"loans      sample loan book imported (re-dated to today): {out.strip()}")
        follower = _Follower(rig)
        for line in follower.api_lines():
            _say(line)
        rig.start_sim(scenario, speed=speed, extra=("--end-now", "--hold") if keep else ("--end-now",))
        rig.start_agent()
        reached = False
        sim_done_at: float | None = None
        deadline = started + timeout
        while time.monotonic() < deadline:
            for line in follower.sim_lines():
                _say(line)
            for line in follower.api_lines():
                _say(line)
            level_ok = bool(follower.level) and LEVELS.index(str(follower.level)) >= LEVELS.index(expected)
            if rule and level_ok and rule in follower.rules_seen:
                reached = True
                break
            if not rule and follower.rules_seen:
                break  # a normal week must raise nothing

            _check_alive(rig)
            if follower.sim_done:
                sim_done_at = sim_done_at or time.monotonic()
                waited = time.monotonic() - sim_done_at
                if not rule and waited > QUIET_WAIT_S:
                    # A normal week: success is the scenario ending with no alert and no escalation.
                    reached = follower.level == expected
                    break
                if waited > END_GRACE_S:
                    break
            time.sleep(0.5)
        elapsed = time.monotonic() - started
        if not reached:
            wanted = f"'{expected}'" + (f" with a {rule} alert" if rule else " and no alert")
            _say(
                f"FAILED: loan {LOAN_ID} is '{follower.level}' after {elapsed:.0f} s "
                f"(alerts: {sorted(follower.rules_seen) or 'none'}), expected {wanted}."
            )
            print(rig.logs(), file=sys.stderr)
            return 1
        _say(f"OK: loan {LOAN_ID} reached '{follower.level}' {elapsed:.0f} s after start.")
        _say(f"API docs: {rig.api_url}/docs   (OpenAPI: {rig.api_url}/openapi.json)")
        add_demo_users(rig.collector_config)  # after the timed part: five CLI runs take a while
        for line in console_lines(rig.api_url):
            _say(line)
        for role, key in API_KEYS.items():
            _say(f"API key    {role:<13} {key}")
        _say(f"Try:  curl -H 'Authorization: Bearer {API_KEYS['risk_analyst']}' {rig.api_url}/v1/loans/{LOAN_ID}")
        if keep:
            _say("The chain keeps running (the car stays parked, reporting); press Ctrl-C to stop everything.")
            with contextlib.suppress(_InterruptedError):
                _follow(rig, follower)
        return 0
    except _InterruptedError:
        _say("interrupted: stopping everything")
        return 130
    except RigError as exc:
        _say(f"FAILED: {exc}")
        print(rig.logs(), file=sys.stderr)
        return 1
    finally:
        rig.stop()
        _say("stopped: simulator, agent, collector and broker")


def main(argv: list[str]) -> int:
    """``lienwatch demo [--scenario NAME] ...``; returns the exit status (0: the expected level was reached)."""
    parser = argparse.ArgumentParser(prog="lienwatch demo", description=__doc__.splitlines()[0].replace("``", ""))
    parser.add_argument("--scenario", default="parked_in_market", choices=sorted(DEMOS), help="scenario to play")
    parser.add_argument("--speed", type=float, help="override the scenario's time acceleration")
    parser.add_argument("--workdir", type=Path, help="keep keys, databases and logs here (default: a temp dir)")
    parser.add_argument("--timeout", type=float, default=110.0, help="seconds before giving up (default 110)")
    parser.add_argument("--keep", action="store_true", help="keep the chain running at the end until Ctrl-C")
    args = parser.parse_args(argv)

    def interrupt(signum: int, frame: object) -> None:
        raise _InterruptedError

    signal.signal(signal.SIGINT, interrupt)
    signal.signal(signal.SIGTERM, interrupt)
    if args.workdir:
        return run_demo(args.scenario, speed=args.speed, workdir=args.workdir, timeout=args.timeout, keep=args.keep)
    with tempfile.TemporaryDirectory(prefix="lienwatch-demo-") as tmp:
        return run_demo(args.scenario, speed=args.speed, workdir=Path(tmp), timeout=args.timeout, keep=args.keep)
