"""Scenario files: TOML in, a validated, compiled timeline out.

How this works: :func:`parse_scenario` checks every key (unknown keys are errors, so a
typo never silently does nothing), turns durations (``"3d"``, ``"2h30m"``, ``90``) and
datetimes (TOML offset datetimes) into integer milliseconds, lays the segments end to end
from the start time (a drive lasts as long as its route takes at its speeds), and
expands every scripted event into timeline events (a door opening becomes ``door_open``
then ``door_close``; a power cut becomes ``power_cut``, ``can_silent`` and maybe
``power_restore``...). The result is immutable; the simulation only reads it.
The format is documented in docs/simulator.md.
"""

from __future__ import annotations

import bisect
import dataclasses
import math
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from .errors import ScenarioError
from .nmea import CONSTELLATIONS
from .pace import MAX_SPEED, Pace
from .route import Route

__all__ = [
    "DOORS",
    "SCENARIO_DIR",
    "CanSettings",
    "GnssSettings",
    "Scenario",
    "Segment",
    "TimelineEvent",
    "VehicleSettings",
    "list_scenarios",
    "load_scenario",
    "parse_scenario",
    "resolve_scenario",
]

SCENARIO_DIR = Path(__file__).resolve().parent / "scenarios"
DOORS = ("FL", "FR", "RL", "RR", "TRUNK")
SEGMENT_KINDS = ("drive", "tow", "park", "idle")
IGNITION_STATES = ("OFF", "ACC", "ON", "START", "LOCK")
MAX_SCENARIO_MS = 400 * 86_400_000
DAY_MS = 86_400_000
#: how long :meth:`Scenario.ending_at` holds the car (``hold``): longer than any run
HOLD_MS = 10 * 365 * DAY_MS
MAX_SEGMENTS = 10_000
MAX_EVENTS_PER_SEGMENT = 1_000
MAX_FILE_BYTES = 1_000_000
#: Unknown 11-bit ids (not in the generic car DBC) used for background load by default.
DEFAULT_BACKGROUND_IDS = (0x0A0, 0x0F1, 0x1F5, 0x244, 0x2C4, 0x318, 0x3D1, 0x4F0, 0x5B0, 0x611, 0x6F2, 0x7A0)
_NAME_RE = re.compile(r"[a-z0-9_]{1,64}")
_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)(ms|d|h|m|s)")
_UNITS_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
_DEFAULT_IGNITION = {"drive": "ON", "idle": "ON", "park": "OFF", "tow": "OFF"}

# Keys each event kind accepts besides ``kind``, ``at`` and ``realtime``.
_EVENT_KEYS: dict[str, frozenset[str]] = {
    "door_open": frozenset({"door", "open_for"}),
    "power_cut": frozenset({"drop", "min_voltage", "silent_after", "restore_after"}),
    "jamming": frozenset({"collapse", "collapse_db", "duration"}),
    "gnss_outage": frozenset({"duration"}),
    "gnss_stop": frozenset({"duration", "ttff", "cold"}),
    "line_noise": frozenset({"link", "bytes"}),
    "can_unplug": frozenset({"duration"}),
    "charge": frozenset({"duration", "power_kw"}),
    "battery_degrade": frozenset({"to", "over"}),
    "hv_disconnect": frozenset({"restore_after"}),
}


@dataclass(frozen=True, slots=True)
class TimelineEvent:
    """Something that happens at one instant of scenario time.

    Attributes:
        time_ms: scenario time, epoch milliseconds UTC.
        name: ``door_open``, ``ignition_on``, ``power_cut``, ``jamming_start``, ``tow_start``,
            ``stop_begin``, ``can_unplug``... (the full list is in docs/simulator.md).
        data: JSON-serialisable details (door, voltage, link, ...).
        segment: index of the segment it belongs to.
    """

    time_ms: int
    name: str
    data: Mapping[str, Any] = field(default_factory=dict)
    segment: int = 0


@dataclass(frozen=True, slots=True)
class GnssSettings:
    """``[gnss]``: the receiver."""

    rate_hz: float = 1.0
    noise_m: float = 2.0
    corrupt_share: float = 0.0
    constellations: tuple[str, ...] = tuple(CONSTELLATIONS)
    max_epochs_per_wall_s: float = 10.0
    geoid_sep_m: float = 9.0


@dataclass(frozen=True, slots=True)
class CanSettings:
    """``[can]``: the bus (DBC file, background load)."""

    dbc: Path | None = None
    background_fps: float = 0.0
    background_ids: tuple[int, ...] = DEFAULT_BACKGROUND_IDS
    extended_share: float = 0.0


@dataclass(frozen=True, slots=True)
class VehicleSettings:
    """``[vehicle]``: the car's state at the start."""

    odometer_km: float = 12_000.0
    soc_percent: float = 80.0
    battery_v: float = 12.6
    soh_percent: float = 96.0
    pack_kwh: float = 60.0


@dataclass(frozen=True, slots=True)
class Segment:
    """One stretch of the timeline: a drive, a tow, a park (stop) or idling with the engine on.

    Attributes:
        index: position in the scenario.
        kind: ``drive``, ``tow``, ``park`` or ``idle``.
        start_ms, end_ms: scenario time span.
        speed: time acceleration for this segment (None: the scenario default).
        ignition: ignition state held during the segment.
        position: where the segment starts (lat, lon).
        route: the path for ``drive``/``tow`` (None when stationary).
        odometer_km: odometer at the segment start.
        realtime_ms: half-width of a 1x window around the segment start (0: none).
    """

    index: int
    kind: str
    start_ms: int
    end_ms: int
    speed: float | None
    ignition: str
    position: tuple[float, float]
    route: Route | None
    odometer_km: float
    realtime_ms: int = 0

    @property
    def moving(self) -> bool:
        """Drive or tow."""
        return self.route is not None


@dataclass(frozen=True)
class Scenario:
    """A validated, compiled scenario (see :func:`parse_scenario`)."""

    name: str
    description: str
    source: str
    start_ms: int
    end_ms: int
    timezone: str
    seed: int
    speed: float
    position: tuple[float, float]
    altitude_m: float
    gnss: GnssSettings
    can: CanSettings
    vehicle: VehicleSettings
    segments: tuple[Segment, ...]
    events: tuple[TimelineEvent, ...]
    realtime_windows: tuple[tuple[int, int], ...] = ()
    #: ``(start_ms, end_ms, speed)`` spans at the end played at their own speed whatever
    #: ``--speed``/``--speed-factor`` say (the catch-up and the hold of :meth:`ending_at`)
    tail: tuple[tuple[int, int, float], ...] = ()
    #: scenario time from which the car is held as it was at the end, at 1x (None: no hold)
    hold_from_ms: int | None = None

    @property
    def duration_ms(self) -> int:
        """Scenario length."""
        return self.end_ms - self.start_ms

    def pace(self, *, override: float | None = None, factor: float = 1.0) -> Pace:
        """The wall-time map: per-segment speeds (times ``factor``) with 1x windows, or ``override`` everywhere.

        The :attr:`tail` spans keep their own speeds either way.
        """
        head_end = self.tail[0][0] if self.tail else self.end_ms
        if override is not None:
            if not 0.0 < override <= MAX_SPEED:
                raise ScenarioError(self.source, "--speed", f"{override} is outside (0, {MAX_SPEED:.0f}]")
            return Pace.build([(self.start_ms, head_end, override), *self.tail])
        if not 0.0 < factor <= MAX_SPEED:
            raise ScenarioError(self.source, "--speed-factor", f"{factor} is outside (0, {MAX_SPEED:.0f}]")
        spans = [
            (seg.start_ms, min(seg.end_ms, head_end), min(MAX_SPEED, (seg.speed or self.speed) * factor))
            for seg in self.segments
            if seg.start_ms < head_end
        ]
        return Pace.build([*spans, *self.tail], self.realtime_windows)

    def ending_at(self, target_ms: int, *, catch_up_s: float = 5.0, hold: bool = False) -> Scenario:
        """This scenario on the host's calendar, ending at ``target_ms`` (``sim run --end-now``).

        It is moved by whole days (the local time of day of every event is kept: a night is
        still a night), to the latest start that ends at or before ``target_ms``. The car
        then stays as the scenario left it, parked where it stopped (a moving car is parked
        there with the ignition off), until ``target_ms``: that gap, under a day, plays in
        ``catch_up_s`` wall seconds. With ``hold`` the car stays parked after ``target_ms``
        at 1x, reporting like a quiet parked car, for as long as the run goes on.
        """
        offset = (target_ms - self.end_ms) // DAY_MS * DAY_MS
        moved = self.shifted(offset)
        gap_ms = target_ms - moved.end_ms
        end_ms = target_ms + (HOLD_MS if hold else 0)
        tail: list[tuple[int, int, float]] = []
        if gap_ms > 0:
            tail.append((moved.end_ms, target_ms, min(MAX_SPEED, max(1.0, gap_ms / 1000.0 / catch_up_s))))
        if hold:
            tail.append((target_ms, end_ms, 1.0))
        if end_ms == moved.end_ms:
            return moved
        segments = list(moved.segments)
        events = list(moved.events)
        last = segments[-1]
        if last.kind == "park":
            segments[-1] = dataclasses.replace(last, end_ms=end_ms)
            played_s = (target_ms - last.start_ms) / 1000.0  # the dwell up to the target (the hold is open-ended)
            events = [
                dataclasses.replace(e, time_ms=end_ms)
                if e.name == "stop_end" and e.segment == last.index
                else dataclasses.replace(e, data={**e.data, "duration_s": played_s})
                if e.name == "stop_begin" and e.segment == last.index
                else e
                for e in events
            ]
        else:
            odometer = last.odometer_km + (last.route.length_m / 1000.0 if last.route is not None else 0.0)
            position = last.route.end if last.route is not None else last.position
            parked = Segment(len(segments), "park", last.end_ms, end_ms, None, "OFF", position, None, odometer)
            segments.append(parked)
            events.extend(_segment_events(parked, last.ignition))
        order = {name: rank for rank, name in enumerate(_SAME_TIME_ORDER)}
        events.sort(key=lambda e: (e.time_ms, order.get(e.name, len(order))))
        return dataclasses.replace(
            moved,
            end_ms=end_ms,
            segments=tuple(segments),
            events=tuple(events),
            tail=tuple(tail),
            hold_from_ms=target_ms if hold else None,
        )

    def shifted(self, offset_ms: int) -> Scenario:
        """The same scenario starting ``offset_ms`` later (used by ``--loop``)."""
        segments = tuple(
            Segment(
                s.index,
                s.kind,
                s.start_ms + offset_ms,
                s.end_ms + offset_ms,
                s.speed,
                s.ignition,
                s.position,
                s.route,
                s.odometer_km,
                s.realtime_ms,
            )
            for s in self.segments
        )
        events = tuple(TimelineEvent(e.time_ms + offset_ms, e.name, e.data, e.segment) for e in self.events)
        windows = tuple((a + offset_ms, b + offset_ms) for a, b in self.realtime_windows)
        tail = tuple((a + offset_ms, b + offset_ms, v) for a, b, v in self.tail)
        hold = None if self.hold_from_ms is None else self.hold_from_ms + offset_ms
        return Scenario(
            self.name,
            self.description,
            self.source,
            self.start_ms + offset_ms,
            self.end_ms + offset_ms,
            self.timezone,
            self.seed,
            self.speed,
            self.position,
            self.altitude_m,
            self.gnss,
            self.can,
            self.vehicle,
            segments,
            events,
            windows,
            tail,
            hold,
        )

    @cached_property
    def _segment_ends(self) -> tuple[int, ...]:
        return tuple(segment.end_ms for segment in self.segments)

    def segment_at(self, time_ms: int) -> Segment:
        """The segment containing ``time_ms`` (the first at or before the start, the last at or after the end)."""
        index = bisect.bisect_right(self._segment_ends, time_ms)
        return self.segments[min(index, len(self.segments) - 1)]


# -- reading values ------------------------------------------------------------------


class _Reader:
    """Typed access to one TOML table that reports errors with their key path."""

    def __init__(self, source: str, where: str, table: Mapping[str, Any], allowed: frozenset[str]) -> None:
        self.source, self.where, self.table = source, where, table
        unknown = sorted(set(table) - allowed)
        if unknown:
            raise ScenarioError(source, where or "top level", f"unknown key(s) {unknown}; allowed: {sorted(allowed)}")

    def path(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key

    def fail(self, key: str, message: str) -> ScenarioError:
        return ScenarioError(self.source, self.path(key), message)

    def number(self, key: str, default: float | None, low: float, high: float) -> float:
        value = self.table.get(key, default)
        if value is None:
            raise self.fail(key, "is required")
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise self.fail(key, f"must be a number, got {value!r}")
        if not low <= value <= high:
            raise self.fail(key, f"{value} is outside [{low:g}, {high:g}]")
        return float(value)

    def integer(self, key: str, default: int, low: int, high: int) -> int:
        value = self.table.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(key, f"must be an integer, got {value!r}")
        if not low <= value <= high:
            raise self.fail(key, f"{value} is outside [{low}, {high}]")
        return value

    def text(self, key: str, default: str | None, choices: Sequence[str] | None = None) -> str:
        value = self.table.get(key, default)
        if value is None:
            raise self.fail(key, "is required")
        if not isinstance(value, str):
            raise self.fail(key, f"must be a string, got {value!r}")
        if choices is not None and value not in choices:
            raise self.fail(key, f"{value!r} is not one of {list(choices)}")
        return value

    def flag(self, key: str, default: bool) -> bool:
        value = self.table.get(key, default)
        if not isinstance(value, bool):
            raise self.fail(key, f"must be true or false, got {value!r}")
        return value

    def duration_ms(
        self, key: str, default: str | float | None, *, low_ms: int = 0, high_ms: int = MAX_SCENARIO_MS
    ) -> int:
        value = self.table.get(key, default)
        if value is None:
            raise self.fail(key, "is required")
        try:
            milliseconds = parse_duration_ms(value)
        except ValueError as exc:
            raise self.fail(key, str(exc)) from exc
        if not low_ms <= milliseconds <= high_ms:
            raise self.fail(key, f"{milliseconds} ms is outside [{low_ms}, {high_ms}] ms")
        return milliseconds

    def position(self, key: str, value: Any = None) -> tuple[float, float, float | None]:
        value = self.table.get(key) if value is None else value
        if not isinstance(value, list) or len(value) not in (2, 3):
            raise self.fail(key, f"must be [lat, lon] or [lat, lon, speed_kmh], got {value!r}")
        if any(isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) for v in value):
            raise self.fail(key, f"must hold numbers, got {value!r}")
        lat, lon = float(value[0]), float(value[1])
        if not -90.0 <= lat <= 90.0 or not -180.0 <= lon <= 180.0:
            raise self.fail(key, f"{lat}, {lon} is not a WGS-84 latitude/longitude")
        speed = float(value[2]) if len(value) == 3 else None
        if speed is not None and not 0.0 < speed <= 300.0:
            raise self.fail(key, f"leg speed {speed} km/h is outside (0, 300]")
        return lat, lon, speed

    def table_of(self, key: str) -> Mapping[str, Any]:
        value = self.table.get(key, {})
        if not isinstance(value, dict):
            raise self.fail(key, f"must be a table, got {type(value).__name__}")
        return value

    def tables_of(self, key: str, limit: int) -> list[Mapping[str, Any]]:
        value = self.table.get(key, [])
        if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
            raise self.fail(key, "must be an array of tables ([[...]])")
        if len(value) > limit:
            raise self.fail(key, f"{len(value)} entries exceed the limit of {limit}")
        return value


def parse_duration_ms(value: object) -> int:
    """``90`` / ``1.5`` (seconds), ``"500ms"``, ``"90s"``, ``"2h30m"``, ``"3d"`` -> milliseconds."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"duration {value!r} must be a finite number of seconds >= 0")
        return round(value * 1000)
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"duration {value!r} must be seconds or a string like '2h30m'")
    text = value.replace(" ", "")
    total, position = 0.0, 0
    for match in _DURATION_RE.finditer(text):
        if match.start() != position:
            break
        total += float(match.group(1)) * _UNITS_MS[match.group(2)]
        position = match.end()
    if position != len(text) or position == 0:
        raise ValueError(f"duration {value!r} is not like '500ms', '90s', '2h30m' or '3d'")
    return round(total)


def _datetime_ms(source: str, where: str, value: object) -> int:
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError as exc:
            raise ScenarioError(source, where, f"{value!r} is not an ISO 8601 datetime") from exc
    if not isinstance(value, datetime):
        raise ScenarioError(source, where, f"must be a datetime with a UTC offset, got {value!r}")
    if value.tzinfo is None:
        raise ScenarioError(source, where, f"{value.isoformat()} has no UTC offset (write e.g. +08:00 or Z)")
    return round(value.astimezone(UTC).timestamp() * 1000)


# -- parsing ---------------------------------------------------------------------------

_TOP_KEYS = frozenset(
    {
        "name",
        "description",
        "start",
        "timezone",
        "position",
        "altitude_m",
        "speed",
        "seed",
        "gnss",
        "can",
        "vehicle",
        "segment",
    }
)
_SEGMENT_KEYS = frozenset({"kind", "duration", "route", "speed_kmh", "speed", "ignition", "realtime", "event"})


def parse_scenario(text: str | bytes, source: str = "<scenario>", base_dir: Path | None = None) -> Scenario:
    """Validate and compile scenario TOML.

    Args:
        text: the TOML document.
        source: a label for error messages (usually the file name).
        base_dir: where relative paths (``[can] dbc``) are resolved.

    Raises:
        ScenarioError: naming the file, the key path and the rule broken.
    """
    if len(text) > MAX_FILE_BYTES:
        raise ScenarioError(source, "", f"{len(text)} bytes exceed the limit of {MAX_FILE_BYTES}")
    try:
        document = tomllib.loads(text.decode("utf-8") if isinstance(text, bytes) else text)
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ScenarioError(source, "", f"not valid TOML: {exc}") from exc
    top = _Reader(source, "", document, _TOP_KEYS)
    name = top.text("name", Path(source).stem if source.endswith(".toml") else "scenario")
    if not _NAME_RE.fullmatch(name):
        raise top.fail("name", f"{name!r} must match {_NAME_RE.pattern}")
    timezone = top.text("timezone", "Asia/Shanghai")
    try:
        ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise top.fail("timezone", f"{timezone!r} is not an IANA time zone") from exc
    if "start" not in document:
        raise top.fail("start", "is required (a datetime with offset, e.g. 2026-03-02T07:30:00+08:00)")
    start_ms = _datetime_ms(source, "start", document["start"])
    lat, lon, _ = top.position("position") if "position" in document else (None, None, None)
    if lat is None or lon is None:
        raise top.fail("position", "is required ([lat, lon] in WGS-84)")
    scenario_speed = top.number("speed", 1.0, 1e-3, MAX_SPEED)
    gnss = _parse_gnss(_Reader(source, "gnss", top.table_of("gnss"), _GNSS_KEYS))
    can = _parse_can(_Reader(source, "can", top.table_of("can"), _CAN_KEYS), base_dir)
    vehicle_reader = _Reader(
        source,
        "vehicle",
        top.table_of("vehicle"),
        frozenset({"odometer_km", "soc_percent", "battery_v", "soh_percent", "pack_kwh"}),
    )
    vehicle = VehicleSettings(
        odometer_km=vehicle_reader.number("odometer_km", 12_000.0, 0.0, 4e8),
        soc_percent=vehicle_reader.number("soc_percent", 80.0, 0.0, 100.0),
        battery_v=vehicle_reader.number("battery_v", 12.6, 9.0, 13.5),
        soh_percent=vehicle_reader.number("soh_percent", 96.0, 0.0, 100.0),
        pack_kwh=vehicle_reader.number("pack_kwh", 60.0, 1.0, 500.0),
    )
    raw_segments = top.tables_of("segment", MAX_SEGMENTS)
    if not raw_segments:
        raise top.fail("segment", "at least one [[segment]] is required")

    segments: list[Segment] = []
    events: list[TimelineEvent] = []
    windows: list[tuple[int, int]] = []
    position = (lat, lon)
    clock_ms = start_ms
    odometer = vehicle.odometer_km
    previous_ignition = "OFF"
    for index, raw in enumerate(raw_segments):
        reader = _Reader(source, f"segment[{index}]", raw, _SEGMENT_KEYS)
        kind = reader.text("kind", None, SEGMENT_KINDS)
        speed = reader.number("speed", None, 1e-3, MAX_SPEED) if "speed" in raw else None
        ignition = reader.text("ignition", _DEFAULT_IGNITION[kind], IGNITION_STATES)
        if kind == "drive" and ignition not in ("ON", "START"):
            raise reader.fail("ignition", f"a drive needs the ignition ON, got {ignition!r} (use kind = 'tow')")
        if kind == "tow" and ignition in ("ON", "START"):
            raise reader.fail("ignition", "a tow happens with the ignition off (use kind = 'drive')")
        route: Route | None = None
        if kind in ("drive", "tow"):
            if "duration" in raw:
                raise reader.fail("duration", "a drive/tow lasts as long as its route; remove 'duration'")
            route = _parse_route(reader, position)
            duration_ms = route.duration_ms
        else:
            for key in ("route", "speed_kmh"):
                if key in raw:
                    raise reader.fail(key, f"a {kind} segment does not move")
            duration_ms = reader.duration_ms("duration", None, low_ms=1)
        realtime_ms = reader.duration_ms("realtime", 0, high_ms=3_600_000)
        segment = Segment(
            index, kind, clock_ms, clock_ms + duration_ms, speed, ignition, position, route, odometer, realtime_ms
        )
        if realtime_ms:
            windows.append((clock_ms - realtime_ms, clock_ms + realtime_ms))
        events.extend(_segment_events(segment, previous_ignition))
        previous_ignition = ignition
        segments.append(segment)
        clock_ms = segment.end_ms
        if clock_ms - start_ms > MAX_SCENARIO_MS:
            raise reader.fail("duration", f"the scenario exceeds {MAX_SCENARIO_MS // 86_400_000} days")
        if route is not None:
            position = route.end
            odometer += route.length_m / 1000.0
    end_ms = clock_ms

    for segment, raw in zip(segments, raw_segments, strict=True):
        for number, raw_event in enumerate(
            _Reader(source, f"segment[{segment.index}]", raw, _SEGMENT_KEYS).tables_of("event", MAX_EVENTS_PER_SEGMENT)
        ):
            where = f"segment[{segment.index}].event[{number}]"
            expanded, window = _parse_event(source, where, raw_event, segment, end_ms)
            events.extend(expanded)
            if window is not None:
                windows.append(window)
    order = {name: rank for rank, name in enumerate(_SAME_TIME_ORDER)}
    events.sort(key=lambda e: (e.time_ms, order.get(e.name, len(order))))
    return Scenario(
        name=name,
        description=top.text("description", ""),
        source=source,
        start_ms=start_ms,
        end_ms=end_ms,
        timezone=timezone,
        seed=top.integer("seed", 0, 0, 2**32 - 1),
        speed=scenario_speed,
        position=(lat, lon),
        altitude_m=top.number("altitude_m", 4.0, -500.0, 9000.0),
        gnss=gnss,
        can=can,
        vehicle=vehicle,
        segments=tuple(segments),
        events=tuple(events),
        realtime_windows=tuple(windows),
    )


# When several events share one instant, ends come before starts.
_SAME_TIME_ORDER = (
    "drive_end",
    "tow_end",
    "stop_end",
    "idle_end",
    "ignition_off",
    "ignition_on",
    "drive_start",
    "tow_start",
    "stop_begin",
    "idle_start",
)
_START_NAMES = {"drive": "drive_start", "tow": "tow_start", "park": "stop_begin", "idle": "idle_start"}
_END_NAMES = {"drive": "drive_end", "tow": "tow_end", "park": "stop_end", "idle": "idle_end"}
_GNSS_KEYS = frozenset(
    {"rate_hz", "noise_m", "corrupt_share", "constellations", "max_epochs_per_wall_s", "geoid_sep_m"}
)
_CAN_KEYS = frozenset({"dbc", "background_fps", "background_ids", "extended_share"})


def _segment_events(segment: Segment, previous_ignition: str) -> list[TimelineEvent]:
    """Ignition change (if any), segment start and segment end."""
    events = []
    was_on = previous_ignition in ("ON", "START")
    now_on = segment.ignition in ("ON", "START")
    if was_on != now_on:
        name = "ignition_on" if now_on else "ignition_off"
        events.append(TimelineEvent(segment.start_ms, name, {"state": segment.ignition}, segment.index))
    data: dict[str, Any] = {"lat": round(segment.position[0], 6), "lon": round(segment.position[1], 6)}
    if segment.route is not None:
        data["length_m"] = round(segment.route.length_m, 1)
    data["duration_s"] = (segment.end_ms - segment.start_ms) / 1000.0
    events.append(TimelineEvent(segment.start_ms, _START_NAMES[segment.kind], data, segment.index))
    events.append(TimelineEvent(segment.end_ms, _END_NAMES[segment.kind], {}, segment.index))
    return events


def _parse_route(reader: _Reader, start: tuple[float, float]) -> Route:
    raw_route = reader.table.get("route")
    if not isinstance(raw_route, list) or not raw_route:
        raise reader.fail("route", "a drive/tow needs route = [[lat, lon], ...] (waypoints after the current position)")
    default_speed = reader.number("speed_kmh", 30.0, 0.1, 300.0)
    points = [start]
    speeds = []
    for number, item in enumerate(raw_route):
        lat, lon, speed = reader.position(f"route[{number}]", item)
        points.append((lat, lon))
        speeds.append(speed if speed is not None else default_speed)
    try:
        route = Route(tuple(points), tuple(speeds))
    except ValueError as exc:
        raise reader.fail("route", str(exc)) from exc
    if route.length_m < 1.0:
        raise reader.fail("route", f"the route is only {route.length_m:.2f} m long")
    return route


def _parse_gnss(reader: _Reader) -> GnssSettings:
    constellations = reader.table.get("constellations", list(CONSTELLATIONS))
    if (
        not isinstance(constellations, list)
        or not constellations
        or any(c not in CONSTELLATIONS for c in constellations)
        or len(set(constellations)) != len(constellations)
    ):
        raise reader.fail(
            "constellations", f"must be a non-empty list drawn from {list(CONSTELLATIONS)}, got {constellations!r}"
        )
    return GnssSettings(
        rate_hz=reader.number("rate_hz", 1.0, 1.0, 10.0),
        noise_m=reader.number("noise_m", 2.0, 0.0, 100.0),
        corrupt_share=reader.number("corrupt_share", 0.0, 0.0, 0.5),
        constellations=tuple(constellations),
        max_epochs_per_wall_s=reader.number("max_epochs_per_wall_s", 10.0, 1.0, 50.0),
        geoid_sep_m=reader.number("geoid_sep_m", 9.0, -120.0, 90.0),
    )


def _parse_can(reader: _Reader, base_dir: Path | None) -> CanSettings:
    dbc: Path | None = None
    if "dbc" in reader.table:
        dbc = Path(reader.text("dbc", None))
        if not dbc.is_absolute() and base_dir is not None:
            dbc = base_dir / dbc
    ids = reader.table.get("background_ids", list(DEFAULT_BACKGROUND_IDS))
    if (
        not isinstance(ids, list)
        or not ids
        or any(isinstance(i, bool) or not isinstance(i, int) or not 0 <= i <= 0x7FF for i in ids)
    ):
        raise reader.fail("background_ids", f"must be a non-empty list of 11-bit ids (0-0x7FF), got {ids!r}")
    return CanSettings(
        dbc=dbc,
        background_fps=reader.number("background_fps", 0.0, 0.0, 8000.0),
        background_ids=tuple(ids),
        extended_share=reader.number("extended_share", 0.0, 0.0, 1.0),
    )


def _parse_event(
    source: str, where: str, raw: Mapping[str, Any], segment: Segment, end_ms: int
) -> tuple[list[TimelineEvent], tuple[int, int] | None]:
    kind = raw.get("kind")
    if kind not in _EVENT_KEYS:
        raise ScenarioError(source, f"{where}.kind", f"{kind!r} is not one of {sorted(_EVENT_KEYS)}")
    reader = _Reader(source, where, raw, _EVENT_KEYS[kind] | {"kind", "at", "realtime"})
    if "at" not in raw:
        raise reader.fail("at", "is required (offset in the segment like '10m', or a datetime with offset)")
    at = raw["at"]
    if isinstance(at, datetime) or (isinstance(at, str) and ("T" in at or ":" in at)):
        at_ms = _datetime_ms(source, f"{where}.at", at)
    else:
        at_ms = segment.start_ms + reader.duration_ms("at", None)
    if not segment.start_ms <= at_ms <= segment.end_ms:
        raise reader.fail(
            "at",
            f"{_iso(at_ms)} is outside its segment [{_iso(segment.start_ms)}, {_iso(segment.end_ms)}]",
        )
    realtime_ms = reader.duration_ms("realtime", 0, high_ms=3_600_000)
    window = (at_ms - realtime_ms, at_ms + realtime_ms) if realtime_ms else None
    index = segment.index
    events: list[TimelineEvent] = []

    def add(offset_ms: int, name: str, data: Mapping[str, Any] | None = None) -> None:
        if at_ms + offset_ms > end_ms:
            raise reader.fail("at", f"{name} at {_iso(at_ms + offset_ms)} falls after the scenario end {_iso(end_ms)}")
        events.append(TimelineEvent(at_ms + offset_ms, name, dict(data or {}), index))

    if kind == "door_open":
        door = reader.text("door", "FL", DOORS)
        open_for = reader.duration_ms("open_for", "20s", low_ms=1, high_ms=86_400_000)
        add(0, "door_open", {"door": door, "open_for_s": open_for / 1000})
        add(open_for, "door_close", {"door": door})
    elif kind == "power_cut":
        drop = reader.duration_ms("drop", "2s", high_ms=600_000)
        silent_after = reader.duration_ms("silent_after", "3s", high_ms=3_600_000)
        min_voltage = reader.number("min_voltage", 8.0, 0.0, 12.0)
        if silent_after < drop:
            raise reader.fail("silent_after", f"{silent_after} ms is shorter than the voltage drop ({drop} ms)")
        add(0, "power_cut", {"min_voltage": min_voltage, "drop_s": drop / 1000})
        add(silent_after, "can_silent")
        if "restore_after" in raw:
            restore = reader.duration_ms("restore_after", None, low_ms=1)
            if restore <= silent_after:
                raise reader.fail("restore_after", f"{restore} ms must come after silent_after ({silent_after} ms)")
            add(restore, "power_restore")
    elif kind == "jamming":
        collapse = reader.duration_ms("collapse", "20s", high_ms=3_600_000)
        duration = reader.duration_ms("duration", None, low_ms=1)
        collapse_db = reader.number("collapse_db", 40.0, 1.0, 80.0)
        add(0, "jamming_start", {"collapse_s": collapse / 1000, "collapse_db": collapse_db})
        add(collapse, "jamming_total", {"no_fix_s": duration / 1000})
        add(collapse + duration, "jamming_end")
    elif kind == "gnss_outage":
        duration = reader.duration_ms("duration", None, low_ms=1)
        add(0, "gnss_outage_start", {"duration_s": duration / 1000})
        add(duration, "gnss_outage_end")
    elif kind == "gnss_stop":
        duration = reader.duration_ms("duration", None, low_ms=1)
        ttff = reader.duration_ms("ttff", "3s", high_ms=900_000)
        cold = reader.flag("cold", False)
        add(0, "gnss_stop", {"duration_s": duration / 1000})
        add(duration, "gnss_restart", {"ttff_s": ttff / 1000, "cold": cold})
    elif kind == "line_noise":
        link = reader.text("link", "gnss", ("gnss", "can"))
        size = reader.integer("bytes", 64, 1, 65_536)
        add(0, "line_noise", {"link": link, "bytes": size})
    elif kind == "can_unplug":
        duration = reader.duration_ms("duration", None, low_ms=1)
        add(0, "can_unplug", {"duration_s": duration / 1000})
        add(duration, "can_replug")
    elif kind == "charge":
        duration = reader.duration_ms("duration", None, low_ms=1)
        power = reader.number("power_kw", 7.0, 0.5, 400.0)
        add(0, "charge_start", {"power_kw": power, "duration_s": duration / 1000, "session": at_ms})
        add(duration, "charge_end", {"session": at_ms})
    elif kind == "battery_degrade":
        target = reader.number("to", None, 0.0, 100.0)
        over = reader.duration_ms("over", 0)
        add(0, "battery_degrade", {"to": target, "over_s": over / 1000})
    else:  # hv_disconnect
        add(0, "hv_disconnect")
        if "restore_after" in raw:
            add(reader.duration_ms("restore_after", None, low_ms=1), "hv_restore")
    return events, window


def _iso(time_ms: int) -> str:
    return datetime.fromtimestamp(time_ms / 1000, tz=UTC).isoformat().replace("+00:00", "Z")


# -- finding and loading ---------------------------------------------------------------


def list_scenarios() -> list[str]:
    """Names of the scenarios shipped in ``firmware-sim/scenarios``."""
    return sorted(path.stem for path in SCENARIO_DIR.glob("*.toml"))


def resolve_scenario(name_or_path: str | Path) -> Path:
    """A shipped scenario by NAME, or a file path.

    Raises:
        ScenarioError: neither a shipped name nor an existing file.
    """
    text = str(name_or_path)
    if _NAME_RE.fullmatch(text):
        shipped = SCENARIO_DIR / f"{text}.toml"
        if shipped.is_file():
            return shipped
    path = Path(text)
    if path.is_file():
        return path
    raise ScenarioError(text, "", f"no such scenario file, and not a shipped scenario name {list_scenarios()}")


def load_scenario(name_or_path: str | Path) -> Scenario:
    """Load and compile a scenario by NAME or path (see :func:`parse_scenario`)."""
    path = resolve_scenario(name_or_path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ScenarioError(str(path), "", f"cannot read: {exc}") from exc
    return parse_scenario(data, source=path.name if path.parent == SCENARIO_DIR else str(path), base_dir=path.parent)
