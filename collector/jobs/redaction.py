"""What is taken out of alert evidence and risk reasons before they leave for a lesser reader.

Two levels, both pure functions over JSON-like values:

* :func:`redact_coordinates` drops keys that hold a position (``lat``, ``centre_lon``,
  ``position``, ``track``...): webhook bodies, which leave the collector for systems that
  do not audit who reads them, carry no precise coordinates.
* :func:`redact_for_collections` also drops what locates the vehicle without a
  coordinate: the market's name and every distance (the opaque ``market_id`` stays, so a
  reason can still be told apart; keep market ids opaque codes, not place names). The
  collections role needs the level, the reason and the next step, not where the car is.
* :func:`located_subjects` names whose coordinates a list of rows (alerts, risk events) would
  reveal, one entry per loan (or per device for an alert of a device on no loan): a reader
  who sees them leaves one audit row per entry, like a track read.
* :func:`reasons_for_collections` and :func:`score_for_collections` also take the risk
  score's figures out (docs/people.md: collections see level and next step, not scores):
  a reason keeps its code, level, next step, episode, redacted evidence and which axis it
  counts on, not its probability points; the v2 score keeps each axis's level and next step
  and the tier, not the probabilities, the expected loss or the explained reasons.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = [
    "located_subjects",
    "reasons_for_collections",
    "redact_coordinates",
    "redact_for_collections",
    "score_for_collections",
]

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


def located_subjects(rows: Iterable[Mapping[str, Any]], key: str) -> dict[tuple[str, str], int]:
    """How many ``rows`` hold coordinates under ``key``, per ``("loan", id)`` (``("device", id)``
    for a row of no loan), in subject order: what a reader of the rows learns the position of."""
    shown: dict[tuple[str, str], int] = {}
    for row in rows:
        if redact_coordinates(row.get(key)) != row.get(key):
            subject = ("loan", str(row["loan_id"])) if row.get("loan_id") else ("device", str(row.get("device_id")))
            shown[subject] = shown.get(subject, 0) + 1
    return dict(sorted(shown.items()))


def redact_for_collections(value: Any) -> Any:
    """A copy of ``value`` without coordinates, market names or distances."""
    return _without(value, _COORDINATE_KEY, _LOCATING_KEY)


#: What of a reason's ``explanation`` (docs/risk.md) the collections role sees: no figures.
_EXPLANATION_FOR_COLLECTIONS = ("axis", "kind", "summary")
#: What of each axis of the v2 score the collections role sees.
_AXIS_FOR_COLLECTIONS = ("level", "next_step")


def reasons_for_collections(reasons: Any) -> Any:
    """Stored risk reasons without coordinates, place names, distances or score figures."""
    redacted = redact_for_collections(reasons)
    if not isinstance(redacted, list):
        return redacted
    out = []
    for reason in redacted:
        explanation = reason.get("explanation") if isinstance(reason, dict) else None
        if isinstance(explanation, dict):
            kept = {k: explanation[k] for k in _EXPLANATION_FOR_COLLECTIONS if k in explanation}
            out.append(reason | {"explanation": kept})
        else:
            out.append(reason)
    return out


def score_for_collections(score: Any) -> Any:
    """The v2 score shown to collections: ``level``, ``tier``, each axis's level and next step."""
    if not isinstance(score, dict):
        return None
    out: dict[str, Any] = {k: score[k] for k in ("level", "tier") if k in score}
    for axis in ("credit", "collateral"):
        part = score.get(axis)
        out[axis] = {k: part[k] for k in _AXIS_FOR_COLLECTIONS if k in part} if isinstance(part, dict) else None
    return out
