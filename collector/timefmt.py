"""Time on the wire and on screen: ISO-8601 in and out, epoch milliseconds still accepted.

Pure functions. :func:`parse_time` takes what a person or a script types: epoch milliseconds
(digits), an ISO-8601 date-time with an offset or ``Z``, a date-time without an offset (read
in the zone given, UTC by default) or a plain date (its midnight in that zone).
:func:`format_time` shows an instant in a named zone, the zone always written out.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from .errors import CollectorError

__all__ = ["TimeFormatError", "format_time", "iso_local", "iso_utc", "local_input_value", "parse_time", "zone"]

MAX_MS = 2**53
_MAX_TEXT = 64


class TimeFormatError(CollectorError, ValueError):
    """A time is neither epoch milliseconds nor ISO-8601, or a zone name is unknown."""


def zone(name: str) -> ZoneInfo:
    """The IANA zone ``name``.

    Raises:
        TimeFormatError: unknown zone.
    """
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise TimeFormatError(f"time zone {name!r:.64} is not an IANA zone name") from None


def parse_time(text: str, *, default_zone: str = "UTC") -> int:
    """Epoch milliseconds of ``text``.

    Args:
        text: ``1795858800000``, ``2026-11-28T09:00:00Z``, ``2026-11-28T17:00+08:00``,
            ``2026-11-28T17:00`` (read in ``default_zone``) or ``2026-11-28``.
        default_zone: zone of a time written without an offset.

    Raises:
        TimeFormatError: anything else, or a time outside 0..2**53 ms.
    """
    if not isinstance(text, str) or not text.strip() or len(text) > _MAX_TEXT:
        raise TimeFormatError(f"time {text!r:.70} must be epoch ms or ISO-8601 (e.g. 2026-11-28T09:00:00Z)")
    raw = text.strip()
    if raw.isdigit():
        value = int(raw)
    else:
        try:
            if len(raw) == 10:
                parsed = datetime.combine(date.fromisoformat(raw), datetime.min.time())
            else:
                parsed = datetime.fromisoformat(raw.replace(" ", "T", 1))
        except ValueError:
            raise TimeFormatError(
                f"time {raw!r:.70} must be epoch ms or ISO-8601 (e.g. 2026-11-28T09:00:00Z)"
            ) from None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=zone(default_zone))
        value = int(parsed.timestamp() * 1000)
    if not 0 <= value < MAX_MS:
        raise TimeFormatError(f"time {raw!r:.70} is outside the epoch-ms range 0..2**53")
    return value


def format_time(time_ms: int | None, zone_name: str, *, seconds: bool = True) -> str:
    """``2026-11-28 17:00:00 +08:00 (Asia/Shanghai)``; an empty string for ``None``."""
    if time_ms is None:
        return ""
    local = datetime.fromtimestamp(time_ms / 1000, tz=zone(zone_name))
    clock = local.strftime("%Y-%m-%d %H:%M:%S" if seconds else "%Y-%m-%d %H:%M")
    offset = local.strftime("%z")
    return f"{clock} {offset[:3]}:{offset[3:]} ({zone_name})"


def iso_utc(time_ms: int) -> str:
    """ISO-8601 in UTC with milliseconds and ``Z`` (GPX, CSV, JSON)."""
    return datetime.fromtimestamp(time_ms / 1000, tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def local_input_value(time_ms: int, zone_name: str) -> str:
    """``2026-11-28T17:00`` in ``zone_name``: the value of an HTML ``datetime-local`` field."""
    return datetime.fromtimestamp(time_ms / 1000, tz=zone(zone_name)).strftime("%Y-%m-%dT%H:%M")


def iso_local(time_ms: int, zone_name: str) -> str:
    """ISO-8601 with the zone's offset, to the second: ``2026-11-29T08:00:00+08:00``."""
    return datetime.fromtimestamp(time_ms / 1000, tz=zone(zone_name)).isoformat(timespec="seconds")
