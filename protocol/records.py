"""Frozen, self-validating records that travel from the vehicle to the collector.

Times are integers: milliseconds since the Unix epoch, UTC (``time_ms``). Positions are
WGS-84 degrees. Every record validates in ``__post_init__`` and raises
:class:`~protocol.errors.InvalidRecord` on an impossible value, so a record that exists
is a record that can be encoded.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from enum import IntEnum
from functools import lru_cache
from itertools import pairwise, repeat
from operator import attrgetter
from typing import cast

from .errors import InvalidRecord

__all__ = [
    "DEVICE_ID_RE",
    "MAX_SEQ",
    "MAX_TIME_MS",
    "MIN_TIME_MS",
    "Alert",
    "AlertState",
    "Batch",
    "ColumnarBatch",
    "DailyStats",
    "Evidence",
    "Fix",
    "FixColumns",
    "FixMode",
    "NoFix",
    "SampleValue",
    "Severity",
    "SignalSample",
    "check_device_id",
]

MAX_SEQ = 2**64 - 1
#: Earliest and latest plausible observation times (2000-01-01 .. 2100-01-01 UTC).
MIN_TIME_MS = 946_684_800_000
MAX_TIME_MS = 4_102_444_800_000

DEVICE_ID_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
SIGNAL_NAME_RE = re.compile(r"[A-Za-z][A-Za-z0-9_]*(\.[A-Za-z0-9_]+){0,15}")
RULE_NAME_RE = re.compile(r"[a-z][a-z0-9_]{0,63}")
MAX_TEXT = 1024
MAX_EVIDENCE_DEPTH = 4
MAX_EVIDENCE_ITEMS = 256

SampleValue = bool | int | float | str
Evidence = Mapping[str, object]


def check_device_id(device_id: object) -> str:
    """Return ``device_id`` if it matches ``[A-Za-z0-9_-]{1,64}``, else raise InvalidRecord."""
    if not isinstance(device_id, str) or not DEVICE_ID_RE.fullmatch(device_id):
        raise InvalidRecord(f"device id {device_id!r} must match [A-Za-z0-9_-]{{1,64}}")
    return device_id


def _check_time(name: str, value: object) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidRecord(f"{name} must be an int of epoch milliseconds, got {value!r}")
    if not MIN_TIME_MS <= value <= MAX_TIME_MS:
        raise InvalidRecord(f"{name}={value} is outside 2000-01-01..2100-01-01 UTC")


def _check_float(name: str, value: object, lo: float, hi: float, *, optional: bool) -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidRecord(f"{name} must be a number, got {value!r}")
    if not math.isfinite(value) or not lo <= value <= hi:
        raise InvalidRecord(f"{name}={value!r} is outside [{lo}, {hi}]")


@lru_cache(maxsize=4096)
def _is_signal_name(name: str) -> bool:
    """Whether ``name`` is a dotted VSS-style path (cached: a vehicle uses a few dozen)."""
    return len(name) <= 128 and SIGNAL_NAME_RE.fullmatch(name) is not None


def _check_int(name: str, value: object, lo: int, hi: int, *, optional: bool) -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise InvalidRecord(f"{name}={value!r} must be an int in [{lo}, {hi}]")


def _check_text(name: str, value: object, limit: int = MAX_TEXT) -> None:
    if not isinstance(value, str) or len(value) > limit:
        raise InvalidRecord(f"{name} must be text of at most {limit} characters, got {value!r:.80}")


class FixMode(IntEnum):
    """GNSS fix dimension, numbered as in NMEA GSA (1 = no fix)."""

    NONE = 1
    TWO_D = 2
    THREE_D = 3

    @property
    def label(self) -> str:
        """``none``, ``2d`` or ``3d`` (the spelling used in JSON output)."""
        return {1: "none", 2: "2d", 3: "3d"}[self.value]


class Severity(IntEnum):
    """How urgently an alert must reach the collector (high and panic go at once)."""

    INFO = 0
    WARNING = 1
    HIGH = 2
    PANIC = 3

    @property
    def label(self) -> str:
        """Lower-case name, as used in JSON and configuration."""
        return self.name.lower()


class AlertState(IntEnum):
    """An alert record opens an episode (RAISED) or ends it (CLEARED)."""

    RAISED = 0
    CLEARED = 1


@dataclass(frozen=True, slots=True)
class Fix:
    """One GNSS position epoch with a valid 2D or 3D fix.

    Attributes:
        time_ms: UTC observation time of the epoch, epoch milliseconds.
        lat: WGS-84 latitude in degrees.
        lon: WGS-84 longitude in degrees.
        alt_m: altitude above mean sea level in metres, if known.
        speed_mps: speed over ground in metres per second, if known.
        course_deg: course over ground in degrees from true north, if known.
        mode: 2D or 3D (a no-fix epoch is a :class:`NoFix`, never a Fix at 0,0).
        hdop: horizontal dilution of precision, if known.
        sats_used: satellites used in the solution, if known.
        mean_snr: mean C/N0 of tracked satellites in dB-Hz, if known.
    """

    time_ms: int
    lat: float
    lon: float
    alt_m: float | None = None
    speed_mps: float | None = None
    course_deg: float | None = None
    mode: FixMode = FixMode.THREE_D
    hdop: float | None = None
    sats_used: int | None = None
    mean_snr: float | None = None

    # radon grade D by design: one guard per field, each naming the field it refuses, behind
    # a single-expression fast path (this runs for every fix decoded); splitting it would
    # cost a call per field on the hot path.
    def __post_init__(self) -> None:
        # Fast path: one expression accepts the common, valid fix (a decoded minute holds
        # hundreds). NaN fails every comparison, bool fails the exact type tests, so
        # anything doubtful falls through to the checks below, which name the culprit.
        t, lat, lon, sats = self.time_ms, self.lat, self.lon, self.sats_used
        if (
            type(t) is int
            and MIN_TIME_MS <= t <= MAX_TIME_MS
            and type(lat) is float
            and -90.0 <= lat <= 90.0
            and type(lon) is float
            and -180.0 <= lon <= 180.0
            and (self.alt_m is None or (type(self.alt_m) is float and -1000.0 <= self.alt_m <= 100_000.0))
            and (self.speed_mps is None or (type(self.speed_mps) is float and 0.0 <= self.speed_mps <= 1000.0))
            and (self.course_deg is None or (type(self.course_deg) is float and 0.0 <= self.course_deg <= 360.0))
            and (self.mode is FixMode.THREE_D or self.mode is FixMode.TWO_D)
            and (self.hdop is None or (type(self.hdop) is float and 0.0 <= self.hdop <= 100.0))
            and (sats is None or (type(sats) is int and 0 <= sats <= 255))
            and (self.mean_snr is None or (type(self.mean_snr) is float and 0.0 <= self.mean_snr <= 99.0))
        ):
            return
        self._check_fields()

    def _check_fields(self) -> None:
        """Full validation with a message naming the field (the fast path's reference)."""
        _check_time("fix time_ms", self.time_ms)
        _check_float("lat", self.lat, -90.0, 90.0, optional=False)
        _check_float("lon", self.lon, -180.0, 180.0, optional=False)
        _check_float("alt_m", self.alt_m, -1000.0, 100_000.0, optional=True)
        _check_float("speed_mps", self.speed_mps, 0.0, 1000.0, optional=True)
        _check_float("course_deg", self.course_deg, 0.0, 360.0, optional=True)
        if not isinstance(self.mode, FixMode) or self.mode is FixMode.NONE:
            raise InvalidRecord(f"fix mode must be FixMode.TWO_D or THREE_D, got {self.mode!r}")
        _check_float("hdop", self.hdop, 0.0, 100.0, optional=True)
        _check_int("sats_used", self.sats_used, 0, 255, optional=True)
        _check_float("mean_snr", self.mean_snr, 0.0, 99.0, optional=True)


@dataclass(frozen=True, slots=True)
class NoFix:
    """A GNSS epoch without a position (void RMC, GGA quality 0, or all-zero fields).

    It is an input to the rules (GNSS lost / jammed), not part of a batch.
    """

    time_ms: int
    sats_in_view: int | None = None
    mean_snr: float | None = None

    def __post_init__(self) -> None:
        _check_time("no-fix time_ms", self.time_ms)
        _check_int("sats_in_view", self.sats_in_view, 0, 255, optional=True)
        _check_float("mean_snr", self.mean_snr, 0.0, 99.0, optional=True)


@dataclass(frozen=True, slots=True)
class SignalSample:
    """One value of a canonical vehicle signal (a COVESA VSS path).

    Attributes:
        name: canonical name such as ``Vehicle.Cabin.Door.Row1.DriverSide.IsOpen``.
        time_ms: observation time, epoch milliseconds UTC.
        value: bool, int, finite float or short text.
    """

    name: str
    time_ms: int
    value: SampleValue

    def __post_init__(self) -> None:
        name, t, value = self.name, self.time_ms, self.value
        # Fast path for the common case (same checks, exact types, no messages to build).
        if (
            type(t) is int
            and MIN_TIME_MS <= t <= MAX_TIME_MS
            and type(name) is str
            and _is_signal_name(name)
            and (
                (type(value) is float and math.isfinite(value))
                or type(value) is bool
                or (type(value) is int and -(2**63) <= value < 2**63)
                or (type(value) is str and len(value) <= 256)
            )
        ):
            return
        self._check_fields()

    def _check_fields(self) -> None:
        """Full validation with a message naming the field (the fast path's reference)."""
        if not isinstance(self.name, str) or not _is_signal_name(self.name):
            raise InvalidRecord(f"signal name {self.name!r} is not a dotted VSS-style path")
        _check_time("sample time_ms", self.time_ms)
        value = self.value
        if isinstance(value, float) and not math.isfinite(value):
            raise InvalidRecord(f"signal {self.name} value {value!r} is not finite")
        if isinstance(value, int) and not isinstance(value, bool) and not -(2**63) <= value < 2**63:
            raise InvalidRecord(f"signal {self.name} value {value} does not fit in 64 bits")
        if isinstance(value, str):
            _check_text(f"signal {self.name} value", value, 256)
        elif not isinstance(value, (bool, int, float)):
            raise InvalidRecord(f"signal {self.name} value {value!r} must be bool, int, float or str")


def _check_evidence(value: object, depth: int, where: str, budget: list[int]) -> None:
    budget[0] -= 1
    if budget[0] < 0:
        raise InvalidRecord(f"{where}: evidence has more than {MAX_EVIDENCE_ITEMS} items")
    if value is None or isinstance(value, (bool, str)):
        if isinstance(value, str):
            _check_text(where, value)
        return
    if isinstance(value, int):
        if not -(2**63) <= value < 2**64:
            raise InvalidRecord(f"{where}: integer {value} does not fit in 64 bits")
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidRecord(f"{where}: {value!r} is not finite")
        return
    if depth >= MAX_EVIDENCE_DEPTH:
        raise InvalidRecord(f"{where}: evidence nested deeper than {MAX_EVIDENCE_DEPTH}")
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _check_evidence(item, depth + 1, f"{where}[{i}]", budget)
        return
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str) or not 0 < len(key) <= 64:
                raise InvalidRecord(f"{where}: evidence key {key!r} must be text of 1..64 characters")
            _check_evidence(item, depth + 1, f"{where}.{key}", budget)
        return
    raise InvalidRecord(f"{where}: {type(value).__name__} is not allowed in evidence")


@dataclass(frozen=True, slots=True)
class Alert:
    """An anomaly noticed on the vehicle: the start (RAISED) or end (CLEARED) of an episode.

    Attributes:
        rule: rule name, e.g. ``stationary_near_market``.
        severity: :class:`Severity`.
        time_ms: observation time the rule fired at, epoch milliseconds UTC.
        episode: identifier shared by the RAISED and CLEARED records of one episode.
        state: :class:`AlertState`.
        evidence: JSON-like map (text keys; null, bool, int, finite float, text, lists, maps;
            depth at most 4) explaining why the rule fired.
    """

    rule: str
    severity: Severity
    time_ms: int
    episode: str
    state: AlertState = AlertState.RAISED
    evidence: Evidence = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.rule, str) or not RULE_NAME_RE.fullmatch(self.rule):
            raise InvalidRecord(f"rule name {self.rule!r} must match [a-z][a-z0-9_]{{0,63}}")
        if not isinstance(self.severity, Severity):
            raise InvalidRecord(f"severity {self.severity!r} must be a Severity")
        if not isinstance(self.state, AlertState):
            raise InvalidRecord(f"state {self.state!r} must be an AlertState")
        _check_time("alert time_ms", self.time_ms)
        if not isinstance(self.episode, str) or not 0 < len(self.episode) <= 128:
            raise InvalidRecord(f"episode {self.episode!r} must be text of 1..128 characters")
        if not isinstance(self.evidence, Mapping):
            raise InvalidRecord("evidence must be a mapping")
        _check_evidence(self.evidence, 0, f"alert {self.rule} evidence", [MAX_EVIDENCE_ITEMS])


@dataclass(frozen=True, slots=True)
class DailyStats:
    """Driving statistics of one local calendar day (a record, not an alert).

    Attributes:
        day: local date ``YYYY-MM-DD`` in the agent's configured zone.
        time_ms: observation time of the last data folded into these figures.
        distance_m: distance driven, metres.
        driving_s: seconds with the vehicle moving.
        harsh_accel: count of harsh accelerations.
        harsh_brake: count of harsh braking events.
        odometer_km: last odometer reading that day, if the CAN map provides one.
        final: True once the day is over and the figures will not change.
        energy_used_kwh: traction-battery energy drawn that day (EVs only, else None).
        energy_charged_kwh: energy put into the traction battery that day (EVs only).
        charging_sessions: charging sessions started that day (EVs only).
        soh_percent: last traction-battery state of health reported that day (EVs only).
    """

    day: str
    time_ms: int
    distance_m: float
    driving_s: float
    harsh_accel: int
    harsh_brake: int
    odometer_km: float | None = None
    final: bool = False
    energy_used_kwh: float | None = None
    energy_charged_kwh: float | None = None
    charging_sessions: int | None = None
    soh_percent: float | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.day, str) or not re.fullmatch(r"\d{4}-\d{2}-\d{2}", self.day):
            raise InvalidRecord(f"day {self.day!r} must be YYYY-MM-DD")
        _check_time("stats time_ms", self.time_ms)
        _check_float("distance_m", self.distance_m, 0.0, 1e8, optional=False)
        _check_float("driving_s", self.driving_s, 0.0, 86_400.0 * 2, optional=False)
        _check_int("harsh_accel", self.harsh_accel, 0, 2**31, optional=False)
        _check_int("harsh_brake", self.harsh_brake, 0, 2**31, optional=False)
        _check_float("odometer_km", self.odometer_km, 0.0, 1e8, optional=True)
        _check_float("energy_used_kwh", self.energy_used_kwh, 0.0, 1e5, optional=True)
        _check_float("energy_charged_kwh", self.energy_charged_kwh, 0.0, 1e5, optional=True)
        _check_int("charging_sessions", self.charging_sessions, 0, 10_000, optional=True)
        _check_float("soh_percent", self.soh_percent, 0.0, 100.0, optional=True)
        if not isinstance(self.final, bool):
            raise InvalidRecord("final must be a bool")


@dataclass(frozen=True, slots=True)
class Batch:
    """What one signed message carries: a slice of a device's observations.

    Attributes:
        device_id: the sending device, ``[A-Za-z0-9_-]{1,64}``.
        boot_id: 16 random bytes drawn at each agent start.
        seq: 64-bit sequence number, never repeated on this device (1 .. 2**64-1).
        created_ms: device clock when the batch was closed, epoch milliseconds.
        catalog: version of the canonical signal catalog the samples use.
        fixes: GNSS fixes in time order.
        samples: signal samples (any order).
        alerts: alert records.
        stats: daily driving statistics.
        counters: per-batch counters (e.g. ``evicted_batches``, ``dropped_samples``).
    """

    device_id: str
    boot_id: bytes
    seq: int
    created_ms: int
    catalog: int = 1
    fixes: tuple[Fix, ...] = ()
    samples: tuple[SignalSample, ...] = ()
    alerts: tuple[Alert, ...] = ()
    stats: tuple[DailyStats, ...] = ()
    counters: Mapping[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_device_id(self.device_id)
        if not isinstance(self.boot_id, bytes) or len(self.boot_id) != 16:
            raise InvalidRecord("boot_id must be 16 bytes")
        _check_int("seq", self.seq, 1, MAX_SEQ, optional=False)
        _check_time("created_ms", self.created_ms)
        _check_int("catalog", self.catalog, 0, 2**32 - 1, optional=False)
        for name, items, kind in (
            ("fixes", self.fixes, Fix),
            ("samples", self.samples, SignalSample),
            ("alerts", self.alerts, Alert),
            ("stats", self.stats, DailyStats),
        ):
            if not isinstance(items, tuple) or not all(map(isinstance, items, repeat(kind))):
                raise InvalidRecord(f"{name} must be a tuple of {kind.__name__}")
        for prev, cur in zip(self.fixes, self.fixes[1:], strict=False):
            if cur.time_ms < prev.time_ms:
                raise InvalidRecord(f"fixes must be in time order ({cur.time_ms} after {prev.time_ms})")
        if not isinstance(self.counters, Mapping):
            raise InvalidRecord("counters must be a mapping")
        for key, value in self.counters.items():
            if not isinstance(key, str) or not RULE_NAME_RE.fullmatch(key):
                raise InvalidRecord(f"counter name {key!r} must match [a-z][a-z0-9_]{{0,63}}")
            _check_int(f"counter {key}", value, 0, 2**63 - 1, optional=False)

    @property
    def highest_severity(self) -> Severity | None:
        """Most severe raised alert in the batch, or None."""
        raised = [a.severity for a in self.alerts if a.state is AlertState.RAISED]
        return max(raised) if raised else None


#: (column, lowest, highest) of the float columns of :class:`FixColumns`, as :class:`Fix` checks them
_FIX_FIELDS = ("time_ms", "lat", "lon", "alt_m", "speed_mps", "course_deg", "mode", "hdop", "sats_used", "mean_snr")
_FIX_FLOAT_RANGES = (
    ("lat", -90.0, 90.0),
    ("lon", -180.0, 180.0),
    ("alt_m", -1000.0, 100_000.0),
    ("speed_mps", 0.0, 1000.0),
    ("course_deg", 0.0, 360.0),
    ("hdop", 0.0, 100.0),
    ("mean_snr", 0.0, 99.0),
)
_fix_fields = attrgetter(*_FIX_FIELDS)
_OPTIONAL_FIX_COLUMNS = frozenset({"alt_m", "speed_mps", "course_deg", "hdop", "sats_used", "mean_snr"})


def _floats_within(column: tuple[float | None, ...], lo: float, hi: float, *, optional: bool) -> bool:
    """True when every value is a float in [lo, hi] (None allowed if ``optional``); C loops only."""
    values = [v for v in column if v is not None] if optional and None in column else column
    if not values:
        return True
    # exact types keep ints and bools to the reference path; a NaN or an infinity makes the sum
    # non-finite (in-range values cannot overflow it)
    if set(map(type, values)) != {float}:
        return False
    floats = cast("list[float]", values)
    return lo <= min(floats) and max(floats) <= hi and math.isfinite(sum(floats))


@dataclass(frozen=True, slots=True)
class FixColumns:
    """The fixes of one batch column by column: what the collector stores, without a
    :class:`Fix` object per epoch (one per second of driving).

    Holds the same values as a tuple of :class:`Fix` (one tuple per field, in time order) and
    validates them as :class:`Fix` and :class:`Batch` do: whole columns at a time (types,
    ranges, time order); a column that does not pass builds the :class:`Fix` records, so an
    impossible value raises the same :class:`~protocol.errors.InvalidRecord` naming the field.
    It is a sequence of :class:`Fix` (built on access).
    """

    time_ms: tuple[int, ...]
    lat: tuple[float, ...]
    lon: tuple[float, ...]
    alt_m: tuple[float | None, ...]
    speed_mps: tuple[float | None, ...]
    course_deg: tuple[float | None, ...]
    mode: tuple[FixMode, ...]
    hdop: tuple[float | None, ...]
    sats_used: tuple[int | None, ...]
    mean_snr: tuple[float | None, ...]

    def __post_init__(self) -> None:
        columns = _fix_fields(self)
        if set(map(type, columns)) != {tuple} or len(set(map(len, columns))) != 1:
            raise InvalidRecord("fix columns must be tuples of one length")
        if not self._columns_valid():
            self.records()  # raises InvalidRecord naming the field (or finds them valid after all)
            times = self.time_ms
            for prev, cur in pairwise(times):
                if cur < prev:
                    raise InvalidRecord(f"fixes must be in time order ({cur} after {prev})")

    def _columns_valid(self) -> bool:
        """The checks of :class:`Fix` and :class:`Batch`, a column at a time (loops in C)."""
        times, sats, modes = self.time_ms, self.sats_used, self.mode
        if not times:
            return True
        if not (
            set(map(type, times)) == {int}
            and times[0] >= MIN_TIME_MS
            and times[-1] <= MAX_TIME_MS
            and all(map(int.__le__, times, times[1:]))
        ):
            return False
        for name, lo, hi in _FIX_FLOAT_RANGES:
            if not _floats_within(getattr(self, name), lo, hi, optional=name in _OPTIONAL_FIX_COLUMNS):
                return False
        if set(map(type, modes)) != {FixMode} or FixMode.NONE in modes:
            return False
        known = cast("list[int]", [s for s in sats if s is not None]) if None in sats else sats
        return not known or (set(map(type, known)) == {int} and min(known) >= 0 and max(known) <= 255)  # type: ignore[type-var, operator]

    @classmethod
    def of(cls, fixes: tuple[Fix, ...]) -> FixColumns:
        """The columns of ``fixes``."""
        return cls(*(tuple(getattr(f, name) for f in fixes) for name in _FIX_FIELDS))

    def records(self) -> tuple[Fix, ...]:
        """The fixes as :class:`Fix` records."""
        return tuple(map(Fix, *(getattr(self, name) for name in _FIX_FIELDS)))

    def __len__(self) -> int:
        return len(self.time_ms)

    def __iter__(self) -> Iterator[Fix]:
        return iter(self.records())

    def __getitem__(self, index: int) -> Fix:
        return Fix(*(getattr(self, name)[index] for name in _FIX_FIELDS))


@dataclass(frozen=True, slots=True)
class ColumnarBatch:
    """A :class:`Batch` whose fixes are :class:`FixColumns` (what ``protocol.open_batch_columns``
    returns): the same fields and checks, without the per-fix objects.

    Attributes:
        header: the batch without its fixes (``header.fixes`` is empty).
        fixes: the fixes, column by column.
    """

    header: Batch
    fixes: FixColumns

    def __post_init__(self) -> None:
        if not isinstance(self.header, Batch) or self.header.fixes:
            raise InvalidRecord("a ColumnarBatch header is a Batch without fixes")
        if not isinstance(self.fixes, FixColumns):
            raise InvalidRecord("ColumnarBatch fixes must be FixColumns")

    device_id = property(lambda self: self.header.device_id, doc="See :class:`Batch`.")
    boot_id = property(lambda self: self.header.boot_id, doc="See :class:`Batch`.")
    seq = property(lambda self: self.header.seq, doc="See :class:`Batch`.")
    created_ms = property(lambda self: self.header.created_ms, doc="See :class:`Batch`.")
    catalog = property(lambda self: self.header.catalog, doc="See :class:`Batch`.")
    samples = property(lambda self: self.header.samples, doc="See :class:`Batch`.")
    alerts = property(lambda self: self.header.alerts, doc="See :class:`Batch`.")
    stats = property(lambda self: self.header.stats, doc="See :class:`Batch`.")
    counters = property(lambda self: self.header.counters, doc="See :class:`Batch`.")

    def to_batch(self) -> Batch:
        """The same batch with :class:`Fix` records."""
        return replace(self.header, fixes=self.fixes.records())
