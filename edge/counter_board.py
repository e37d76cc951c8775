"""Counters published as immutable snapshots, read by another thread without locks or retries.

Each thread owns its counters and publishes a frozen copy of them (one reference
assignment, atomic in Python) when it has a moment; the uplink thread merges the latest
copies into the state message. Nobody iterates a dict another thread is writing.
A state message carries at most :attr:`protocol.LIMITS.MAX_STATE_COUNTERS` counters: beyond
that :func:`state_counters` keeps the first ones by name and says how many it left out in
``state_counters_omitted``, rather than dropping them silently.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from types import MappingProxyType

from protocol import LIMITS

__all__ = ["OMITTED", "PublishedCounters", "counter_values", "state_counters"]

#: The counter that says how many counters a state message left out.
OMITTED = "state_counters_omitted"


def counter_values(counters: object) -> dict[str, int]:
    """Non-negative integer counters of a mapping or of an object with ``as_dict()``."""
    as_dict = getattr(counters, "as_dict", None)
    raw = as_dict() if callable(as_dict) else counters
    if not isinstance(raw, Mapping):
        return {}
    return {str(k): v for k, v in raw.items() if isinstance(v, int) and not isinstance(v, bool) and v >= 0}


class PublishedCounters:
    """The latest snapshot of one thread's counters (written by that thread only)."""

    def __init__(self) -> None:
        self.latest: Mapping[str, int] = MappingProxyType({})

    def publish(self, counters: Mapping[str, int]) -> None:
        """Replace the snapshot with a frozen copy of ``counters``."""
        self.latest = MappingProxyType(dict(counters))


def state_counters(parts: Iterable[Mapping[str, int]], limit: int = LIMITS.MAX_STATE_COUNTERS) -> dict[str, int]:
    """Merge snapshots (later parts win on a name clash) into at most ``limit`` counters.

    When there are more, the first ``limit - 1`` by name are kept and :data:`OMITTED` says how
    many were left out.
    """
    out: dict[str, int] = {}
    for part in parts:
        out.update(part)
    if len(out) <= limit:
        return out
    kept = dict(sorted(out.items())[: limit - 1])
    kept[OMITTED] = len(out) - len(kept)
    return kept
