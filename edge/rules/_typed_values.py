"""Build dataclasses from JSON/TOML-like maps with exact type checks.

One small checker serves both the ``[rules]`` config (missing keys take their defaults)
and the engine snapshot (every field must be present). Unknown keys are always an error
that names the key, so a typo in agent.toml never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

__all__ = ["build_dataclass", "dump_dataclass"]

T = TypeVar("T")

_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    found = _HINTS.get(cls)
    if found is None:
        found = typing.get_type_hints(cls)
        _HINTS[cls] = found
    return found


def _coerce_bool(value: object, where: str, error: type[Exception]) -> bool:
    if not isinstance(value, bool):
        raise error(f"{where} must be true or false, got {value!r:.60}")
    return value


def _coerce_int(value: object, where: str, error: type[Exception]) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise error(f"{where} must be an integer, got {value!r:.60}")
    return value


def _coerce_float(value: object, where: str, error: type[Exception]) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise error(f"{where} must be a finite number, got {value!r:.60}")
    return float(value)


def _coerce_str(value: object, where: str, error: type[Exception]) -> str:
    if not isinstance(value, str):
        raise error(f"{where} must be text, got {value!r:.60}")
    return value


def _coerce_path(value: object, where: str, error: type[Exception]) -> Path:
    if not isinstance(value, (str, Path)) or not str(value):
        raise error(f"{where} must be a file path, got {value!r:.60}")
    return Path(value)


#: Scalar annotation -> checker (exact types: ``bool`` is not an ``int`` here).
_SCALARS: dict[object, Any] = {
    bool: _coerce_bool,
    int: _coerce_int,
    float: _coerce_float,
    str: _coerce_str,
    Path: _coerce_path,
}


def _coerce_union(value: object, args: tuple[Any, ...], where: str, error: type[Exception]) -> Any:
    if value is None and type(None) in args:
        return None
    last: Exception | None = None
    for candidate in (a for a in args if a is not type(None)):
        try:
            return _coerce(value, candidate, where, error)
        except error as exc:
            last = exc
    assert last is not None
    raise last


def _coerce_sequence(value: object, origin: Any, args: tuple[Any, ...], where: str, error: type[Exception]) -> Any:
    if not isinstance(value, (list, tuple)):
        raise error(f"{where} must be a list, got {value!r:.60}")
    item_type = args[0] if args else Any
    items = [_coerce(v, item_type, f"{where}[{i}]", error) for i, v in enumerate(value)]
    return tuple(items) if origin is tuple else items


def _coerce_map(value: object, args: tuple[Any, ...], where: str, error: type[Exception]) -> dict[Any, Any]:
    if not isinstance(value, Mapping):
        raise error(f"{where} must be a map, got {value!r:.60}")
    key_type, item_type = args
    out = {}
    for key, item in value.items():
        _coerce(key, key_type, f"{where} key", error)
        out[key] = _coerce(item, item_type, f"{where}.{key}", error)
    return out


def _coerce(value: object, tp: Any, where: str, error: type[Exception]) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return _coerce_union(value, args, where, error)
    scalar = _SCALARS.get(tp)
    if scalar is not None:
        return scalar(value, where, error)
    if origin in (tuple, list):
        return _coerce_sequence(value, origin, args, where, error)
    if origin is dict:
        return _coerce_map(value, args, where, error)
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return build_dataclass(tp, value, where, error, require_all=False)
    raise error(f"{where}: unsupported field type {tp!r}")


def build_dataclass(
    cls: type[T], data: object, where: str, error: type[Exception], *, require_all: bool
) -> T:
    """Build ``cls`` from a map, checking every value against the field's annotation.

    Args:
        cls: the dataclass to build.
        data: a map of field name to value (TOML table, JSON object).
        where: dotted path of ``data`` for error messages, e.g. ``rules.power_cut``.
        error: exception class raised for any problem (message names the key).
        require_all: if True, every field must be present (snapshots); else defaults apply.

    Raises:
        error: unknown key, missing key, wrong type, or the dataclass rejected a value.
    """
    if not isinstance(data, Mapping):
        raise error(f"{where} must be a table/map, got {type(data).__name__}")
    hints = _hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.init]  # type: ignore[arg-type]
    for key in data:
        if key not in names:
            raise error(f"unknown key {where}.{key} (known: {', '.join(names)})")
    kwargs: dict[str, Any] = {}
    for name in names:
        if name in data:
            kwargs[name] = _coerce(data[name], hints[name], f"{where}.{name}", error)
        elif require_all:
            raise error(f"{where}.{name} is missing")
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as exc:
        raise error(f"{where}: {exc}") from exc


def dump_dataclass(obj: object) -> dict[str, Any]:
    """JSON-ready dict of a dataclass (tuples become lists, Paths become text)."""

    def convert(value: object) -> object:
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            return {f.name: convert(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, (list, tuple)):
            return [convert(v) for v in value]
        if isinstance(value, dict):
            return {k: convert(v) for k, v in value.items()}
        if isinstance(value, Path):
            return str(value)
        return value

    out = convert(obj)
    assert isinstance(out, dict)
    return out
