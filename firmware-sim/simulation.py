"""The simulation core, sans-I/O: wall time in, NMEA bytes + CAN frames + events out.

How this works: the runner calls :meth:`Simulation.advance` with the current wall clock.
The pace turns it into a scenario time; every timeline event and GNSS epoch up to that
time is processed in time order (events change the vehicle model and send their CAN
messages at once, "on change"; epochs are stamped with their own scenario time). GNSS
epochs sit on the receiver's rate grid (1-10 Hz) but never closer than
``1 / max_epochs_per_wall_s`` wall seconds apart, so at 10,000x a parked car prints sparse
epochs whose timestamps jump. Periodic CAN messages are scheduled in *wall* time at their
DBC cycle (stretched when slower than 1x), each computed at the current scenario time, so
the bus load stays realistic at any acceleration. Background frames (unknown ids) are
paced in wall time too. Nothing here reads a clock or touches a file.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from dataclasses import dataclass, field

from .errors import ScenarioError
from .gnss import GnssReceiver
from .nmea import corrupt_sentence
from .pace import Pace
from .scenario import Scenario, TimelineEvent
from .slcan import CanFrame
from .vehicle import CanCatalog, VehicleModel

__all__ = ["Simulation", "Step"]

_MAX_EPOCHS_PER_STEP = 50  # after a stall, skip ahead instead of bursting old epochs
_BACKGROUND_TICK_S = 0.005


@dataclass
class Step:
    """What one :meth:`Simulation.advance` produced.

    Attributes:
        scenario_ms: scenario time reached.
        gnss: bytes for the GNSS link (NMEA, plus noise bursts).
        frames: CAN frames for the SLCAN link, in order.
        can_noise: noise burst bytes for the SLCAN link.
        events: timeline events that happened, in order.
        finished: the scenario end was reached.
    """

    scenario_ms: int
    gnss: bytes = b""
    frames: list[CanFrame] = field(default_factory=list)
    can_noise: bytes = b""
    events: list[TimelineEvent] = field(default_factory=list)
    finished: bool = False


class Simulation:
    """One play-through of a scenario.

    Args:
        scenario: the compiled scenario.
        pace: the wall/scenario time map (``scenario.pace(...)``).
        wall_start: wall clock (seconds) at which scenario time ``pace.start_ms`` plays.
        catalog: DBC messages to transmit (None: no CAN at all).
    """

    def __init__(self, scenario: Scenario, *, pace: Pace, wall_start: float, catalog: CanCatalog | None) -> None:
        self.scenario = scenario
        self.pace = pace
        self.wall_start = wall_start
        self.catalog = catalog
        if catalog is not None:
            clash = sorted(set(scenario.can.background_ids) & catalog.frame_ids)
            if clash:
                raise ScenarioError(
                    scenario.source,
                    "can.background_ids",
                    f"{[hex(i) for i in clash]} are DBC messages, not unknown ids",
                )
        self.model = VehicleModel(scenario, seed=scenario.seed)
        gnss = scenario.gnss
        self.receiver = GnssReceiver(
            seed=scenario.seed, noise_m=gnss.noise_m, talkers=gnss.constellations, geoid_sep_m=gnss.geoid_sep_m
        )
        self.counters: Counter[str] = Counter()
        self._rng = random.Random(scenario.seed ^ 0xC0FFEE)
        self._next_event = 0
        self._grid_ms = max(1, round(1000 / gnss.rate_hz))
        self._next_epoch_ms = self._grid_ceil(scenario.start_ms)
        self._last_gsv_ms: int | None = None
        self._can_due: dict[str, float] = {}
        if catalog is not None:
            for number, spec in enumerate(catalog.messages):
                if spec.cycle_ms > 0:  # stagger first transmissions like independent ECUs
                    self._can_due[spec.name] = wall_start + (number % 10) * 0.001
        self._background_started = wall_start
        self._background_sent = 0
        self._background_index = 0
        self._extended_credit = 0.0
        self.finished = False

    def _grid_ceil(self, time_ms: float) -> int:
        return math.ceil(time_ms / self._grid_ms) * self._grid_ms

    def scenario_ms_at(self, wall_s: float) -> int:
        """Scenario time at wall clock ``wall_s``."""
        return self.pace.scenario_at(wall_s - self.wall_start)

    def wall_at(self, scenario_ms: float) -> float:
        """Wall clock at which ``scenario_ms`` plays."""
        return self.wall_start + self.pace.wall_at(scenario_ms)

    def progress(self, scenario_ms: int) -> float:
        """Share of the play-through done at ``scenario_ms``, 0-100 (in wall time: what a viewer waits for)."""
        total = self.pace.wall_duration_s
        return 100.0 if total <= 0 else round(100.0 * self.pace.wall_at(scenario_ms) / total, 1)

    def advance(self, wall_s: float) -> Step:
        """Play everything due up to wall clock ``wall_s``."""
        target = self.scenario_ms_at(wall_s)
        step = Step(scenario_ms=target)
        gnss = bytearray()
        can_noise = bytearray()
        events = self.scenario.events
        epochs = 0
        while True:
            event_ms = events[self._next_event].time_ms if self._next_event < len(events) else math.inf
            epoch_ms = self._next_epoch_ms
            if min(event_ms, epoch_ms) > target:
                break
            if event_ms <= epoch_ms:
                event = events[self._next_event]
                self._next_event += 1
                self._apply(event, step, gnss, can_noise)
                continue
            if epochs >= _MAX_EPOCHS_PER_STEP:  # fell behind: jump to now
                self.counters["gnss_epochs_skipped"] += 1
                self._next_epoch_ms = max(self._grid_ceil(target), epoch_ms + self._grid_ms)
                continue
            epochs += 1
            gnss += self._epoch(epoch_ms)
            self._schedule_next_epoch(epoch_ms)
        self._periodic_can(wall_s, target, step)
        self._background(wall_s, step)
        step.gnss = bytes(gnss)
        step.can_noise = bytes(can_noise)
        step.finished = self.finished = target >= self.pace.end_ms and self._next_event >= len(events)
        return step

    def next_due(self, wall_s: float) -> float:
        """The wall clock of the next thing to do (the runner sleeps until then)."""
        due = [self.wall_start + self.pace.wall_duration_s]
        if self._next_event < len(self.scenario.events):
            due.append(self.wall_at(self.scenario.events[self._next_event].time_ms))
        if self._next_epoch_ms <= self.pace.end_ms:
            due.append(self.wall_at(self._next_epoch_ms))
        if self.model.can_active:
            due.extend(self._can_due.values())
            if self.scenario.can.background_fps > 0:
                due.append(wall_s + _BACKGROUND_TICK_S)
        # a hair late, so float rounding between the two time axes never leaves a due item unplayed
        return max(wall_s, min(due) + 1e-4)

    # -- pieces ----------------------------------------------------------------------------

    def _apply(self, event: TimelineEvent, step: Step, gnss: bytearray, can_noise: bytearray) -> None:
        changed = self.model.apply(event)
        name = event.name
        if name == "gnss_stop":
            self.receiver.stop()
        elif name == "gnss_restart":
            self.receiver.restart(
                event.time_ms, ttff_ms=round(float(event.data["ttff_s"]) * 1000), cold=bool(event.data["cold"])
            )
        elif name == "line_noise":
            burst = bytes(self._rng.randrange(256) for _ in range(int(event.data["bytes"])))
            (gnss if event.data["link"] == "gnss" else can_noise).extend(burst)
            self.counters[f"noise_bytes_{event.data['link']}"] += len(burst)
        if changed and self.catalog is not None and self.model.can_active:
            values = self.model.signals(event.time_ms)
            for spec in self.catalog.messages_with(changed):
                step.frames.append(self.catalog.encode(spec.name, values))
                self.counters["can_frames_on_change"] += 1
        step.events.append(event)
        self.counters["events"] += 1

    def _epoch(self, epoch_ms: int) -> bytes:
        with_gsv = self._last_gsv_ms is None or epoch_ms - self._last_gsv_ms >= 1000
        lines = self.receiver.sentences(
            epoch_ms, self.model.truth(epoch_ms), self.model.sky(epoch_ms), with_gsv=with_gsv
        )
        if not lines:
            return b""
        if with_gsv:
            self._last_gsv_ms = epoch_ms
        self.counters["gnss_epochs"] += 1
        share = self.scenario.gnss.corrupt_share
        if share > 0.0:
            for index, line in enumerate(lines):
                if self._rng.random() < share:
                    lines[index] = corrupt_sentence(line, self._rng)
                    self.counters["gnss_lines_corrupted"] += 1
        self.counters["gnss_sentences"] += len(lines)
        return b"".join(lines)

    def _schedule_next_epoch(self, epoch_ms: int) -> None:
        min_gap_s = 1.0 / self.scenario.gnss.max_epochs_per_wall_s
        earliest = self.pace.scenario_at(self.pace.wall_at(epoch_ms) + min_gap_s)
        self._next_epoch_ms = max(epoch_ms + self._grid_ms, self._grid_ceil(earliest))

    def _periodic_can(self, wall_s: float, target: int, step: Step) -> None:
        if self.catalog is None:
            return
        active = self.model.can_active
        values: dict[str, float] | None = None
        slow_down = min(1.0, self.pace.speed_at(target))
        for name, due in self._can_due.items():
            if wall_s < due:
                continue
            period = self.catalog.spec(name).cycle_ms / 1000.0 / slow_down
            next_due = due + period
            self._can_due[name] = next_due if next_due > wall_s - period else wall_s + period
            if not active:
                continue
            if values is None:
                values = self.model.signals(target)
            step.frames.append(self.catalog.encode(name, values))
            self.counters["can_frames_periodic"] += 1

    def _background(self, wall_s: float, step: Step) -> None:
        can = self.scenario.can
        if can.background_fps <= 0:
            return
        wanted = int((wall_s - self._background_started) * can.background_fps) - self._background_sent
        if wanted <= 0:
            return
        burst_limit = max(1, int(can.background_fps * 0.1))
        if wanted > burst_limit:  # after a stall, do not flood the bus
            self._background_sent += wanted - burst_limit
            wanted = burst_limit
        self._background_sent += wanted
        if not self.model.can_active:
            return
        ids = can.background_ids
        for _ in range(wanted):
            self._background_index += 1
            self._extended_credit += can.extended_share
            payload = self._background_index.to_bytes(4, "big") + b"\x00\x5a\xa5\xff"
            if self._extended_credit >= 1.0:
                self._extended_credit -= 1.0
                frame = CanFrame(0x18FF0000 | ids[self._background_index % len(ids)], payload, extended=True)
            else:
                frame = CanFrame(ids[self._background_index % len(ids)], payload)
            step.frames.append(frame)
        self.counters["can_frames_background"] += wanted
