"""The signal map: which DBC signals become which canonical (COVESA VSS) samples, and how.

Layered like cantools' loaders: :func:`load_signal_map` reads a file and hands the text to
:func:`parse_signal_map`, which builds validated :class:`SignalMapEntry` records. This
module only checks that a map is well formed on its own; whether its messages and signals
exist in the DBC files is checked when a :class:`~edge.canbus.SignalDecoder` binds the map
to them. The file format is documented at the top of ``edge/data/generic_car_map.toml``
and in ``docs/signals.md``.
"""

from __future__ import annotations

import math
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from types import MappingProxyType

from protocol import SignalSample
from protocol.errors import InvalidRecord
from protocol.records import MIN_TIME_MS, SampleValue

from .errors import SignalMapError

__all__ = [
    "MAX_INTERVAL_MS",
    "MAX_MAP_BYTES",
    "MAX_MAP_ENTRIES",
    "SignalMap",
    "SignalMapEntry",
    "SignalType",
    "load_signal_map",
    "parse_signal_map",
]

#: A map file larger than this is refused before parsing.
MAX_MAP_BYTES = 1024 * 1024
#: At most this many ``[[signal]]`` entries.
MAX_MAP_ENTRIES = 4096
#: ``min_interval_ms`` and ``heartbeat_ms`` are capped at one day.
MAX_INTERVAL_MS = 86_400_000
#: A ``values`` table may hold at most this many entries; text values at most this long.
MAX_VALUES = 1024
MAX_TEXT_VALUE = 256

_INT_KEY_RE = re.compile(r"-?[0-9]{1,20}")
_ENTRY_KEYS = frozenset(
    {
        "name",
        "dbc_message",
        "dbc_signal",
        "type",
        "values",
        "scale",
        "offset",
        "on_change",
        "min_interval_ms",
        "heartbeat_ms",
        "deadband",
    }
)


class SignalType(StrEnum):
    """The Python type of a canonical sample's value."""

    BOOL = "bool"
    INT = "int"
    FLOAT = "float"
    STRING = "string"


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_value_type(kind: SignalType, key: str, value: object) -> SampleValue:
    """Return ``value`` as the sample type ``kind`` or raise SignalMapError."""
    if kind is SignalType.BOOL and isinstance(value, bool):
        return value
    if kind is SignalType.INT and isinstance(value, int) and not isinstance(value, bool):
        return value
    if kind is SignalType.FLOAT and _is_number(value):
        assert isinstance(value, (int, float))
        if math.isfinite(value):
            return float(value)
    if kind is SignalType.STRING and isinstance(value, str) and 0 < len(value) <= MAX_TEXT_VALUE:
        return value
    raise SignalMapError(f"values[{key!r}] = {value!r} is not a valid {kind.value} value")


@dataclass(frozen=True, slots=True)
class SignalMapEntry:
    """One ``[[signal]]`` entry: a DBC signal turned into one canonical sample stream.

    Attributes:
        name: canonical name, a dotted VSS path such as ``Vehicle.Speed``.
        dbc_message: DBC message (frame) name.
        dbc_signal: signal name inside that message.
        type: Python type of the emitted value.
        values: map from the DBC's enum name or raw integer (as text) to the emitted value;
            a decoded value with no entry is counted as ``unmapped_values`` and not emitted.
        scale: multiplies the DBC physical value (numeric types only).
        offset: then added (numeric types only).
        on_change: emit only when the value changes (by at least ``deadband``).
        min_interval_ms: at most one sample per this many milliseconds.
        heartbeat_ms: re-emit the current value at least this often while frames arrive
            (0 = never).
        deadband: numeric change smaller than this is not a change.
    """

    name: str
    dbc_message: str
    dbc_signal: str
    type: SignalType = SignalType.FLOAT
    values: Mapping[str, SampleValue] | None = None
    scale: float = 1.0
    offset: float = 0.0
    on_change: bool = True
    min_interval_ms: int = 0
    heartbeat_ms: int = 0
    deadband: float = 0.0

    # radon grade E by design: a validator with one guard per field and per signal type, each
    # raising a message that names the map entry and the rule it broke.
    def __post_init__(self) -> None:
        try:
            SignalSample(name=self.name, time_ms=MIN_TIME_MS, value=False)
        except InvalidRecord as exc:
            raise SignalMapError(f"name {self.name!r} is not a dotted VSS path (e.g. Vehicle.Speed)") from exc
        for key in ("dbc_message", "dbc_signal"):
            text = getattr(self, key)
            if not isinstance(text, str) or not 0 < len(text) <= 128:
                raise SignalMapError(f"{key} must be a non-empty string of at most 128 characters, got {text!r}")
        if not isinstance(self.type, SignalType):
            raise SignalMapError(f"type must be a SignalType, got {self.type!r}")
        numeric = self.type in (SignalType.INT, SignalType.FLOAT)
        for key in ("scale", "offset", "deadband"):
            value = getattr(self, key)
            if not _is_number(value) or not math.isfinite(value):
                raise SignalMapError(f"{key} must be a finite number, got {value!r}")
        if not numeric and (self.scale != 1.0 or self.offset != 0.0 or self.deadband != 0.0):
            raise SignalMapError(f"scale, offset and deadband apply to int/float signals, not {self.type.value}")
        if self.scale == 0:
            raise SignalMapError("scale must not be 0")
        if self.deadband < 0:
            raise SignalMapError(f"deadband must be >= 0, got {self.deadband!r}")
        if not isinstance(self.on_change, bool):
            raise SignalMapError(f"on_change must be true or false, got {self.on_change!r}")
        for key in ("min_interval_ms", "heartbeat_ms"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_INTERVAL_MS:
                raise SignalMapError(f"{key} must be an int in [0, {MAX_INTERVAL_MS}], got {value!r}")
        if self.heartbeat_ms and self.heartbeat_ms < self.min_interval_ms:
            raise SignalMapError(
                f"heartbeat_ms={self.heartbeat_ms} is shorter than min_interval_ms={self.min_interval_ms}"
            )
        if self.values is not None:
            if not isinstance(self.values, Mapping) or not 0 < len(self.values) <= MAX_VALUES:
                raise SignalMapError(f"values must be a table of 1..{MAX_VALUES} entries, got {self.values!r:.80}")
            if numeric and (self.scale != 1.0 or self.offset != 0.0):
                raise SignalMapError("values and scale/offset cannot be combined")
            checked = {}
            for key, value in self.values.items():
                if not isinstance(key, str) or not key:
                    raise SignalMapError(f"values key {key!r} must be a DBC enum name or an integer raw value")
                checked[key] = _check_value_type(self.type, key, value)
            object.__setattr__(self, "values", MappingProxyType(checked))

    def raw_value_keys(self) -> dict[int, SampleValue]:
        """The ``values`` entries whose keys are integer raw values, keyed by that integer."""
        return {int(k): v for k, v in (self.values or {}).items() if _INT_KEY_RE.fullmatch(k)}

    def named_value_keys(self) -> dict[str, SampleValue]:
        """The ``values`` entries whose keys are enum names (anything but an integer)."""
        return {k: v for k, v in (self.values or {}).items() if not _INT_KEY_RE.fullmatch(k)}


@dataclass(frozen=True, slots=True)
class SignalMap:
    """A validated signal map: entries in file order, and where they came from.

    Attributes:
        entries: the ``[[signal]]`` entries, names unique.
        source: file path or a label, used in error messages.
    """

    entries: tuple[SignalMapEntry, ...]
    source: str = "<string>"
    names: frozenset[str] = field(init=False)

    def __post_init__(self) -> None:
        seen: dict[str, int] = {}
        for index, entry in enumerate(self.entries, start=1):
            if entry.name in seen:
                raise SignalMapError(
                    f"{self.source}: [[signal]] #{index}: name {entry.name!r} "
                    f"is already mapped by entry #{seen[entry.name]}"
                )
            seen[entry.name] = index
        object.__setattr__(self, "names", frozenset(seen))


def _entry_from_table(table: object) -> SignalMapEntry:
    if not isinstance(table, dict):
        raise SignalMapError(f"must be a table, got {type(table).__name__}")
    unknown = sorted(set(table) - _ENTRY_KEYS)
    if unknown:
        raise SignalMapError(f"unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(_ENTRY_KEYS))}")
    for key in ("name", "dbc_message", "dbc_signal"):
        if key not in table:
            raise SignalMapError(f"missing required key {key!r}")
    values = table.get("values")
    if values is not None and not isinstance(values, dict):
        raise SignalMapError(f"values must be a table, got {values!r:.80}")
    type_text = table.get("type", "string" if values is not None else "float")
    try:
        kind = SignalType(type_text)
    except ValueError as exc:
        allowed = ", ".join(t.value for t in SignalType)
        raise SignalMapError(f"type {type_text!r} is not one of {allowed}") from exc
    return SignalMapEntry(
        name=table["name"],
        dbc_message=table["dbc_message"],
        dbc_signal=table["dbc_signal"],
        type=kind,
        values=values,
        scale=table.get("scale", 1.0),
        offset=table.get("offset", 0.0),
        on_change=table.get("on_change", True),
        min_interval_ms=table.get("min_interval_ms", 0),
        heartbeat_ms=table.get("heartbeat_ms", 0),
        deadband=table.get("deadband", 0.0),
    )


def parse_signal_map(text: str, source: str = "<string>") -> SignalMap:
    """Parse and validate a signal map from TOML text.

    Args:
        text: the TOML document (``[[signal]]`` entries).
        source: the file name or a label, used in error messages.

    Returns:
        The validated map.

    Raises:
        SignalMapError: naming ``source``, the 1-based entry index and what is wrong.
    """
    if len(text) > MAX_MAP_BYTES:
        raise SignalMapError(f"{source}: signal map is {len(text)} characters, limit {MAX_MAP_BYTES}")
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SignalMapError(f"{source}: not valid TOML: {exc}") from exc
    unknown = sorted(set(document) - {"signal"})
    if unknown:
        raise SignalMapError(f"{source}: unknown top-level key(s) {', '.join(unknown)}; expected [[signal]] entries")
    tables = document.get("signal")
    if not isinstance(tables, list) or not tables:
        raise SignalMapError(f"{source}: no [[signal]] entries")
    if len(tables) > MAX_MAP_ENTRIES:
        raise SignalMapError(f"{source}: {len(tables)} [[signal]] entries, limit {MAX_MAP_ENTRIES}")
    entries = []
    for index, table in enumerate(tables, start=1):
        label = table.get("name") if isinstance(table, dict) else None
        try:
            entries.append(_entry_from_table(table))
        except SignalMapError as exc:
            named = f" ({label!r})" if isinstance(label, str) else ""
            raise SignalMapError(f"{source}: [[signal]] #{index}{named}: {exc}") from exc
    return SignalMap(entries=tuple(entries), source=source)


def load_signal_map(path: str | Path) -> SignalMap:
    """Read and validate a signal map file (see :func:`parse_signal_map`).

    Raises:
        SignalMapError: the file is missing, unreadable, oversized, not UTF-8 or invalid.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > MAX_MAP_BYTES:
            raise SignalMapError(f"{path}: signal map is {size} bytes, limit {MAX_MAP_BYTES}")
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SignalMapError(f"{path}: cannot read signal map: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise SignalMapError(f"{path}: signal map is not UTF-8 text: {exc}") from exc
    return parse_signal_map(text, source=str(path))
