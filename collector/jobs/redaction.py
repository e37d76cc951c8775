"""What is taken out of alert evidence and risk reasons before they leave for a lesser reader.

Two levels, both pure functions over JSON-like values:

* :func:`redact_coordinates` drops keys that hold a position (``lat``, ``centre_lon``,
  ``position``, ``track``...): webhook bodies, which leave the collector for systems that
  do not audit who reads them, carry no precise coordinates.
* :func:`redact_for_collections` also drops what locates the vehicle without a
  coordinate: the market's name and every distance (the opaque ``market_id`` stays, so a
  reason can still be told apart; keep market ids opaque codes, not place names). The
  collections role needs the level, the reason and the next step, not where the car is.
"""

from __future__ import annotations

import re
from typing import Any

__all__ = ["redact_coordinates", "redact_for_collections"]

_COORDINATE_KEY = re.compile(r"(^|_)(lat|lon|latitude|longitude|position|track)$", re.IGNORECASE)
_LOCATING_KEY = re.compile(r"(^|_)(market_name|place_name|address)$|distance", re.IGNORECASE)


def _without(value: Any, pattern: re.Pattern[str], *more: re.Pattern[str]) -> Any:
    if isinstance(value, dict):
        return {
            k: _without(v, pattern, *more)
            for k, v in value.items()
            if not pattern.search(str(k)) and not any(p.search(str(k)) for p in more)
        }
    if isinstance(value, list):
        return [_without(v, pattern, *more) for v in value]
    return value


def redact_coordinates(value: Any) -> Any:
    """A copy of ``value`` without coordinate keys (``lat``, ``centre_lon``, ``position``...)."""
    return _without(value, _COORDINATE_KEY)


def redact_for_collections(value: Any) -> Any:
    """A copy of ``value`` without coordinates, market names or distances."""
    return _without(value, _COORDINATE_KEY, _LOCATING_KEY)
