"""Batch sequence numbers: 64-bit, persisted, never reused on the device.

How this works, and why
-----------------------
A sequence number is *used* once a batch carrying it may have left the device. The
outbox commits a batch (SQLite, synchronous=FULL) before anything publishes it, so the
danger is never "assigned but not yet committed" on its own: such a number never left.
The dangers are the copies of the truth going backwards:

* the outbox is restored from an old backup, or found corrupt and moved aside (its own
  "last committed seq" falls back to an old value or to 0);
* the process dies between handing out a number and committing the batch, then the
  outbox alone would not know the number was handed out (harmless by itself, but it
  matters combined with the previous point).

So the allocator keeps a second, independent high-water mark in its own small file:
``reserved_high``, the largest number it may ever have handed out. Numbers are reserved
in blocks of ``block``: before handing out ``n > reserved_high`` it writes
``reserved_high = n + block - 1`` (write to a temporary file, fsync, rename, fsync the
folder: the file is either the old or the new value, never a torn mix). On boot it
starts at ``max(reserved_high, committed_high) + 1`` where ``committed_high`` is the
outbox's own mark, so either copy going backwards is covered by the other.

The price is a gap after a crash: numbers reserved but never committed are skipped.
The allocator reports that range (:attr:`SequenceAllocator.skipped`) and the agent sends
it upstream in the first batch of the boot (counters ``seq_skipped_from`` and
``seq_skipped``) so the collector can tell "never sent" from "lost". A bigger block means
fewer fsyncs and bigger gaps; batches are rare (one per 10-60 s), so the default is small.

If the sequence file itself is missing while the outbox says numbers were used, or it is
unreadable, there is no trustworthy mark: the allocator then jumps to the host clock in
epoch milliseconds (the device never issues one batch per millisecond on average, so this
is above anything issued since 1970 as long as the host clock is sane), moves the bad file
aside and reports ``seq_file_lost``. The boot id in every batch tells runs apart anyway.
"""

from __future__ import annotations

import contextlib
import os
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from protocol import MAX_SEQ

from .errors import DeviceError
from .observation_clock import host_wall_ms

__all__ = [
    "ConnectionCounter",
    "SequenceAllocator",
    "SequenceError",
    "SkippedRange",
    "provision_sequence",
    "write_atomically",
]

_MAGIC = "lienwatch-seq-v1"
#: a host clock earlier than this (2020-01-01) is not trusted for the fallback floor
_SANE_CLOCK_MS = 1_577_836_800_000


class SequenceError(DeviceError):
    """The sequence space is exhausted or the sequence file cannot be written."""

    reason = "sequence_error"


@dataclass(frozen=True, slots=True)
class SkippedRange:
    """Sequence numbers ``first .. first + count - 1`` that this device will never send."""

    first: int
    count: int

    def __post_init__(self) -> None:
        if self.first < 1 or self.count < 1 or self.first + self.count - 1 > MAX_SEQ:
            raise SequenceError(f"skipped range {self.first}+{self.count} is outside 1..2**64-1")


def write_atomically(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` so that a crash leaves either the old or the new file.

    Writes a temporary sibling, fsyncs it, renames it over ``path`` and fsyncs the folder.
    """
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _encode(value: int) -> bytes:
    body = f"{_MAGIC} {value}"
    return f"{body} {zlib.crc32(body.encode()):08x}\n".encode()


def _decode(data: bytes) -> int:
    """Parse the file; raise ValueError on anything but a well-formed, checksummed line."""
    if len(data) > 128:
        raise ValueError(f"sequence file is {len(data)} bytes, over 128")
    text = data.decode("ascii").strip()
    magic, value, crc = text.split(" ")
    if magic != _MAGIC or f"{zlib.crc32(f'{magic} {value}'.encode()):08x}" != crc:
        raise ValueError("bad magic or checksum")
    number = int(value)
    if not 0 <= number <= MAX_SEQ:
        raise ValueError(f"{number} is outside 0..2**64-1")
    return number


class SequenceAllocator:
    """Hands out batch sequence numbers that never repeat, across crashes and restores.

    Args:
        path: the high-water-mark file (created if missing).
        committed_high: the outbox's last committed sequence number (0 if none).
        block: numbers reserved per write of the file.
        clock_ms: host clock in epoch milliseconds (for the lost-file fallback only).
        floor_when_missing: treat a missing file as lost even when ``committed_high`` is 0
            (a wiped data directory looks exactly like a brand-new device): start at the
            clock floor. The agent sets it; see "Sequence identity" in docs/protocol.md.

    Attributes:
        skipped: numbers this boot skips (reserved earlier but never committed), or None.
        file_lost: True when the file was missing/corrupt and the clock floor was used.
        clock_floor: True when this boot started at the clock floor (a lost file, or a
            missing file with ``floor_when_missing``); False for a brand-new device whose
            host clock is not sane yet (before 2020), which then starts at 1.
    """

    def __init__(
        self,
        path: Path,
        *,
        committed_high: int = 0,
        block: int = 16,
        clock_ms: Callable[[], int] = host_wall_ms,
        floor_when_missing: bool = False,
    ) -> None:
        if block < 1:
            raise SequenceError(f"block={block} must be at least 1")
        if not 0 <= committed_high <= MAX_SEQ:
            raise SequenceError(f"committed_high={committed_high} is outside 0..2**64-1")
        self.path = Path(path)
        self.block = block
        self.file_lost = False
        self.clock_floor = False
        self.floor_when_missing = floor_when_missing
        reserved = self._read(committed_high, clock_ms)
        start = max(reserved, committed_high) + 1
        if start > MAX_SEQ:
            raise SequenceError("the 64-bit sequence space is exhausted")
        self._next = start
        self._reserved_high = start - 1
        gap = start - 1 - committed_high
        # A first boot at the clock floor skips nothing it ever issued: no range to announce.
        announce = gap > 0 and not (self.clock_floor and not self.file_lost)
        self.skipped: SkippedRange | None = SkippedRange(committed_high + 1, gap) if announce else None

    def _read(self, committed_high: int, clock_ms: Callable[[], int]) -> int:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            if committed_high == 0:
                if not self.floor_when_missing:
                    return 0  # a brand-new device
                # A brand-new device or a wiped one: nobody can tell, so start at the floor.
                now = clock_ms()
                self.clock_floor = now >= _SANE_CLOCK_MS
                return now if self.clock_floor else 0
            data = None
        except OSError as exc:
            raise SequenceError(f"cannot read sequence file {self.path}: {exc}") from exc
        if data is not None:
            try:
                return _decode(data)
            except (ValueError, UnicodeDecodeError):
                with contextlib.suppress(OSError):
                    os.replace(self.path, self.path.with_name(f"{self.path.name}.corrupt-{int(time.time())}"))
        # Missing while the outbox has used numbers, or corrupt: no trustworthy mark.
        self.file_lost = True
        now = clock_ms()
        self.clock_floor = True
        if now < _SANE_CLOCK_MS:
            raise SequenceError(
                f"sequence file {self.path} is missing or corrupt and the host clock ({now} ms) is before "
                "2020: refusing to guess a sequence number that might repeat"
            )
        return max(now, committed_high)

    @property
    def reserved_high(self) -> int:
        """Largest number reserved in the file so far."""
        return self._reserved_high

    def peek(self) -> int:
        """The number :meth:`next` will return."""
        return self._next

    def next(self) -> int:
        """Return the next sequence number, reserving a new block on disk first if needed.

        Raises:
            SequenceError: the space is exhausted or the reservation could not be written.
        """
        number = self._next
        if number > MAX_SEQ:
            raise SequenceError("the 64-bit sequence space is exhausted")
        if number > self._reserved_high:
            high = min(number + self.block - 1, MAX_SEQ)
            try:
                write_atomically(self.path, _encode(high))
            except OSError as exc:
                raise SequenceError(f"cannot reserve sequence numbers in {self.path}: {exc}") from exc
            self._reserved_high = high
        self._next = number + 1
        return number


class ConnectionCounter:
    """The state messages' connection counter: one per MQTT connection, never repeated.

    Every value is ``max(last + 1, host clock in microseconds)`` and is written to ``path``
    (atomically) before it is used. The clock term makes a lost or restored-from-backup file
    harmless as long as the host clock is sane and the device connects less than a million
    times a second; the file term keeps the counter rising when the clock steps back.

    Args:
        path: file holding the last value handed out.
        clock_us: host clock in epoch microseconds.
    """

    def __init__(self, path: Path, *, clock_us: Callable[[], int] = lambda: time.time_ns() // 1000) -> None:
        self.path = Path(path)
        self._clock_us = clock_us
        self.file_lost = False
        try:
            self._last = _decode(self.path.read_bytes())
        except FileNotFoundError:
            self._last = 0
        except (OSError, ValueError, UnicodeDecodeError):
            self.file_lost = True
            self._last = 0

    def next(self) -> int:
        """Return a value above every value returned before, persisted first.

        Raises:
            SequenceError: the file cannot be written.
        """
        value = min(max(self._last + 1, self._clock_us()), 2**63 - 1)
        if value <= self._last:
            raise SequenceError("the connection counter is exhausted")
        try:
            write_atomically(self.path, _encode(value))
        except OSError as exc:
            raise SequenceError(f"cannot persist the connection counter in {self.path}: {exc}") from exc
        self._last = value
        return value


def provision_sequence(path: Path) -> bool:
    """Mark a brand-new device: its first batch will be seq 1 instead of the clock floor.

    Writes ``path`` with a reserved high-water mark of 0 unless it exists. Only a
    provisioning step that knows the device never sent anything may call this (a factory
    image, a test); an agent that finds no file assumes it was wiped.

    Returns:
        True when the file was written, False when it already existed.
    """
    if Path(path).exists():
        return False
    write_atomically(Path(path), _encode(0))
    return True
