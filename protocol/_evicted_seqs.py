"""Evicted-seq announcements: which seqs a device's full outbox dropped, in a batch's counters.

A device whose outbox overflows deletes batches it never delivered (docs/protocol.md
section 13, "Evicted seqs"). It announces their seqs, as inclusive ranges, in the counters
of a later batch, so the collector knows those seqs will never come and a receipt may
bridge them. The announcement rides inside the device-signed batch (nobody else can make
one) and uses the counters map (key 10), so a version 1 decoder reads it unchanged and a
collector that does not know it simply stores the counters. Range ``i`` (``0 .. 15``,
numbered without holes) is two counters::

    seq_evicted_{i}_from  = first seq of the range
    seq_evicted_{i}_count = how many seqs (1 .. MAX_EVICTED_SPAN)

Ranges are ascending and disjoint and end below the carrying batch's own seq (a device
only ever evicts batches it stored before). Pure: no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from .errors import AnnouncementAboveSeq, AnnouncementMalformed, AnnouncementOversized, LocalProtocolError

__all__ = [
    "EVICTED_PREFIX",
    "MAX_EVICTED_RANGES",
    "MAX_EVICTED_SPAN",
    "evicted_counters",
    "evicted_ranges",
]

#: most ranges one batch carries (32 of the 64 counters a batch may hold)
MAX_EVICTED_RANGES = 16
#: most seqs one announced range covers; a device splits a longer run (about 12 days of
#: one batch a second): anything above is not a plausible eviction but a broken or hostile sender
MAX_EVICTED_SPAN = 2**20
#: every counter of the announcement starts with this; no other counter does
EVICTED_PREFIX = "seq_evicted_"
#: counters hold integers up to 2**63 - 1 (docs/protocol.md section 4.5)
_MAX_COUNTER = 2**63 - 1
_NAME = re.compile(r"seq_evicted_(0|[1-9][0-9]?)_(from|count)")

Range = tuple[int, int]


def evicted_counters(ranges: Sequence[Range]) -> dict[str, int]:
    """The counters announcing ``ranges`` (inclusive ``(first, last)``, ascending, disjoint).

    Raises:
        LocalProtocolError: more than :data:`MAX_EVICTED_RANGES` ranges, a range longer than
            :data:`MAX_EVICTED_SPAN`, or ranges out of order (the caller's bug).
    """
    if len(ranges) > MAX_EVICTED_RANGES:
        raise LocalProtocolError(f"{len(ranges)} evicted ranges, at most {MAX_EVICTED_RANGES} per batch")
    out: dict[str, int] = {}
    previous = 0
    for i, (first, last) in enumerate(ranges):
        if not previous < first <= last <= _MAX_COUNTER or last - first + 1 > MAX_EVICTED_SPAN:
            raise LocalProtocolError(f"evicted range {first}..{last} is out of order or longer than {MAX_EVICTED_SPAN}")
        out[f"{EVICTED_PREFIX}{i}_from"] = first
        out[f"{EVICTED_PREFIX}{i}_count"] = last - first + 1
        previous = last
    return out


def evicted_ranges(counters: Mapping[str, int], seq: int) -> tuple[Range, ...]:
    """The evicted ranges a batch ``seq`` announces in ``counters`` (empty when it announces none).

    Args:
        counters: the verified batch's counters (key 10).
        seq: the verified batch's own seq.

    Raises:
        AnnouncementMalformed: a ``seq_evicted_*`` counter that is not part of numbered,
            complete ``from``/``count`` pairs ``0 .. n-1``, a count of 0, or ranges not ascending
            and disjoint.
        AnnouncementOversized: more than :data:`MAX_EVICTED_RANGES` ranges or a range longer
            than :data:`MAX_EVICTED_SPAN`.
        AnnouncementAboveSeq: a range reaching ``seq`` or above.
    """
    names = [name for name in counters if name.startswith(EVICTED_PREFIX)]
    if not names:
        return ()
    pairs: dict[int, dict[str, int]] = {}
    for name in names:
        match = _NAME.fullmatch(name)
        if match is None:
            raise AnnouncementMalformed(f"counter {name!r:.80} is not seq_evicted_<index>_from/_count")
        pairs.setdefault(int(match.group(1)), {})[match.group(2)] = counters[name]
    if len(pairs) > MAX_EVICTED_RANGES:
        raise AnnouncementOversized(f"batch {seq} announces {len(pairs)} evicted ranges, at most {MAX_EVICTED_RANGES}")
    if sorted(pairs) != list(range(len(pairs))) or any(len(p) != 2 for p in pairs.values()):
        raise AnnouncementMalformed(f"batch {seq}: evicted ranges must be complete from/count pairs numbered from 0")
    out: list[Range] = []
    previous = 0
    for i in range(len(pairs)):
        first, count = pairs[i]["from"], pairs[i]["count"]
        if type(first) is not int or type(count) is not int or first < 1 or count < 1:
            raise AnnouncementMalformed(f"batch {seq}: evicted range {i} ({first!r}, {count!r}) is not positive ints")
        if count > MAX_EVICTED_SPAN:
            raise AnnouncementOversized(f"batch {seq}: evicted range {i} covers {count} seqs, over {MAX_EVICTED_SPAN}")
        last = first + count - 1
        if last >= seq:
            raise AnnouncementAboveSeq(f"batch {seq}: evicted range {first}..{last} is not below the batch's own seq")
        if first <= previous:
            raise AnnouncementMalformed(f"batch {seq}: evicted range {first}..{last} is not above {previous}")
        out.append((first, last))
        previous = last
    return tuple(out)
