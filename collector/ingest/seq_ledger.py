"""Per-device ledger of stored sequence numbers: what a receipt says and what is missing.

How this works
--------------
A device numbers its batches with a 64-bit ``seq`` that never repeats (docs/protocol.md
section 13). :class:`SeqLedger` holds, as inclusive ``(start, end)`` ranges:

* ``stored``: seqs committed to the database (fed from the ingest's commit listener, so
  only after the commit);
* ``skipped``: seqs the device itself announced it will never send (counters
  ``seq_skipped_from`` + ``seq_skipped`` in the first batch of a boot: numbers reserved
  but never used before a crash). No device holds them, so a receipt may bridge them;
* ``evicted``: seqs the device announced its full outbox evicted (counters
  ``seq_evicted_{i}_from``/``_count``, :func:`protocol.evicted_ranges`): known losses. No
  device holds them either, so a receipt bridges them too; those never stored are counted
  apart from the missing ones (:meth:`SeqLedger.evicted_lost`);
* ``floor_gaps``: the hole below an announced clock floor (counter ``seq_floor``: the
  sequence file was lost and the device jumped to the clock). The numbers in it were
  never issued, but batches of the earlier run may still sit in the device's outbox below
  the floor, so a receipt does **not** bridge it; it is only not counted as missing.

The receipt view is the union of ``stored``, ``skipped`` and ``evicted``: its first range gives
``low .. high``, the others (the highest :data:`protocol.MAX_RECEIPT_RANGES`) the ranges
above. Missing seqs are the holes of that union between its lowest and highest seq, minus
the floor gaps. Pure: no I/O, no clock.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from protocol import MAX_RECEIPT_RANGES, MAX_SEQ

__all__ = ["MAX_LISTED_GAPS", "SeqLedger", "merge_ranges"]

Range = tuple[int, int]
#: missing ranges listed per device in the API and CLI (the count covers all)
MAX_LISTED_GAPS = 100


def merge_ranges(ranges: Iterable[Range]) -> list[Range]:
    """Sort and merge inclusive ranges; overlapping and adjacent ones become one."""
    out: list[Range] = []
    for start, end in sorted(r for r in ranges if r[0] <= r[1]):
        if out and start <= out[-1][1] + 1:
            if end > out[-1][1]:
                out[-1] = (out[-1][0], end)
        else:
            out.append((start, end))
    return out


def _holes(ranges: Sequence[Range]) -> list[Range]:
    return [(a[1] + 1, b[0] - 1) for a, b in itertools.pairwise(ranges)]


def _subtract(holes: Iterable[Range], cover: Sequence[Range]) -> list[Range]:
    """``holes`` without the seqs in ``cover`` (both sorted, disjoint)."""
    out: list[Range] = []
    for start, end in holes:
        cursor = start
        for c_start, c_end in cover:
            if c_end < cursor or c_start > end:
                continue
            if c_start > cursor:
                out.append((cursor, c_start - 1))
            cursor = max(cursor, c_end + 1)
            if cursor > end:
                break
        if cursor <= end:
            out.append((cursor, end))
    return out


def _count(ranges: Iterable[Range]) -> int:
    return sum(end - start + 1 for start, end in ranges)


def _as_ranges(raw: object) -> list[Range]:
    if not isinstance(raw, list):
        return []
    return merge_ranges(
        (int(r[0]), int(r[1]))
        for r in raw
        if isinstance(r, (list, tuple)) and len(r) == 2 and all(type(v) is int and 1 <= v <= MAX_SEQ for v in r)
    )


@dataclass(slots=True)
class SeqLedger:
    """The stored, announced-skipped, announced-evicted and floor-gap seq ranges of one device."""

    stored: list[Range] = field(default_factory=list)
    skipped: list[Range] = field(default_factory=list)
    floor_gaps: list[Range] = field(default_factory=list)
    evicted: list[Range] = field(default_factory=list)

    # ------------------------------------------------------------------ feeding

    def add(self, seqs: Iterable[int]) -> None:
        """Record committed seqs (duplicates of stored ones change nothing)."""
        new = [(s, s) for s in seqs if 1 <= s <= MAX_SEQ]
        if new:
            self.stored = merge_ranges([*self.stored, *new])

    def skip(self, first: int, count: int) -> None:
        """The device announced ``first .. first + count - 1`` as never sent."""
        if first >= 1 and count >= 1:
            self.skipped = merge_ranges([*self.skipped, (first, min(first + count - 1, MAX_SEQ))])

    def evict(self, ranges: Iterable[Range]) -> int:
        """The device announced ``ranges`` (inclusive) as evicted from its outbox.

        Returns:
            How many of their seqs were not known as evicted before (0: a repetition).
        """
        before = _count(self.evicted)
        self.evicted = merge_ranges([*self.evicted, *((a, min(b, MAX_SEQ)) for a, b in ranges if 1 <= a <= b)])
        return _count(self.evicted) - before

    def floor(self, seq: int) -> None:
        """The device announced a clock floor at ``seq``: the hole just below it is no loss."""
        known_below: int | None = None  # the highest known seq under the floor
        for start, end in self.covered():
            if start >= seq:
                break
            known_below = min(end, seq - 1)
        if known_below is not None and known_below + 1 <= seq - 1:
            self.floor_gaps = merge_ranges([*self.floor_gaps, (known_below + 1, seq - 1)])

    # ------------------------------------------------------------------ reading

    def covered(self) -> list[Range]:
        """Seqs a receipt may claim: stored, or announced as never sent or evicted."""
        return merge_ranges([*self.stored, *self.skipped, *self.evicted])

    def receipt_view(self) -> tuple[int, int, tuple[Range, ...]] | None:
        """``(low, high, ranges)`` for a receipt; None before anything was stored."""
        union = self.covered()
        if not self.stored or not union:
            return None
        (low, high), rest = union[0], union[1:]
        return low, high, tuple(rest[-MAX_RECEIPT_RANGES:])

    def gaps(self) -> list[Range]:
        """Missing seq ranges: holes between the lowest and highest known seq, not floor gaps."""
        return _subtract(_holes(self.covered()), self.floor_gaps)

    def missing(self) -> int:
        """How many seqs are missing (see :meth:`gaps`)."""
        return _count(self.gaps())

    def evicted_lost(self) -> list[Range]:
        """Evicted seqs never stored: the device's known losses (a copy the broker had may still land)."""
        return _subtract(self.evicted, self.stored)

    def evicted_total(self) -> int:
        """How many seqs the device ever announced as evicted (stored or not; never decreases)."""
        return _count(self.evicted)

    @property
    def highest(self) -> int | None:
        """The highest stored seq."""
        return self.stored[-1][1] if self.stored else None

    # ------------------------------------------------------------------ persistence

    def as_json(self) -> dict[str, list[list[int]]]:
        """The ranges as JSON lists (the ``seq_ledgers`` row)."""
        return {
            "stored": [list(r) for r in self.stored],
            "skipped": [list(r) for r in self.skipped],
            "floor_gaps": [list(r) for r in self.floor_gaps],
            "evicted": [list(r) for r in self.evicted],
        }

    @classmethod
    def from_json(cls, raw: Any) -> SeqLedger:
        """Rebuild from :meth:`as_json` output; anything malformed is dropped, not trusted."""
        if not isinstance(raw, dict):
            return cls()
        return cls(
            _as_ranges(raw.get("stored")),
            _as_ranges(raw.get("skipped")),
            _as_ranges(raw.get("floor_gaps")),
            _as_ranges(raw.get("evicted")),  # absent in a row written before evicted seqs were announced
        )
