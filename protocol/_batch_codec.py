"""Batch payload: a CBOR map with small integer keys (documented in docs/protocol.md).

Fixes travel column-wise as scaled integers; time, latitude and longitude columns hold the
first value absolute and the rest as deltas, so a parked or slowly moving car costs one or
two bytes per value.

The scaling and (de)differencing run in plain Python for the columns an agent sends (a
one-minute batch is a few hundred values), so the edge never needs numpy; numpy is imported
lazily, when installed, for columns of :data:`NUMPY_MIN_VALUES` values or more (collector
ingest, long replays), where it is several times faster. Both paths give the same integers,
hence byte-identical payloads (IEEE-754 products and quotients, round half to even).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from itertools import accumulate, pairwise, repeat, starmap
from operator import truediv
from types import ModuleType
from typing import Any

from ._strict_cbor import decode_strict, encode_deterministic
from .errors import (
    ColumnLengthMismatch,
    InvalidRecord,
    InvalidValue,
    LocalProtocolError,
    SchemaError,
    UnsupportedVersion,
)
from .records import (
    Alert,
    AlertState,
    Batch,
    ColumnarBatch,
    DailyStats,
    Fix,
    FixColumns,
    FixMode,
    Severity,
    SignalSample,
)

__all__ = ["LIMITS", "SCHEMA_VERSION", "decode_batch", "decode_batch_columns", "encode_batch"]

SCHEMA_VERSION = 1


class LIMITS:
    """Shape limits enforced on decode (and on encode, so we never send what we refuse)."""

    MAX_PAYLOAD_BYTES = 1 << 20
    MAX_DEPTH = 10
    MAX_FIXES = 36_000
    MAX_SAMPLES = 100_000
    MAX_SIGNAL_NAMES = 1024
    MAX_ALERTS = 256
    MAX_STATS = 62
    MAX_COUNTERS = 64
    MAX_STATE_COUNTERS = 256


# Top-level keys.
K_VERSION, K_DEVICE, K_BOOT, K_SEQ, K_CREATED, K_CATALOG = 0, 1, 2, 3, 4, 5
K_FIXES, K_SAMPLES, K_ALERTS, K_STATS, K_COUNTERS = 6, 7, 8, 9, 10
# Fix columns: (key, attribute, scale, delta-coded, optional)
FIX_COLUMNS: tuple[tuple[int, str, float, bool, bool], ...] = (
    (0, "time_ms", 1.0, True, False),
    (1, "lat", 1e7, True, False),
    (2, "lon", 1e7, True, False),
    (3, "alt_m", 10.0, False, True),
    (4, "speed_mps", 100.0, False, True),
    (5, "course_deg", 100.0, False, True),
    (6, "mode", 1.0, False, False),
    (7, "hdop", 100.0, False, True),
    (8, "sats_used", 1.0, False, True),
    (9, "mean_snr", 10.0, False, True),
)
_REQUIRED_FIX_KEYS = {k for k, _, _, _, opt in FIX_COLUMNS if not opt}
# Sample columns, alert and stats map keys.
S_NAMES, S_INDEX, S_TIME, S_VALUE = 0, 1, 2, 3
A_RULE, A_SEVERITY, A_TIME, A_EPISODE, A_STATE, A_EVIDENCE = 0, 1, 2, 3, 4, 5
D_DAY, D_TIME, D_DISTANCE, D_DRIVING, D_ACCEL, D_BRAKE, D_ODOMETER, D_FINAL = 0, 1, 2, 3, 4, 5, 6, 7
#: optional EV figures (absent for cars without a traction battery, so older payloads decode as before)
D_ENERGY_USED, D_ENERGY_CHARGED, D_CHARGING_SESSIONS, D_SOH = 8, 9, 10, 11
_STATS_OPTIONAL_FLOATS = (
    (D_ENERGY_USED, "energy_used_kwh"),
    (D_ENERGY_CHARGED, "energy_charged_kwh"),
    (D_SOH, "soh_percent"),
)


# ---------------------------------------------------------------- column arithmetic

#: Columns at least this long use numpy when it is installed; shorter ones (every batch an
#: agent sends) use plain Python and never import it.
NUMPY_MIN_VALUES = 2048


@functools.cache
def _numpy() -> ModuleType | None:
    """numpy, imported on first need, or None when it is not installed (T-BOX)."""
    try:
        import numpy
    except ImportError:
        return None
    return numpy


def _numpy_for(count: int) -> ModuleType | None:
    """numpy for a column of ``count`` values, or None: too short to pay off, or not installed."""
    return _numpy() if count >= NUMPY_MIN_VALUES else None


def _scaled(raw: Sequence[float], scale: float) -> list[int]:
    """``round(v * scale)`` for each value (half to even, like ``numpy.rint``)."""
    np = _numpy_for(len(raw))
    if np is not None:
        return np.rint(np.asarray(raw, dtype=np.float64) * scale).astype(np.int64).tolist()  # type: ignore[no-any-return]
    return [round(float(v) * scale) for v in raw]


def _delta(values: list[int]) -> list[int]:
    """First value absolute, then differences."""
    np = _numpy_for(len(values))
    if np is not None:
        arr = np.asarray(values, dtype=np.int64)
        out = np.empty_like(arr)
        out[0] = arr[0]
        np.subtract(arr[1:], arr[:-1], out=out[1:])
        return out.tolist()  # type: ignore[no-any-return]
    return values[:1] + [b - a for a, b in pairwise(values)]


def _undelta(values: list[int], where: str) -> list[int]:
    """Running sums of a delta-coded column, each entry bounded first (no int64 overflow)."""
    if not values:
        return []
    lo, hi = min(values), max(values)
    if lo < -(2**63) or hi >= 2**63:
        raise InvalidValue(f"{where} holds an integer outside 64 bits")
    if lo < -MAX_DELTA_ENTRY or hi > MAX_DELTA_ENTRY:
        raise InvalidValue(f"{where} holds a value outside +-2**47 (the delta-coding limit)")
    np = _numpy_for(len(values))
    if np is not None:
        return np.cumsum(np.asarray(values, dtype=np.int64)).tolist()  # type: ignore[no-any-return]
    return list(accumulate(values))


def _unscaled(values: list[int], scale: float) -> list[float]:
    """``v / scale`` for each integer (rounded to the nearest double, then IEEE division)."""
    np = _numpy_for(len(values))
    if np is not None:
        return (np.asarray(values, dtype=np.float64) / scale).tolist()  # type: ignore[no-any-return]
    return list(map(truediv, values, repeat(scale)))  # v / scale, the loop in C


# ---------------------------------------------------------------- encoding


def _encode_fixes(fixes: Sequence[Fix]) -> dict[int, list[Any]]:
    columns: dict[int, list[Any]] = {}
    for key, attr, scale, delta, optional in FIX_COLUMNS:
        raw = [getattr(f, attr) for f in fixes]
        if optional and all(v is None for v in raw):
            continue
        if delta:
            columns[key] = _delta(_scaled(raw, scale))
        elif any(v is None for v in raw):
            columns[key] = [None if v is None else round(float(v) * scale) for v in raw]
        else:
            columns[key] = _scaled(raw, scale)
    return columns


def _encode_samples(samples: Sequence[SignalSample]) -> dict[int, list[Any]]:
    names: dict[str, int] = {}
    index = [names.setdefault(s.name, len(names)) for s in samples]
    times = _delta([s.time_ms for s in samples])
    return {S_NAMES: list(names), S_INDEX: index, S_TIME: times, S_VALUE: [s.value for s in samples]}


def _encode_alert(alert: Alert) -> dict[int, Any]:
    return {
        A_RULE: alert.rule,
        A_SEVERITY: int(alert.severity),
        A_TIME: alert.time_ms,
        A_EPISODE: alert.episode,
        A_STATE: int(alert.state),
        A_EVIDENCE: _plain(alert.evidence),
    }


def _plain(value: Any) -> Any:
    """Evidence as plain CBOR-able containers (tuples become arrays)."""
    if isinstance(value, dict) or hasattr(value, "items"):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _encode_stats(stats: DailyStats) -> dict[int, Any]:
    out: dict[int, Any] = {
        D_DAY: stats.day,
        D_TIME: stats.time_ms,
        D_DISTANCE: float(stats.distance_m),
        D_DRIVING: float(stats.driving_s),
        D_ACCEL: stats.harsh_accel,
        D_BRAKE: stats.harsh_brake,
        D_FINAL: stats.final,
    }
    if stats.odometer_km is not None:
        out[D_ODOMETER] = float(stats.odometer_km)
    for key, name in _STATS_OPTIONAL_FLOATS:
        value = getattr(stats, name)
        if value is not None:
            out[key] = float(value)
    if stats.charging_sessions is not None:
        out[D_CHARGING_SESSIONS] = stats.charging_sessions
    return out


def encode_batch(batch: Batch) -> bytes:
    """Encode a batch as the CBOR payload that :func:`protocol.seal_batch` signs."""
    if not isinstance(batch, Batch):
        raise LocalProtocolError(f"encode_batch needs a Batch, got {type(batch).__name__}")
    for name, items, limit in (
        ("fixes", batch.fixes, LIMITS.MAX_FIXES),
        ("samples", batch.samples, LIMITS.MAX_SAMPLES),
        ("alerts", batch.alerts, LIMITS.MAX_ALERTS),
        ("stats", batch.stats, LIMITS.MAX_STATS),
        ("counters", batch.counters, LIMITS.MAX_COUNTERS),
    ):
        if len(items) > limit:
            raise LocalProtocolError(f"batch has {len(items)} {name}, over the limit of {limit}")
    payload: dict[int, Any] = {
        K_VERSION: SCHEMA_VERSION,
        K_DEVICE: batch.device_id,
        K_BOOT: batch.boot_id,
        K_SEQ: batch.seq,
        K_CREATED: batch.created_ms,
        K_CATALOG: batch.catalog,
    }
    if batch.fixes:
        payload[K_FIXES] = _encode_fixes(batch.fixes)
    if batch.samples:
        payload[K_SAMPLES] = _encode_samples(batch.samples)
    if batch.alerts:
        payload[K_ALERTS] = [_encode_alert(a) for a in batch.alerts]
    if batch.stats:
        payload[K_STATS] = [_encode_stats(s) for s in batch.stats]
    if batch.counters:
        payload[K_COUNTERS] = dict(batch.counters)
    data = encode_deterministic(payload)
    if len(data) > LIMITS.MAX_PAYLOAD_BYTES:
        raise LocalProtocolError(f"encoded batch is {len(data)} bytes, over {LIMITS.MAX_PAYLOAD_BYTES}")
    return data


# ---------------------------------------------------------------- decoding


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _expect(cond: bool, message: str) -> None:
    if not cond:
        raise SchemaError(message)


def _map(value: object, where: str, allowed: set[int], required: set[int]) -> dict[int, Any]:
    _expect(isinstance(value, dict), f"{where} must be a map")
    assert isinstance(value, dict)
    keys = set(value)
    _expect(all(_is_int(k) for k in keys), f"{where} keys must be integers")
    unknown = keys - allowed
    _expect(not unknown, f"{where} has unknown keys {sorted(unknown)[:5]}")
    missing = required - keys
    _expect(not missing, f"{where} lacks required keys {sorted(missing)}")
    return value


_INT_ONLY = frozenset({int})
_INT_OR_NULL = frozenset({int, type(None)})
#: Bound on every entry of a delta-coded column: 36,000 such values cannot overflow int64
#: when summed (36,000 * 2**47 < 2**63), and real data stays far below it.
MAX_DELTA_ENTRY = 2**47
_FIX_MODES = {int(FixMode.TWO_D): FixMode.TWO_D, int(FixMode.THREE_D): FixMode.THREE_D}


def _int_list(value: object, where: str, n: int | None, *, nullable: bool = False) -> list[Any]:
    _expect(type(value) is list, f"{where} must be an array")
    assert isinstance(value, list)
    if n is not None and len(value) != n:
        raise ColumnLengthMismatch(f"{where} has {len(value)} items, expected {n} like the first column")
    # set(map(type, ...)) runs in C; exact types also keep bools out of integer columns.
    _expect(set(map(type, value)) <= (_INT_OR_NULL if nullable else _INT_ONLY), f"{where} must hold only integers")
    return value


def _fix_columns(value: object) -> list[list[Any]]:
    """The decoded fix columns (in :class:`Fix` field order), checked for shape, not yet for ranges."""
    cols = _map(value, "fixes", {c[0] for c in FIX_COLUMNS}, _REQUIRED_FIX_KEYS)
    n = len(cols[0]) if type(cols[0]) is list else -1
    _expect(0 < n <= LIMITS.MAX_FIXES, f"fixes count {n} is outside 1..{LIMITS.MAX_FIXES}")
    columns: list[list[Any]] = []
    for key, attr, scale, delta, optional in FIX_COLUMNS:
        if key not in cols:
            columns.append([None] * n)
            continue
        where = f"fix column {attr}"
        raw = _int_list(cols[key], where, n, nullable=optional and not delta)
        if delta:
            if attr == "time_ms":
                if n > 1 and min(raw[1:]) < 0:
                    raise InvalidValue("fix times must not go backwards (negative time delta)")
                columns.append(_undelta(raw, where))
            else:
                columns.append(_unscaled(_undelta(raw, where), scale))
        elif attr == "mode":
            try:
                columns.append(list(map(_FIX_MODES.__getitem__, raw)))
            except KeyError as exc:
                raise InvalidValue(f"fix mode {exc.args[0]!r:.20} is not 2 (2D) or 3 (3D)") from None
        elif attr == "sats_used":
            columns.append(raw)
        elif None in raw:
            columns.append([None if v is None else v / scale for v in raw])
        else:
            columns.append(_unscaled(raw, scale))
    return columns


def _decode_fixes(value: object) -> tuple[Fix, ...]:
    columns = _fix_columns(value)
    # FIX_COLUMNS lists the Fix fields in declaration order, so rows go in positionally;
    # Fix.__post_init__ validates every row (ranges, finiteness).
    try:
        return tuple(starmap(Fix, zip(*columns, strict=True)))
    except InvalidRecord as exc:
        raise InvalidValue(f"fix: {exc}") from exc


def _decode_fix_columns(value: object) -> FixColumns:
    try:
        return FixColumns(*map(tuple, _fix_columns(value)))  # validated column by column
    except InvalidRecord as exc:
        raise InvalidValue(f"fix: {exc}") from exc


_NO_FIXES = FixColumns((), (), (), (), (), (), (), (), (), ())


def _decode_samples(value: object) -> tuple[SignalSample, ...]:
    cols = _map(value, "samples", {S_NAMES, S_INDEX, S_TIME, S_VALUE}, {S_NAMES, S_INDEX, S_TIME, S_VALUE})
    names = cols[S_NAMES]
    _expect(
        type(names) is list and 0 < len(names) <= LIMITS.MAX_SIGNAL_NAMES,
        f"sample names must be an array of 1..{LIMITS.MAX_SIGNAL_NAMES} texts",
    )
    _expect(set(map(type, names)) == {str}, "sample names must be text")
    _expect(len(set(names)) == len(names), "sample names must be unique")
    index = cols[S_INDEX]
    n = len(index) if type(index) is list else -1
    _expect(0 < n <= LIMITS.MAX_SAMPLES, f"sample count {n} is outside 1..{LIMITS.MAX_SAMPLES}")
    _int_list(index, "sample name index", n)
    _expect(min(index) >= 0 and max(index) < len(names), "sample name index out of range")
    times = _undelta(_int_list(cols[S_TIME], "sample times", n), "sample times")
    values = cols[S_VALUE]
    _expect(type(values) is list, "sample values must be an array")
    if len(values) != n:
        raise ColumnLengthMismatch(f"sample values has {len(values)} items, expected {n} like the index column")
    _expect(set(map(type, values)) <= _SAMPLE_VALUE_TYPES, "sample values must be bool, int, float or text")
    try:
        return tuple(map(SignalSample, map(names.__getitem__, index), times, values))
    except InvalidRecord as exc:
        raise InvalidValue(f"sample: {exc}") from exc


_SAMPLE_VALUE_TYPES = frozenset({bool, int, float, str})


def _enum(kind: Callable[[int], Any], value: object, where: str) -> Any:
    _expect(_is_int(value), f"{where} must be an integer")
    try:
        return kind(value)  # type: ignore[arg-type]
    except ValueError as exc:
        raise InvalidValue(f"{where} {value!r} is not a known value") from exc


def _decode_alert(value: object, i: int) -> Alert:
    all_keys = {A_RULE, A_SEVERITY, A_TIME, A_EPISODE, A_STATE, A_EVIDENCE}
    m = _map(value, f"alert[{i}]", all_keys, all_keys)
    _expect(isinstance(m[A_EVIDENCE], dict), f"alert[{i}] evidence must be a map")
    try:
        return Alert(
            rule=m[A_RULE],
            severity=_enum(Severity, m[A_SEVERITY], f"alert[{i}] severity"),
            time_ms=m[A_TIME],
            episode=m[A_EPISODE],
            state=_enum(AlertState, m[A_STATE], f"alert[{i}] state"),
            evidence=m[A_EVIDENCE],
        )
    except InvalidRecord as exc:
        raise InvalidValue(f"alert[{i}]: {exc}") from exc


def _decode_stats(value: object, i: int) -> DailyStats:
    required = {D_DAY, D_TIME, D_DISTANCE, D_DRIVING, D_ACCEL, D_BRAKE, D_FINAL}
    optional = {D_ODOMETER, D_ENERGY_USED, D_ENERGY_CHARGED, D_CHARGING_SESSIONS, D_SOH}
    m = _map(value, f"stats[{i}]", required | optional, required)
    try:
        return DailyStats(
            day=m[D_DAY],
            time_ms=m[D_TIME],
            distance_m=m[D_DISTANCE],
            driving_s=m[D_DRIVING],
            harsh_accel=m[D_ACCEL],
            harsh_brake=m[D_BRAKE],
            odometer_km=m.get(D_ODOMETER),
            final=m[D_FINAL],
            energy_used_kwh=m.get(D_ENERGY_USED),
            energy_charged_kwh=m.get(D_ENERGY_CHARGED),
            charging_sessions=m.get(D_CHARGING_SESSIONS),
            soh_percent=m.get(D_SOH),
        )
    except InvalidRecord as exc:
        raise InvalidValue(f"stats[{i}]: {exc}") from exc


def _list(value: object, where: str, limit: int) -> list[Any]:
    _expect(isinstance(value, list), f"{where} must be an array")
    assert isinstance(value, list)
    _expect(len(value) <= limit, f"{where} has {len(value)} items, over the limit of {limit}")
    return value


def decode_batch(data: bytes) -> Batch:
    """Strictly decode a batch payload (already verified) into a :class:`Batch`."""
    batch, _ = _decode(data, columnar=False)
    return batch


def decode_batch_columns(data: bytes) -> ColumnarBatch:
    """:func:`decode_batch` with the fixes column by column (:class:`~protocol.records.FixColumns`):
    the same checks and errors, without one :class:`Fix` object per epoch (the collector's path)."""
    header, columns = _decode(data, columnar=True)
    return ColumnarBatch(header, columns or _NO_FIXES)


def _decode(data: bytes, *, columnar: bool) -> tuple[Batch, FixColumns | None]:
    """The batch (without its fixes when ``columnar``) and, when ``columnar``, its fix columns."""
    raw = decode_strict(data, what="batch payload", max_size=LIMITS.MAX_PAYLOAD_BYTES, max_depth=LIMITS.MAX_DEPTH)
    top = _map(
        raw,
        "batch payload",
        set(range(0, 11)),
        {K_VERSION, K_DEVICE, K_BOOT, K_SEQ, K_CREATED, K_CATALOG},
    )
    if top[K_VERSION] != SCHEMA_VERSION or not _is_int(top[K_VERSION]):
        raise UnsupportedVersion(f"batch schema version {top[K_VERSION]!r:.20} is not {SCHEMA_VERSION}")
    counters = top.get(K_COUNTERS, {})
    _expect(isinstance(counters, dict) and len(counters) <= LIMITS.MAX_COUNTERS, "counters must be a small map")
    fixes: tuple[Fix, ...] = ()
    columns = None
    if K_FIXES in top and columnar:
        columns = _decode_fix_columns(top[K_FIXES])
    elif K_FIXES in top:
        fixes = _decode_fixes(top[K_FIXES])
    samples = _decode_samples(top[K_SAMPLES]) if K_SAMPLES in top else ()
    alerts = tuple(_decode_alert(a, i) for i, a in enumerate(_list(top.get(K_ALERTS, []), "alerts", LIMITS.MAX_ALERTS)))
    stats = tuple(_decode_stats(s, i) for i, s in enumerate(_list(top.get(K_STATS, []), "stats", LIMITS.MAX_STATS)))
    for name in (K_DEVICE, K_SEQ, K_CREATED, K_CATALOG):
        if name != K_DEVICE:
            _expect(_is_int(top[name]), f"batch key {name} must be an integer")
    try:
        batch = Batch(
            device_id=top[K_DEVICE],
            boot_id=top[K_BOOT],
            seq=top[K_SEQ],
            created_ms=top[K_CREATED],
            catalog=top[K_CATALOG],
            fixes=fixes,
            samples=samples,
            alerts=alerts,
            stats=stats,
            counters=counters,
        )
    except InvalidRecord as exc:
        raise InvalidValue(f"batch: {exc}") from exc
    return batch, columns
