"""Plays a scenario on two pseudo-terminals: the I/O shell around :class:`Simulation`.

How this works: one thread, one ``select`` loop. Each turn advances the simulation to
the wall clock, writes NMEA to the GNSS pty and SLCAN lines to the CAN pty (only while
the host has the channel open), runs fault injections (unplug closes the CAN pty,
re-plug publishes a new one at the same symlink with a fresh, closed adapter), answers
the host's SLCAN commands, and writes JSON lines (``start``, ``clock`` about once per wall
second, one ``event`` per timeline event with scenario and wall time, ``end``). It sleeps
until the simulation's next due time (at most 50 ms). SIGTERM/SIGINT end it cleanly:
ptys closed and symlinks removed on every exit path.
"""

from __future__ import annotations

import contextlib
import json
import logging
import select
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO
from zoneinfo import ZoneInfo

from .pty import PtyLink
from .scenario import Scenario, TimelineEvent
from .simulation import Simulation, Step
from .slcan import SlcanAdapter
from .vehicle import CanCatalog

__all__ = ["RunReport", "iso_utc", "run_scenario", "stop_on_signals"]

log = logging.getLogger(__name__)
_MAX_SLEEP_S = 0.05
#: wall seconds in which ``end_now`` plays the parked gap between the scenario's end and now
_CATCH_UP_S = 5.0


def iso_utc(time_ms: int) -> str:
    """``2026-03-02T07:30:00.000Z``."""
    return datetime.fromtimestamp(time_ms / 1000, tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class RunReport:
    """How a run ended.

    Attributes:
        reason: ``finished`` (scenario end) or ``stopped`` (signal / stop event).
        loops: play-throughs completed.
        counters: simulation, adapter and link counters merged.
    """

    reason: str
    loops: int
    counters: dict[str, int] = field(default_factory=dict)


@contextlib.contextmanager
def stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """Set ``stop`` on SIGTERM/SIGINT while inside the block (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, _frame: object) -> None:
        log.info("signal %d: stopping", signum)
        stop.set()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


class _EventWriter:
    def __init__(self, out: TextIO | None, timezone: str) -> None:
        self.out = out
        self.zone = ZoneInfo(timezone)

    def write(self, record: dict[str, Any]) -> None:
        if self.out is None:
            return
        try:
            self.out.write(json.dumps(record, separators=(",", ":"), default=str) + "\n")
            self.out.flush()
        except (BrokenPipeError, ValueError):  # the reader went away (or closed the file): keep simulating
            log.warning("events output closed; no more JSON lines")
            self.out = None

    def event(self, event: TimelineEvent, wall: float, extra: dict[str, Any]) -> None:
        local = datetime.fromtimestamp(event.time_ms / 1000, tz=self.zone).isoformat(timespec="seconds")
        record: dict[str, Any] = {
            "type": "event",
            "event": event.name,
            "scenario_time": iso_utc(event.time_ms),
            "scenario_time_ms": event.time_ms,
            "local_time": local,
            "wall_time": round(wall, 6),
            "segment": event.segment,
        }
        record.update(event.data)
        record.update(extra)
        self.write(record)


def run_scenario(
    scenario: Scenario,
    *,
    gnss_link: str | Path,
    can_link: str | Path,
    speed: float | None = None,
    speed_factor: float = 1.0,
    events_out: TextIO | None = None,
    loop: bool = False,
    wait_open: float = 0.0,
    stop: threading.Event | None = None,
    clock: Callable[[], float] = time.time,
    end_now: bool = False,
    hold: bool = False,
    start_now: bool = False,
) -> RunReport:
    """Play ``scenario`` on a GNSS pty and an SLCAN pty until it ends (or forever with ``loop``).

    Args:
        scenario: the compiled scenario.
        gnss_link, can_link: symlink paths for the two ptys.
        speed: play everything at this speed (overrides the scenario's speeds).
        speed_factor: multiply the scenario's segment speeds (1x windows stay 1x).
        events_out: where JSON lines go (None: nowhere).
        loop: start again at the end, the scenario clock continuing.
        wait_open: hold the scenario clock until the host opens the SLCAN channel, at most
            this many seconds (0: start at once). Lets a slow-starting agent see the first event.
        stop: set it to end the run (SIGTERM/SIGINT set it when run from the CLI).
        clock: wall clock (seconds since the epoch).
        end_now: play the scenario on the host's calendar, ending when its play ends
            (:meth:`Scenario.ending_at`: moved by whole days, the car parked until then).
        hold: after the end, keep the car parked and reporting at 1x until stopped
            (a ``hold`` line is written when that starts).
        start_now: move the scenario so that it starts the moment its clock starts (after
            ``wait_open``), to the millisecond: a 1x scenario then plays on the host clock
            while it plays (live vehicle time; local times of day change). Not with ``end_now``.

    Raises:
        LinkError: a pty or symlink could not be created.
        ScenarioError: the scenario's DBC cannot be loaded or clashes with its settings.
    """
    if loop and (end_now or hold):
        raise ValueError("--loop cannot be combined with --end-now or --hold")
    if start_now and end_now:
        raise ValueError("--start-now cannot be combined with --end-now")
    stop = stop or threading.Event()
    catalog = CanCatalog(scenario.can.dbc)
    pace = scenario.pace(override=speed, factor=speed_factor)
    # small buffers, like a UART FIFO and an adapter's frame queue: a host that is not
    # reading loses data (counted) instead of receiving a stale backlog later
    links = PtyLink(gnss_link, max_pending=8 * 1024), PtyLink(can_link, max_pending=32 * 1024)
    rig = _Rig(*links, _EventWriter(events_out, scenario.timezone), clock)
    writer, gnss, can, counters = rig.writer, rig.gnss, rig.can, rig.counters
    loops = 0
    reason = "stopped"
    sim: Simulation | None = None
    merged = False  # the current play-through's counters are already in ``counters``
    try:
        gnss.plug()
        can.plug()
        writer.write(
            {"type": "ready", "gnss_device": gnss.device, "can_device": can.device, "wall_time": round(clock(), 6)}
        )
        deadline = clock() + wait_open
        while not stop.is_set() and not rig.adapter.is_open and clock() < deadline:
            rig.serve(_MAX_SLEEP_S)
        if start_now:
            scenario = scenario.shifted(round(clock() * 1000) - scenario.start_ms)
            pace = scenario.pace(override=speed, factor=speed_factor)
        current = scenario
        if end_now or hold:
            target_ms = scenario.end_ms
            if end_now:
                target_ms = round((clock() + pace.wall_duration_s + _CATCH_UP_S) * 1000)
            scenario = current = scenario.ending_at(target_ms, catch_up_s=_CATCH_UP_S, hold=hold)
            pace = current.pace(override=speed, factor=speed_factor)
        held = current.hold_from_ms is None
        sim = Simulation(current, pace=pace, wall_start=clock(), catalog=catalog)
        writer.write(
            {
                "type": "start",
                "scenario": scenario.name,
                "gnss_link": str(gnss.link_path),
                "can_link": str(can.link_path),
                "gnss_device": gnss.device,
                "can_device": can.device,
                "scenario_start": iso_utc(scenario.start_ms),
                "scenario_end": iso_utc(scenario.end_ms),
                "planned_wall_s": round(pace.wall_duration_s, 3),
                "hold_from": None if current.hold_from_ms is None else iso_utc(current.hold_from_ms),
                "timezone": scenario.timezone,
                "wall_time": round(clock(), 6),
            }
        )
        last_clock_line = -1.0
        while not stop.is_set():
            now = clock()
            step = sim.advance(now)
            rig.deliver(step, now)
            if not held and step.scenario_ms >= (current.hold_from_ms or 0):
                held = True
                writer.write(
                    {
                        "type": "hold",
                        "scenario_time": iso_utc(step.scenario_ms),
                        "scenario_time_ms": step.scenario_ms,
                        "wall_time": round(now, 6),
                    }
                )
            if now - last_clock_line >= 1.0 or step.finished:
                last_clock_line = now
                writer.write(
                    {
                        "type": "clock",
                        "scenario_time": iso_utc(step.scenario_ms),
                        "scenario_time_ms": step.scenario_ms,
                        "wall_time": round(now, 6),
                        "progress": sim.progress(step.scenario_ms),
                        "speed": pace.speed_at(step.scenario_ms),
                        "loop": loops,
                    }
                )
            if step.finished:
                loops += 1
                counters.update(sim.counters)
                merged = True
                if not loop:
                    reason = "finished"
                    break
                current = scenario.shifted(loops * scenario.duration_ms)
                pace = current.pace(override=speed, factor=speed_factor)
                sim = Simulation(current, pace=pace, wall_start=clock(), catalog=catalog)
                merged = False
                continue
            rig.serve(sim.next_due(clock()) - clock())
    finally:
        if sim is not None and not merged:
            counters.update(sim.counters)
        totals = rig.close()
        writer.write(
            {"type": "end", "reason": reason, "loops": loops, "wall_time": round(clock(), 6), "counters": totals}
        )
    return RunReport(reason, loops, totals)


@dataclass
class _Rig:
    """The two links, the adapter behind the CAN link, and the log."""

    gnss: PtyLink
    can: PtyLink
    writer: _EventWriter
    clock: Callable[[], float]
    adapter: SlcanAdapter = field(default_factory=SlcanAdapter)
    counters: Counter[str] = field(default_factory=Counter)

    def deliver(self, step: Step, now: float) -> None:
        """Write one step's output, run its faults, log its events."""
        gnss, can = self.gnss, self.can
        if step.gnss:
            gnss.write(step.gnss)
        extras: list[dict[str, Any]] = []
        for event in step.events:
            extra: dict[str, Any] = {}
            if event.name == "can_unplug":
                can.unplug()
            elif event.name == "can_replug":
                can.plug()
                self.counters.update({f"slcan_{k}": v for k, v in self.adapter.counters.items()})
                self.adapter = SlcanAdapter()  # a re-enumerated adapter starts closed
                extra["device"] = can.device
            extras.append(extra)
        if can.plugged:
            if step.can_noise:
                can.write(step.can_noise)
            stamp = int(now * 1000)
            adapter = self.adapter
            lines = [line for frame in step.frames if (line := adapter.encode_for_host(frame, stamp)) is not None]
            if lines and not can.write(b"".join(lines)):
                adapter.note_overrun()
                self.counters["can_frames_overrun"] += len(lines)
        wall = self.clock()
        for event, extra in zip(step.events, extras, strict=True):
            self.writer.event(event, wall, extra)

    def serve(self, timeout: float) -> None:
        """Sleep until ``timeout`` or host input; answer SLCAN commands; flush pending output."""
        gnss, can = self.gnss, self.can
        links = [link for link in (gnss, can) if link.plugged]
        readers = [link.fileno() for link in links]
        writers = [link.fileno() for link in links if link.pending]
        readable, writable, _ = select.select(readers, writers, [], min(_MAX_SLEEP_S, max(0.0, timeout)))
        if gnss.plugged and gnss.fileno() in readable:
            self.counters["gnss_host_bytes_ignored"] += len(gnss.read())  # receivers ignore unknown input
        if can.plugged and can.fileno() in readable:
            data = can.read()
            if data:
                reply = self.adapter.feed(data)
                can.write(reply.reply)
                for error in reply.errors:
                    log.warning("SLCAN command rejected: %s", error)
        for link in links:
            if link.plugged and link.fileno() in writable:
                link.flush()

    def close(self) -> dict[str, int]:
        """Close both links; return every counter."""
        self.gnss.close()
        self.can.close()
        merged = Counter(self.counters)
        merged.update({f"slcan_{k}": v for k, v in self.adapter.counters.items()})
        merged.update({f"gnss_link_{k}": v for k, v in self.gnss.counters.items()})
        merged.update({f"can_link_{k}": v for k, v in self.can.counters.items()})
        return dict(sorted(merged.items()))
