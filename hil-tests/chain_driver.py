"""Drives one chain (simulator or real T-BOX -> agent -> broker -> collector -> API) for a HIL test.

How this works
--------------
:class:`Chain` wraps a :class:`firmware_sim.rig.ChainRig`: :meth:`Chain.setup` starts the
broker and the collector, registers the device and imports the sample loan book;
:meth:`Chain.play` starts the simulator (or, with a real T-BOX configured through the
environment, only the agent on the real ports), then polls the API for the loan's risk
level while the scenario plays, firing the test's faults at wall offsets from the scenario
start; :meth:`Chain.finish` stops the agent cleanly (it flushes its open batch and drains
its outbox) and waits until the collector has stored the highest sequence number the agent
ever committed, so the checks that follow see the final state. Every wait is bounded.

A car may carry a second tracker (:meth:`Chain.add_tracker`: a GNSS-only box with its own
simulator and agent, linked to the loan through the API); :meth:`Chain.play` then starts it
too, and ``live=True`` puts every simulator on the host clock (``sim run --start-now``) so
that both boxes report the same spot at the same time and the collector's "silent for"
thresholds are real time. :func:`unplug` tears a box out (a fault action).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chain_checks import LEVELS, agent_committed_high, stored_seq_count

from firmware_sim.rig import ChainRig, RigError

ROOT = Path(__file__).resolve().parent.parent
DEVICE_ID = "tbox-0002"  # the T-BOX of the late loan L-1002 in the sample book
LOAN_ID = "L-1002"


@dataclass(frozen=True)
class Hardware:
    """A real T-BOX's ports instead of the simulator (``LIENWATCH_HIL_*`` environment)."""

    gnss_url: str
    can_interface: str
    can_channel: str
    seconds: float

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> Hardware | None:
        """The configured hardware, or None when the simulator is to be used."""
        env = dict(os.environ if environ is None else environ)
        url = env.get("LIENWATCH_HIL_GNSS_URL")
        if not url:
            return None
        return cls(
            gnss_url=url,
            can_interface=env.get("LIENWATCH_HIL_CAN_INTERFACE", "socketcan"),
            can_channel=env.get("LIENWATCH_HIL_CAN_CHANNEL", "can0"),
            seconds=float(env.get("LIENWATCH_HIL_SECONDS", "40")),
        )


@dataclass(frozen=True)
class Fault:
    """Something done to the chain ``at_s`` wall seconds after the scenario clock started."""

    at_s: float
    name: str
    action: Callable[[ChainRig], object]


@dataclass
class PlayResult:
    """What :meth:`Chain.play` saw."""

    scenario_start_wall: float
    level_first_seen: dict[str, float] = field(default_factory=dict)
    reason_first_seen: dict[str, float] = field(default_factory=dict)
    faults_done: list[tuple[str, float]] = field(default_factory=list)


class Chain:
    """One chain for one test; see the module docstring."""

    def __init__(self, rig: ChainRig, hardware: Hardware | None) -> None:
        self.rig = rig
        self.hardware = hardware
        #: the loan the level is read from (the sample book's late loan unless a test imports its own)
        self.loan_id = LOAN_ID

    @property
    def db(self) -> Path:
        return self.rig.database_path

    def setup(
        self,
        keys: Path,
        *,
        agent_extra: dict[str, dict[str, Any]] | None = None,
        relay_agent_link: bool = False,
        collector_extra: dict[str, dict[str, Any]] | None = None,
        loans: Path | None = None,
    ) -> None:
        """Broker, keys, collector, device registration, loan book (and the agent's cuttable link).

        ``loans``: a loan CSV to import instead of the sample book (set :attr:`loan_id` to its loan).
        """
        rig = self.rig
        rig.start_broker()
        if relay_agent_link:
            rig.relay_agent_link()
        rig.generate_keys(keys)
        rig.write_collector_config(**(collector_extra or {}))
        rig.start_collector()
        rig.provision_device()
        if loans is None:
            rig.import_sample_loans()
        else:
            rig.import_loans(loans)
        for section, values in (agent_extra or {}).items():
            rig.agent_extra.setdefault(section, {}).update(values)

    def add_tracker(self, device_id: str) -> ChainRig:
        """A second tracker on the loan's car: a GNSS-only box (a battery-powered backup has no
        CAN) with its own simulator and agent (:meth:`ChainRig.add_tracker`), linked to the loan
        with ``PUT /v1/loans/{id}/second-tracker``. :meth:`play` starts it with the main box."""
        tracker = self.rig.add_tracker(device_id)
        tracker.write_agent_config(with_can=False)
        self.rig.http("PUT", f"/v1/loans/{self.loan_id}/second-tracker", json={"device_id": device_id})
        return tracker

    def risk(self) -> dict[str, Any]:
        """The loan's ``risk`` object as the API shows it to an analyst."""
        return dict(self.rig.get(f"/v1/loans/{self.loan_id}", role="risk_analyst")["risk"])

    def level(self) -> str:
        """The loan's risk level as the API shows it."""
        return str(self.risk()["level"])

    def axes(self) -> tuple[str, str]:
        """The loan's v2 (credit, collateral) levels as the API shows them to an analyst."""
        score = self.risk()["score"]
        return str(score["credit"]["level"]), str(score["collateral"]["level"])

    def wait_collateral(self, floor: str, *, exact: bool, timeout: float = 60.0) -> tuple[str, str]:
        """Wait until the collateral axis is ``floor`` (``exact``) or at least it; returns the axes seen."""
        deadline = time.monotonic() + timeout
        axes = self.axes()
        while time.monotonic() < deadline:
            collateral = axes[1]
            if collateral == floor or (not exact and level_at_least(collateral, floor)):
                break
            time.sleep(0.25)
            axes = self.axes()
        return axes

    def play(
        self,
        scenario: str,
        *,
        speed_factor: float | None = None,
        faults: Sequence[Fault] = (),
        timeout: float = 180.0,
        live: bool = False,
        until: Callable[[PlayResult], bool] | None = None,
    ) -> PlayResult:
        """Play ``scenario`` to its end (hardware: run ``seconds``), firing ``faults`` on the way.

        Every tracker of :meth:`add_tracker` plays the same scenario on its own simulator; the
        play ends when every simulator has ended or was stopped (by a fault), or as soon as
        ``until`` (asked at every API poll, after the faults) says so. ``live``: the simulators
        start the scenario when their clocks start (``--start-now``), on the host clock.
        """
        rig = self.rig
        extra = ("--start-now",) if live else ()
        if self.hardware is None:
            rig.write_agent_config()
            rig.start_sim(scenario, speed_factor=speed_factor, extra=extra)
        else:
            hw = self.hardware
            rig.write_agent_config(gnss_url=hw.gnss_url, can_interface=hw.can_interface, can_channel=hw.can_channel)
        rig.start_agent()
        for tracker in rig.trackers:  # no CAN: its simulator's clock starts at once
            tracker.start_sim(scenario, speed_factor=speed_factor, wait_open=None, extra=extra)
            tracker.start_agent()
        start_event = rig.sim_event("start") if self.hardware is None else None
        result = PlayResult(scenario_start_wall=float(start_event["wall_time"]) if start_event else time.time())
        pending = sorted(faults, key=lambda f: f.at_s)
        deadline = time.monotonic() + timeout
        end_wall = result.scenario_start_wall + (self.hardware.seconds if self.hardware else 0.0)
        next_poll = 0.0
        while True:
            now = time.time()
            if pending and now >= result.scenario_start_wall + pending[0].at_s:
                fault = pending.pop(0)
                fault.action(rig)
                result.faults_done.append((fault.name, time.time() - result.scenario_start_wall))
                continue
            if time.monotonic() >= next_poll:
                next_poll = time.monotonic() + 0.25
                self._poll_level(result)
                if until is not None and not pending and until(result):
                    break
            if self.hardware is None:
                sims = [r.processes["sim"] for r in (rig, *rig.trackers) if "sim" in r.processes]
                if not any(sim.running for sim in sims) and not pending:
                    break
            elif now >= end_wall and not pending:
                break
            if time.monotonic() > deadline:
                raise RigError(f"{scenario} did not finish within {timeout:.0f} s (faults left: {pending})")
            time.sleep(0.05)
        sim = rig.processes.get("sim")
        if sim is not None and sim.proc is not None and sim.proc.returncode not in (0, None):
            raise RigError(f"the simulator exited with {sim.proc.returncode}:\n{sim.tail()}")
        return result

    def _poll_level(self, result: PlayResult) -> None:
        collector = self.rig.processes.get("collector")
        if collector is None or not collector.running:
            return  # a fault test killed it on purpose
        try:
            risk = self.risk()
        except Exception:
            return
        seen = time.time()
        result.level_first_seen.setdefault(str(risk["level"]), seen)
        for reason in risk["reasons"]:
            result.reason_first_seen.setdefault(str(reason["code"]), seen)

    def finish(self, *, timeout: float = 90.0, box: ChainRig | None = None) -> int:
        """Stop the agent cleanly and wait until the collector stored its last batch; return that seq.

        ``box``: one of the rig's trackers instead of the main box.
        """
        rig = box or self.rig
        if "sim" in rig.processes:
            rig.processes["sim"].stop()
        agent = rig.processes["agent"]
        agent.stop(timeout=30)
        high, waiting = agent_committed_high(rig.agent_data_dir)
        if waiting:
            raise RigError(f"the agent stopped with {waiting} batches still in its outbox (broker unreachable?)")
        deadline = time.monotonic() + timeout
        last = (-1, -1)
        stable_since = time.monotonic()
        while True:
            count, stored_high = stored_seq_count(self.db, rig.device_id)
            if (count, stored_high) != last:
                last, stable_since = (count, stored_high), time.monotonic()
            if stored_high >= high and time.monotonic() - stable_since >= 1.0:
                return high
            if time.monotonic() > deadline:
                raise RigError(
                    f"the collector stored up to seq {stored_high} ({count} batches), agent committed {high}"
                )
            time.sleep(0.1)

    def wait_level(self, expected: str, *, timeout: float = 60.0) -> str:
        """Wait until the API shows ``expected`` (returns the last level seen)."""
        deadline = time.monotonic() + timeout
        level = self.level()
        while level != expected and time.monotonic() < deadline:
            time.sleep(0.25)
            level = self.level()
        return level

    def risk_event_time(self, level: str) -> float | None:
        """Collector wall time (s) at which the loan first changed to ``level`` (its risk event)."""
        events = self.rig.get(f"/v1/loans/{self.loan_id}/risk-events", role="risk_analyst")
        times = [e["time_ms"] / 1000 for e in events if e["new_level"] == level]
        return min(times) if times else None


def unplug(box: ChainRig) -> None:
    """Tear a box out (a fault action): power, serial and CAN gone at once. Its agent is
    SIGKILLed (no power: nothing flushed, no goodbye) and its simulator stops (both ptys vanish)."""
    box.kill("agent")
    if "sim" in box.processes:
        box.processes["sim"].stop()
    box.say(f"{box.device_id:<10} unplugged: agent without power, serial and CAN ports gone")


def level_at_least(level: str, floor: str) -> bool:
    """True if ``level`` is at least as severe as ``floor``."""
    return LEVELS.index(level) >= LEVELS.index(floor)
