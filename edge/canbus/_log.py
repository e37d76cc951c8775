"""Recorded CAN logs as python-can messages, for ``lienwatch can --log`` and replays.

python-can's readers are generators that die on the first line they cannot parse. For
candump ``.log`` files (the common case, one frame per line) each line is parsed on its
own, so a garbled line is counted in ``malformed_frames`` and reading goes on. For the
other formats python-can supports (``.asc``, ``.blf``, ``.csv``, ...) a parse failure ends
the file with :class:`CanLogError` after the frames read so far. ``.asc`` files are read
with absolute timestamps (from the file's date header) so samples get real times.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import can
from can.io.canutils import CanutilsLogReader

from ._decoder import CanCounters
from .errors import CanLogError

__all__ = ["MAX_LOG_LINE", "CanLogError", "read_can_log"]

#: A candump line longer than this (characters) is malformed (CAN FD lines are ~170).
MAX_LOG_LINE = 1024


def _read_candump(path: Path, counters: CanCounters) -> Iterator[can.Message]:
    try:
        handle = path.open("r", encoding="ascii", errors="replace", newline="")
    except OSError as exc:
        raise CanLogError(f"{path}: cannot open CAN log: {exc.strerror or exc}") from exc
    with handle:
        while True:
            line = handle.readline(MAX_LOG_LINE + 1)
            if not line:
                return
            if len(line) > MAX_LOG_LINE and not line.endswith("\n"):
                counters.malformed_frames += 1
                while line and not line.endswith("\n"):  # skip the rest of the oversized line
                    line = handle.readline(MAX_LOG_LINE + 1)
                continue
            if not line.strip():
                continue
            try:
                yield from CanutilsLogReader(io.StringIO(line))
            except (ValueError, IndexError):
                counters.malformed_frames += 1


def read_can_log(path: str | Path, counters: CanCounters | None = None) -> Iterator[can.Message]:
    """Yield the frames of a recorded CAN log (candump .log, .asc, .blf, .csv, ...).

    Args:
        path: the log file; the format follows the file name's extension.
        counters: where malformed lines are counted (``malformed_frames``).

    Raises:
        CanLogError: the file cannot be opened, its format is unknown, or (not for
            candump files) a record cannot be parsed.
    """
    path = Path(path)
    counters = counters if counters is not None else CanCounters()
    if path.suffix.lower() == ".log":
        yield from _read_candump(path, counters)
        return
    options = {"relative_timestamp": False} if path.suffix.lower() == ".asc" else {}
    try:
        reader = can.LogReader(path, **options)
    except (ValueError, OSError) as exc:
        raise CanLogError(f"{path}: cannot read as a CAN log: {exc}") from exc
    count = 0
    try:
        with reader:
            for msg in reader:
                count += 1
                yield msg
    except Exception as exc:  # the readers raise ValueError, struct.error, their own BLFParseException...
        counters.malformed_frames += 1
        raise CanLogError(f"{path}: record after frame {count} cannot be parsed: {exc}") from exc
