"""``lienwatch sim record``: render a whole scenario offline into an NMEA log and a candump log.

How this works: the recorder drives the simulator's own pure core (:class:`Simulation`,
and through it :class:`VehicleModel`, :class:`GnssReceiver` and :class:`CanCatalog`) on a
*synthetic* wall clock, as fast as the CPU allows: no ptys, no sleeping, no real clock.
What the simulation produces is written as a logger on the vehicle would have stored it,
stamped on the scenario clock:

* NMEA bytes exactly as the receiver printed them (CRLF lines; corrupted sentences and
  GNSS line-noise bursts included), each epoch stamped with its own scenario time, after
  a few ``#`` comment lines (as in gpsd's test logs);
* CAN frames as candump lines, ``(1712345678.123000) can0 1A0#0011223344556677``, stamped
  with the scenario time of the step that produced them. Noise on the SLCAN serial line
  has no candump form and is only counted (``can_noise_bytes_not_logged``).

The simulation paces GNSS epochs (at most ``max_epochs_per_wall_s`` per wall second) and
periodic CAN messages (their DBC cycle, at most one each per ``advance``) in wall time, so
a synthetic pace *is* the sampling plan. Scenario time is cut into two kinds of stretch:

* **dense**: drives, tows and idling, and ``event_margin_s`` either side of every timeline
  event (doors, ignition, power cut, CAN silence, jamming, segment starts and ends, ...):
  every receiver epoch at ``gnss_hz`` and one round of the periodic CAN messages per epoch
  (each 20 ms and 100 ms message once, the 1 s messages every ~7 rounds).
* **sparse**: parked away from events: one epoch per ``parked_interval_s`` (default 60 s).
  The rules are built for gaps (a dwell survives them). CAN: the sample signal map
  heartbeats the 12 V reading every 60 s and ``power_cut`` calls the reading lost after
  90 s *while other input shows time passing*, so up to a 90 s interval the bus is heard
  every ``min(parked_interval_s, 20 s)`` (rounds further apart would fake a power cut);
  beyond 90 s the log is that of a box that sleeps between wakes, with one epoch and one
  CAN round at the same millisecond per interval and silence in between, which the rule
  reads as "asleep", not "cut". A parked stretch is a whole number of CAN rounds, so these
  spacings hold across the boundaries with the dense stretches too.

The recorder advances the simulation step by step on the scenario clock (one step per
dense epoch or parked CAN round, plus one at every timeline event so "on change" frames
carry the event's own time), so every stamp is exact to the millisecond and a recording
is reproducible byte for byte. The timeline events are exactly those ``sim run`` plays.

Nothing here is shared with the agent; ``lienwatch replay`` reads the logs back.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, BinaryIO, TextIO

from .errors import SimError
from .pace import Pace
from .scenario import Scenario
from .simulation import Simulation
from .slcan import CanFrame
from .vehicle import CanCatalog

__all__ = [
    "MAX_CAN_INTERVAL_S",
    "SLEEPING_BOX_S",
    "Cadence",
    "RecordError",
    "RecordPlan",
    "RecordReport",
    "RecordedStep",
    "candump_line",
    "dense_spans",
    "record_scenario",
    "record_to_files",
    "recording_pace",
    "render",
]

#: While parked the bus is heard at least this often (see the module docstring) ...
MAX_CAN_INTERVAL_S = 20.0
#: ... unless the box sleeps between wakes for longer than power_cut's missing_after_s (90 s).
SLEEPING_BOX_S = 90.0
MAX_PARKED_INTERVAL_S = 3600.0
#: Synthetic wall seconds between CAN rounds: more than the 100 ms DBC cycle, so every 20 ms
#: and 100 ms message is due at every round (no float ties at exactly one cycle), and less
#: than two cycles, so none is due twice.
_ROUND_WALL_S = 0.15
_CHANNEL_RE = re.compile(r"[A-Za-z0-9_.-]{1,15}")
_FD_FLAG_BRS = 0x01
_MOVING_OR_RUNNING = ("drive", "tow", "idle")


class RecordError(SimError):
    """A recording cannot be made: bad sampling settings or an output that cannot be written."""

    reason = "record_error"


@dataclass(frozen=True, slots=True)
class RecordPlan:
    """How densely a scenario is sampled.

    Attributes:
        gnss_hz: receiver epochs per scenario second in dense stretches, 0.1-10 (None: the
            scenario's ``gnss.rate_hz``; below 1 Hz a logger keeping one epoch in N).
        parked_interval_s: scenario seconds between epochs while parked away from events,
            1-3600, rounded up to whole receiver epochs (CAN rounds: see :class:`Cadence`).
        event_margin_s: dense recording this long either side of every timeline event, 0-3600 s.
        channel: the CAN interface name written in the candump log.
    """

    gnss_hz: float | None = None
    parked_interval_s: float = 60.0
    event_margin_s: float = 60.0
    channel: str = "can0"

    def __post_init__(self) -> None:
        if self.gnss_hz is not None and not (math.isfinite(self.gnss_hz) and 0.1 <= self.gnss_hz <= 10.0):
            raise RecordError(f"GNSS rate {self.gnss_hz} Hz is outside [0.1, 10] epochs per second")
        if not (math.isfinite(self.parked_interval_s) and 1.0 <= self.parked_interval_s <= MAX_PARKED_INTERVAL_S):
            raise RecordError(f"parked interval {self.parked_interval_s} s is outside [1, {MAX_PARKED_INTERVAL_S:g}] s")
        if not (math.isfinite(self.event_margin_s) and 0.0 <= self.event_margin_s <= 3600.0):
            raise RecordError(f"event margin {self.event_margin_s} s is outside [0, 3600] s")
        if not _CHANNEL_RE.fullmatch(self.channel):
            raise RecordError(f"CAN channel name {self.channel!r} must match {_CHANNEL_RE.pattern}")


@dataclass(frozen=True, slots=True)
class RecordedStep:
    """What one recording step produced.

    Attributes:
        time_ms: scenario time of the step (the stamp of its CAN frames).
        nmea: receiver output (epochs carry their own times; may include noise bursts).
        frames: CAN frames, in bus order.
        can_noise_bytes: bytes of line noise on the CAN serial line (not representable in
            a candump log, so only counted).
        events: names of the timeline events that happened in this step.
    """

    time_ms: int
    nmea: bytes
    frames: tuple[CanFrame, ...]
    can_noise_bytes: int
    events: tuple[str, ...]


@dataclass
class RecordReport:
    """What a recording contains (printed as JSON by ``lienwatch sim record``)."""

    scenario: str
    start_ms: int
    end_ms: int
    gnss_hz: float
    parked_interval_s: float
    can_round_s: float
    event_margin_s: float
    dense_s: float
    sparse_s: float
    steps: int = 0
    events: int = 0
    nmea_bytes: int = 0
    can_frames: int = 0
    counters: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, object]:
        """JSON-ready form."""
        return {
            "scenario": self.scenario,
            "start_ms": self.start_ms,
            "end_ms": self.end_ms,
            "gnss_hz": self.gnss_hz,
            "parked_interval_s": self.parked_interval_s,
            "can_round_s": self.can_round_s,
            "event_margin_s": self.event_margin_s,
            "dense_s": self.dense_s,
            "sparse_s": self.sparse_s,
            "steps": self.steps,
            "events": self.events,
            "nmea_bytes": self.nmea_bytes,
            "can_frames": self.can_frames,
            "counters": dict(sorted(self.counters.items())),
        }


def candump_line(frame: CanFrame, time_ms: int, channel: str = "can0") -> str:
    """One candump ``-l`` log line for ``frame`` at ``time_ms`` (no line end).

    ``(1712345678.123000) can0 1A0#0011223344556677``: 3 hex digits for an 11-bit id, 8
    for a 29-bit one; ``#R`` (with the DLC) for a remote frame; ``##F`` + data for CAN FD
    (F = flags, bit 0 bit-rate switch). python-can's ``can.LogReader`` reads it back.
    """
    if time_ms < 0:
        raise RecordError(f"time {time_ms} ms is before 1970")
    ident = f"{frame.arbitration_id:08X}" if frame.extended else f"{frame.arbitration_id:03X}"
    if frame.remote:
        body = f"R{frame.dlc}" if frame.dlc else "R"
    elif frame.fd:
        body = f"#{_FD_FLAG_BRS if frame.bitrate_switch else 0:X}{frame.data.hex().upper()}"
    else:
        body = frame.data.hex().upper()
    return f"({time_ms // 1000}.{time_ms % 1000:03d}000) {channel} {ident}#{body}"


# -- the sampling plan -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Cadence:
    """The sampling a plan gives one scenario, and the synthetic pace that realises it.

    Attributes:
        epoch_ms: receiver epoch interval in dense stretches (``1000 / gnss_hz``).
        parked_ms: epoch interval while parked: the plan's, rounded up to whole epochs.
        can_round_ms: CAN round interval while parked (``parked_ms`` for a sleeping box).
        epochs_per_wall_s: the recording's ``max_epochs_per_wall_s``.
        dense_speed, sparse_speed: synthetic scenario seconds per wall second.
    """

    epoch_ms: int
    parked_ms: int
    can_round_ms: int
    epochs_per_wall_s: float
    dense_speed: float
    sparse_speed: float

    @classmethod
    def of(cls, plan: RecordPlan, scenario: Scenario) -> Cadence:
        """The cadence of ``plan`` for ``scenario`` (whose receiver rate is the default)."""
        epoch_ms = max(1, round(1000 / (plan.gnss_hz or scenario.gnss.rate_hz)))
        parked_ms = math.ceil(plan.parked_interval_s * 1000 / epoch_ms) * epoch_ms
        sleeping = parked_ms > SLEEPING_BOX_S * 1000
        can_round_ms = parked_ms if sleeping else min(parked_ms, round(MAX_CAN_INTERVAL_S * 1000))
        # A parked CAN round every can_round_ms = one every _ROUND_WALL_S synthetic seconds;
        # one epoch per parked_ms then needs epochs_per_wall_s = sparse_speed / parked interval;
        # a dense stretch plays every receiver epoch, 1 / epochs_per_wall_s >= _ROUND_WALL_S apart,
        # so each dense epoch step carries one CAN round too.
        sparse_speed = can_round_ms / 1000 / _ROUND_WALL_S
        epochs_per_wall_s = sparse_speed * 1000 / parked_ms
        return cls(
            epoch_ms=epoch_ms,
            parked_ms=parked_ms,
            can_round_ms=can_round_ms,
            epochs_per_wall_s=epochs_per_wall_s,
            dense_speed=epochs_per_wall_s * epoch_ms / 1000,
            sparse_speed=sparse_speed,
        )


def dense_spans(scenario: Scenario, plan: RecordPlan) -> list[tuple[int, int]]:
    """Merged dense stretches ``[start_ms, end_ms)``: moving/running segments and margins around events.

    Each stretch ends on the receiver's epoch grid, and each parked stretch between them is
    a whole number of CAN rounds (the next dense stretch starts early, on a round): the bus
    is heard every ``can_round_ms`` across the boundaries, and a sleeping box wakes exactly
    ``parked_ms`` after its last dense epoch and goes dense on a wake, so the rules never
    see the supply reading missing while other input continues.
    """
    cadence = Cadence.of(plan, scenario)
    epoch_ms = cadence.epoch_ms
    margin_ms = round(plan.event_margin_s * 1000)
    spans = [(s.start_ms, s.end_ms) for s in scenario.segments if s.kind in _MOVING_OR_RUNNING]
    spans += [(e.time_ms - margin_ms, e.time_ms + margin_ms) for e in scenario.events]
    spans.append((scenario.start_ms, math.ceil(scenario.start_ms / epoch_ms) * epoch_ms))  # first epoch
    merged: list[tuple[int, int]] = []
    parked_from = scenario.start_ms
    for raw_start, raw_end in sorted(spans):
        start = max(raw_start, scenario.start_ms)
        end = min(math.ceil(raw_end / epoch_ms) * epoch_ms, scenario.end_ms)
        if end <= start:
            continue
        if merged:
            parked_from = merged[-1][1]
        if start > parked_from:  # a parked stretch is a whole number of CAN rounds
            start = parked_from + (start - parked_from) // cadence.can_round_ms * cadence.can_round_ms
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def recording_pace(scenario: Scenario, plan: RecordPlan) -> Pace:
    """The synthetic pace that realises ``plan`` (dense stretches slow, parked ones fast)."""
    cadence = Cadence.of(plan, scenario)
    spans: list[tuple[int, int, float]] = []
    cursor = scenario.start_ms
    for start, end in dense_spans(scenario, plan):
        if start > cursor:
            spans.append((cursor, start, cadence.sparse_speed))
        spans.append((start, end, cadence.dense_speed))
        cursor = end
    if cursor < scenario.end_ms:
        spans.append((cursor, scenario.end_ms, cadence.sparse_speed))
    return Pace.build(spans)


# -- rendering (sans-I/O) ----------------------------------------------------------------


def _wall_reaching(sim: Simulation, time_ms: int) -> float:
    """The earliest synthetic wall time (to float precision) at which the simulation reaches ``time_ms``."""
    wall = sim.wall_at(time_ms)
    nudge = 1e-9
    while sim.scenario_ms_at(wall) < time_ms:
        wall += nudge
        nudge *= 2
    return wall


def render(
    scenario: Scenario, plan: RecordPlan, catalog: CanCatalog | None, counters: Counter[str] | None = None
) -> Iterator[RecordedStep]:
    """Play ``scenario`` on the scenario clock and yield what each step produced.

    Args:
        scenario: the compiled scenario.
        plan: sampling settings.
        catalog: the vehicle's DBC messages (None: no CAN at all).
        counters: the simulation's counters are added here when the scenario ends.

    Raises:
        ScenarioError: the scenario's background ids clash with the DBC.
    """
    cadence = Cadence.of(plan, scenario)
    recorded = replace(
        scenario,
        gnss=replace(scenario.gnss, rate_hz=1000 / cadence.epoch_ms, max_epochs_per_wall_s=cadence.epochs_per_wall_s),
    )
    sim = Simulation(recorded, pace=recording_pace(scenario, plan), wall_start=0.0, catalog=catalog)
    dense = dense_spans(scenario, plan)
    # every event time and every stretch boundary is a step of its own
    stops = sorted({e.time_ms for e in scenario.events} | {t for span in dense for t in span} | {scenario.end_ms})
    stop_index = dense_index = 0
    parked_from = scenario.start_ms  # where the current parked stretch began (its CAN rounds count from there)
    now = scenario.start_ms
    first = True
    while True:
        while dense_index < len(dense) and dense[dense_index][1] <= now:
            dense_index += 1
        in_dense = dense_index < len(dense) and dense[dense_index][0] <= now
        while stop_index < len(stops) and stops[stop_index] <= now:
            stop_index += 1
        if first:
            target = now
        elif in_dense:  # the next receiver epoch (an event's own step does not shift the grid)
            target = (now // cadence.epoch_ms + 1) * cadence.epoch_ms
        else:
            # parked: CAN rounds on a grid from the stretch start; a sleeping box's rounds fall
            # on its epochs (the stretch starts on an epoch and both advance by parked_ms)
            rounds = (now - parked_from) // cadence.can_round_ms + 1
            target = parked_from + rounds * cadence.can_round_ms
        if stop_index < len(stops):
            target = min(target, stops[stop_index])
        target = min(target, scenario.end_ms)
        first = False
        step = sim.advance(_wall_reaching(sim, target))
        yield RecordedStep(
            time_ms=step.scenario_ms,
            nmea=step.gnss,
            frames=tuple(step.frames),
            can_noise_bytes=len(step.can_noise),
            events=tuple(event.name for event in step.events),
        )
        if step.finished:
            if counters is not None:
                counters.update(sim.counters)
            return
        if in_dense:  # a parked stretch starts where the dense one ends
            parked_from = step.scenario_ms
        now = step.scenario_ms


def _nmea_header(scenario: Scenario, report: RecordReport) -> bytes:
    lines = [
        f"# lienwatch sim record: scenario {scenario.name} ({Path(scenario.source).name})",
        f"# scenario clock {report.start_ms} .. {report.end_ms} ms (epoch UTC); time zone {scenario.timezone}",
        f"# sampling: {report.gnss_hz:g} Hz while moving or within {report.event_margin_s:g} s of an event; "
        f"parked: one epoch per {report.parked_interval_s:g} s, CAN every {report.can_round_s:g} s",
    ]
    return "".join(line + "\n" for line in lines).encode("utf-8")


def record_scenario(
    scenario: Scenario,
    nmea_out: BinaryIO,
    can_out: TextIO,
    plan: RecordPlan | None = None,
    *,
    catalog: CanCatalog | None = None,
) -> RecordReport:
    """Render ``scenario`` into an NMEA stream and a candump stream.

    Args:
        scenario: the compiled scenario.
        nmea_out: binary stream for the NMEA log (``#`` comment header, then receiver output).
        can_out: text stream for the candump log.
        plan: sampling settings (default :class:`RecordPlan`).
        catalog: the DBC messages (default: the scenario's DBC).

    Returns:
        What was written.

    Raises:
        ScenarioError: the scenario's DBC cannot be loaded or clashes with its settings.
        OSError: a stream cannot be written.
    """
    plan = plan or RecordPlan()
    catalog = catalog if catalog is not None else CanCatalog(scenario.can.dbc)
    cadence = Cadence.of(plan, scenario)
    dense_ms = sum(end - start for start, end in dense_spans(scenario, plan))
    report = RecordReport(
        scenario=scenario.name,
        start_ms=scenario.start_ms,
        end_ms=scenario.end_ms,
        gnss_hz=1000 / cadence.epoch_ms,
        parked_interval_s=cadence.parked_ms / 1000,
        can_round_s=cadence.can_round_ms / 1000,
        event_margin_s=plan.event_margin_s,
        dense_s=dense_ms / 1000,
        sparse_s=(scenario.duration_ms - dense_ms) / 1000,
    )
    counters: Counter[str] = Counter()
    nmea_out.write(_nmea_header(scenario, report))
    channel = plan.channel
    for step in render(scenario, plan, catalog, counters):
        report.steps += 1
        report.events += len(step.events)
        if step.nmea:
            nmea_out.write(step.nmea)
            report.nmea_bytes += len(step.nmea)
        if step.frames:
            stamp = step.time_ms
            can_out.write("".join(candump_line(frame, stamp, channel) + "\n" for frame in step.frames))
            report.can_frames += len(step.frames)
        if step.can_noise_bytes:
            counters["can_noise_bytes_not_logged"] += step.can_noise_bytes
    report.counters = dict(counters)
    return report


def record_to_files(
    scenario: Scenario, nmea_path: str | Path, can_path: str | Path, plan: RecordPlan | None = None
) -> RecordReport:
    """Render ``scenario`` into two log files.

    Each file is written as ``NAME.partial`` and renamed into place once the whole
    scenario is rendered, so a failed recording leaves no half-written log behind.

    Raises:
        RecordError: the two paths are the same file, or a file cannot be written.
        ScenarioError: the scenario's DBC cannot be loaded or clashes with its settings.
    """
    nmea_path, can_path = Path(nmea_path), Path(can_path)
    if nmea_path.resolve() == can_path.resolve():
        raise RecordError(f"{nmea_path}: the NMEA and CAN logs must be different files")
    for path in (nmea_path, can_path):
        if path.is_dir():
            raise RecordError(f"{path}: cannot write the log: is a directory")
    catalog = CanCatalog(scenario.can.dbc)
    partials = [path.with_name(path.name + ".partial") for path in (nmea_path, can_path)]
    try:
        with contextlib.ExitStack() as stack:
            nmea_fh = stack.enter_context(_create(partials[0], nmea_path, binary=True))
            can_fh = stack.enter_context(_create(partials[1], can_path, binary=False))
            report = record_scenario(scenario, nmea_fh, can_fh, plan, catalog=catalog)
        os.replace(partials[0], nmea_path)
        try:
            os.replace(partials[1], can_path)
        except OSError as exc:
            nmea_path.unlink(missing_ok=True)  # never leave one log without the other
            raise RecordError(f"{can_path}: cannot write the log: {exc.strerror or exc}") from exc
    except OSError as exc:
        raise RecordError(f"{nmea_path}: cannot write the log: {exc.strerror or exc}") from exc
    finally:
        for partial in partials:
            with contextlib.suppress(OSError):
                partial.unlink(missing_ok=True)
    return report


@contextlib.contextmanager
def _create(partial: Path, path: Path, *, binary: bool) -> Iterator[Any]:
    try:
        handle = partial.open("wb") if binary else partial.open("w", encoding="ascii", newline="\n")
    except OSError as exc:
        raise RecordError(f"{path}: cannot write the log: {exc.strerror or exc}") from exc
    try:
        with handle:
            yield handle
    except OSError as exc:  # disk full, I/O error while writing or closing
        raise RecordError(f"{path}: cannot write the log: {exc.strerror or exc}") from exc
