"""The simulated car: what each DBC signal reads at any scenario time.

How this works: motion is a pure function of the compiled scenario (which segment holds
``t``, how far along its route), so the model can be asked about any instant, in any
order, at any time acceleration. Discrete happenings (doors, power cut, jamming, ...)
arrive as timeline events through :meth:`VehicleModel.apply`, which returns the DBC
signals that changed so the caller can send those messages at once ("on change"), as
body controllers do. :class:`CanCatalog` reads the vehicle's DBC (the spec, read as a
data file: the simulator shares no code with the agent) and encodes frames with
cantools, filling signals the model does not know with their minimum.

Simplification (documented in docs/simulator.md): the bus stays awake while the car is
parked with the ignition off; only a power cut (box unplugged) or an adapter unplug
silences CAN. With the ignition off the ABS is asleep: speed reads 0, SPEED_VALID 0.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from .errors import ScenarioError
from .gnss import SkyConditions, Truth
from .scenario import DOORS, Scenario, Segment, TimelineEvent
from .slcan import CanFrame

__all__ = ["DEFAULT_DBC", "CanCatalog", "MessageSpec", "VehicleModel"]

#: The vehicle spec shared with the agent as a data file (never as code).
DEFAULT_DBC = Path(__file__).resolve().parent.parent / "edge" / "data" / "generic_car.dbc"
_IGNITION_RAW = {"OFF": 0, "ACC": 1, "ON": 2, "START": 3, "LOCK": 4}
_START_PULSE_MS = 1500
_JAMMED_DB = 80.0  # enough to lose every satellite
_DOOR_SIGNAL = {
    "FL": "DOOR_OPEN_FL",
    "FR": "DOOR_OPEN_FR",
    "RL": "DOOR_OPEN_RL",
    "RR": "DOOR_OPEN_RR",
    "TRUNK": "TRUNK_OPEN",
}


@dataclass(frozen=True, slots=True)
class MessageSpec:
    """A DBC message the simulator transmits."""

    name: str
    frame_id: int
    extended: bool
    length: int
    cycle_ms: int
    signals: tuple[str, ...]


class CanCatalog:
    """The DBC messages and a cantools encoder for them.

    Args:
        dbc_path: the DBC file (default: the generic car, ``edge/data/generic_car.dbc``).

    Raises:
        ScenarioError: the DBC is missing or cannot be parsed.
    """

    def __init__(self, dbc_path: Path | None = None) -> None:
        import cantools  # lazy: keeps ``import firmware_sim`` cheap
        from cantools.database.can import Database
        from cantools.database.errors import Error as CantoolsError

        path = dbc_path or DEFAULT_DBC
        try:
            database = cantools.database.load_file(str(path), strict=False)
        except (OSError, ValueError, CantoolsError) as exc:
            raise ScenarioError(str(path), "", f"cannot load the DBC: {exc}") from exc
        if not isinstance(database, Database):
            raise ScenarioError(str(path), "", "is not a CAN database (DBC/KCD/SYM)")
        self._db = database
        self.path = path
        messages = []
        for message in self._db.messages:
            if message.is_fd or message.length > 8:
                continue  # the simulated bus is classic CAN
            messages.append(
                MessageSpec(
                    name=message.name,
                    frame_id=message.frame_id,
                    extended=message.is_extended_frame,
                    length=message.length,
                    cycle_ms=int(message.cycle_time or 0),
                    signals=tuple(signal.name for signal in message.signals),
                )
            )
        self.messages: tuple[MessageSpec, ...] = tuple(messages)
        self._by_name = {spec.name: spec for spec in self.messages}
        self._limits = {
            message.name: {s.name: (s.minimum, s.maximum) for s in message.signals} for message in self._db.messages
        }
        self._counters: dict[str, int] = {}

    @property
    def frame_ids(self) -> frozenset[int]:
        """Every identifier the DBC defines."""
        return frozenset(spec.frame_id for spec in self.messages)

    def spec(self, name: str) -> MessageSpec:
        """The message called ``name``."""
        return self._by_name[name]

    def messages_with(self, signal_names: Iterable[str]) -> list[MessageSpec]:
        """Messages carrying any of ``signal_names``."""
        wanted = set(signal_names)
        return [spec for spec in self.messages if wanted.intersection(spec.signals)]

    def encode(self, name: str, values: Mapping[str, float]) -> CanFrame:
        """A frame of message ``name`` from physical values (clamped to the DBC ranges).

        Signals missing from ``values`` read their minimum (or 0); a signal whose name ends
        in ``_COUNTER`` is a rolling counter advanced on every call.
        """
        spec = self._by_name[name]
        limits = self._limits[name]
        data: dict[str, float] = {}
        for signal in spec.signals:
            low, high = limits[signal]
            if signal.endswith("_COUNTER"):
                count = self._counters.get(name, 0)
                self._counters[name] = count + 1
                value: float = count % (int(high) + 1 if high is not None else 256)
            else:
                value = values.get(signal, low if low is not None and low > 0 else 0.0)
            if low is not None:
                value = max(low, value)
            if high is not None:
                value = min(high, value)
            data[signal] = value
        payload = self._db.encode_message(name, data, scaling=True, strict=False)
        return CanFrame(spec.frame_id, bytes(payload), extended=spec.extended)


class VehicleModel:
    """Vehicle state along a compiled scenario.

    Args:
        scenario: the compiled timeline.
        seed: noise seed (small sensor noise on speed, rpm, voltage).
    """

    def __init__(self, scenario: Scenario, seed: int = 0) -> None:
        self.scenario = scenario
        self._rng = random.Random(seed)
        self.doors = dict.fromkeys(DOORS, False)
        self._cut: tuple[int, float, int] | None = None  # (time_ms, min_voltage, drop_ms)
        self.can_silent = False
        self._jam: tuple[int, int, float] | None = None  # (start_ms, collapse_ms, collapse_db)
        self._jam_total = False
        self.sky_blocked = False
        self.unplugged = False
        # course held while parked, and the ignition state each segment follows
        self._parked_course: list[float] = []
        self._previous_ignition: list[str] = []
        course, ignition = 0.0, "OFF"
        for segment in scenario.segments:
            self._parked_course.append(course)
            self._previous_ignition.append(ignition)
            if segment.route is not None:
                course = segment.route.at(segment.route.duration_ms - 1).course_deg
            ignition = segment.ignition
        self._last_engine_ms: list[int] = []
        last_run = scenario.start_ms
        for segment in scenario.segments:
            self._last_engine_ms.append(last_run)
            if segment.ignition in ("ON", "START") and segment.kind in ("drive", "idle"):
                last_run = segment.end_ms

    # -- discrete happenings -------------------------------------------------------------

    def apply(self, event: TimelineEvent) -> set[str]:
        """Apply a timeline event; return the DBC signal names whose value changed."""
        name, data = event.name, event.data
        if name in ("door_open", "door_close"):
            door = str(data["door"])
            self.doors[door] = name == "door_open"
            return {_DOOR_SIGNAL[door], "LOCK_STATE"}
        if name in ("ignition_on", "ignition_off"):
            return {"IGNITION_STATE", "ENGINE_RUNNING", "LOCK_STATE"}
        if name == "power_cut":
            self._cut = (event.time_ms, float(data["min_voltage"]), round(float(data["drop_s"]) * 1000))
            return {"BATTERY_VOLTAGE"}
        if name == "can_silent":
            self.can_silent = True
        elif name == "power_restore":
            self._cut = None
            self.can_silent = False
            return {"BATTERY_VOLTAGE"}
        elif name == "jamming_start":
            self._jam = (event.time_ms, round(float(data["collapse_s"]) * 1000), float(data["collapse_db"]))
            self._jam_total = False
        elif name == "jamming_total":
            self._jam_total = True
        elif name == "jamming_end":
            self._jam = None
            self._jam_total = False
        elif name == "gnss_outage_start":
            self.sky_blocked = True
        elif name == "gnss_outage_end":
            self.sky_blocked = False
        elif name == "can_unplug":
            self.unplugged = True
        elif name == "can_replug":
            self.unplugged = False
        return set()

    @property
    def can_active(self) -> bool:
        """Whether the box sees CAN traffic at all (no power cut silence, adapter plugged)."""
        return not (self.can_silent or self.unplugged)

    # -- continuous state ----------------------------------------------------------------

    def _segment(self, time_ms: int) -> Segment:
        return self.scenario.segment_at(time_ms)

    def ignition(self, time_ms: int) -> str:
        """Ignition state (``START`` for a moment when the engine is cranked)."""
        segment = self._segment(time_ms)
        previous = self._previous_ignition[segment.index]
        if (
            segment.ignition == "ON"
            and segment.kind in ("drive", "idle")
            and previous not in ("ON", "START")
            and time_ms - segment.start_ms < _START_PULSE_MS
        ):
            return "START"
        return segment.ignition

    def engine_running(self, time_ms: int) -> bool:
        """Engine on: ignition ON/START in a drive or idle segment."""
        segment = self._segment(time_ms)
        return segment.kind in ("drive", "idle") and segment.ignition in ("ON", "START")

    def truth(self, time_ms: int) -> Truth:
        """True antenna position and motion."""
        segment = self._segment(time_ms)
        if segment.route is not None:
            point = segment.route.at(time_ms - segment.start_ms)
            return Truth(point.lat, point.lon, self.scenario.altitude_m, point.speed_kmh, point.course_deg)
        lat, lon = segment.position
        return Truth(lat, lon, self.scenario.altitude_m, 0.0, self._parked_course[segment.index])

    def odometer_km(self, time_ms: int) -> float:
        """Odometer reading."""
        segment = self._segment(time_ms)
        if segment.route is None:
            return segment.odometer_km
        return segment.odometer_km + segment.route.at(time_ms - segment.start_ms).distance_m / 1000.0

    def sky(self, time_ms: int) -> SkyConditions:
        """What jamming and blockage do to the GNSS signals now."""
        jam_db = 0.0
        if self._jam is not None:
            start, collapse, collapse_db = self._jam
            if self._jam_total:
                jam_db = _JAMMED_DB
            elif collapse > 0:
                jam_db = collapse_db * min(1.0, max(0.0, (time_ms - start) / collapse))
        return SkyConditions(jam_db=jam_db, blocked=self.sky_blocked)

    def battery_voltage(self, time_ms: int) -> float:
        """12 V supply as the body controller measures it."""
        segment = self._segment(time_ms)
        if self.engine_running(time_ms):
            base = 14.1 + self._rng.uniform(-0.05, 0.05)
        else:
            parked_days = max(0.0, (time_ms - self._last_engine_ms[segment.index]) / 86_400_000)
            base = max(12.0, self.scenario.vehicle.battery_v - 0.04 * parked_days) + self._rng.uniform(-0.01, 0.01)
        if self._cut is not None:
            cut_ms, min_voltage, drop_ms = self._cut
            share = 1.0 if drop_ms <= 0 else min(1.0, max(0.0, (time_ms - cut_ms) / drop_ms))
            base -= (base - min_voltage) * share
        return base

    def signals(self, time_ms: int) -> dict[str, float]:
        """Physical value of every DBC signal the model knows, at ``time_ms``."""
        ignition = self.ignition(time_ms)
        powered = ignition in ("ON", "START")
        running = self.engine_running(time_ms)
        truth = self.truth(time_ms)
        odometer = self.odometer_km(time_ms)
        speed = truth.speed_kmh if powered else 0.0
        if speed > 0.0:
            speed = max(0.0, speed + self._rng.uniform(-0.3, 0.3))
        any_door = any(self.doors.values())
        driven_km = max(0.0, odometer - self.scenario.vehicle.odometer_km)
        soc = max(0.0, self.scenario.vehicle.soc_percent - 0.12 * driven_km)
        values: dict[str, float] = {
            "ENGINE_RPM": (750.0 + 28.0 * speed + self._rng.uniform(-15, 15)) if running else 0.0,
            "COOLANT_TEMP": 88.0 if running else 25.0,
            "THROTTLE_POS": (12.0 + 0.2 * speed) if running and speed > 0 else 0.0,
            "IGNITION_STATE": _IGNITION_RAW[ignition],
            "ENGINE_RUNNING": 1 if running else 0,
            "SPEED_KPH": speed,
            "SPEED_VALID": 1 if powered else 0,
            "LOCK_STATE": 0 if (powered or any_door) else 1,
            "BELT_FL": 1 if running and speed > 0 else 0,
            "BATTERY_VOLTAGE": self.battery_voltage(time_ms),
            "BATTERY_CURRENT": (8.0 if running else -0.3) - 1.5 * sum(self.doors.values()),
            "ODOMETER_KM": odometer,
            "SOC_DISPLAYED": soc,
            "HV_VOLTAGE": 350.0 + 0.5 * soc,
        }
        for door, signal in _DOOR_SIGNAL.items():
            values[signal] = 1 if self.doors[door] else 0
        return values
