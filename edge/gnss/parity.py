"""Compare the decoder with gpsd on gpsd's own regression logs (``test/daemon/*.log`` + ``.chk``).

A ``.chk`` file interleaves the log's sentences with the JSON reports gpsd produced for them.
gpsd sends several TPV reports per epoch as its sentences arrive; a time is one of gpsd's
*fixes* when a TPV with that time has ``mode`` >= 2 and a position, and the last such TPV of
the time gives the position (:func:`gpsd_fixes`).

For one log, :func:`compare_log` counts gpsd's fixes, those our decoder reproduces (a
:class:`~protocol.Fix` at the same time, latitude and longitude within
:data:`POSITION_TOLERANCE_DEG`) and our *extra* fixes (a Fix at a time where gpsd reports
none). gpsd moves the dates of some pre-2017 logs forward by 1024 GPS weeks (its rollover
guess, driven by the leap-second count it assumes at build time, not by the data); such
times are compared modulo 1024 weeks and counted in ``rollover_shifted``.

Only plain NMEA logs are compared (:func:`is_nmea_log`): binary protocols (u-blox UBX,
SiRF, ...) are not something this decoder reads.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from protocol import Fix

from ._decoder import NmeaDecoder, read_nmea_file

__all__ = [
    "GPSD_EARLIEST_DATE",
    "POSITION_TOLERANCE_DEG",
    "LogParity",
    "ParityTotals",
    "compare_log",
    "gpsd_fixes",
    "is_nmea_log",
    "total",
]

POSITION_TOLERANCE_DEG = 1e-6
#: gpsd's logs span 1999..2024; records cannot carry times before 2000.
GPSD_EARLIEST_DATE = dt.date(2000, 1, 1)
_ROLLOVER_MS = 1024 * 7 * 86_400_000
_BINARY = re.compile(rb"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\xff]")
_POSITION_SENTENCE = re.compile(rb"^\$[A-Z]{2}(RMC|GGA|GNS|GLL),", re.MULTILINE)


@dataclass(frozen=True, slots=True)
class LogParity:
    """One log's comparison.

    Attributes:
        name: the log's file name.
        gpsd_fixes: epochs gpsd reports as a fix.
        reproduced: of those, epochs where we report a fix at the same time and position.
        extra: our fixes at times where gpsd reports no fix.
        ours: all fixes we report.
        rollover_shifted: reproduced fixes whose gpsd time is ours plus 1024 GPS weeks.
        missed_times: epoch ms of gpsd fixes we did not reproduce (gpsd's time).
        extra_times: epoch ms of our extra fixes.
        time_resets: new time bases the decoder started (the receiver's time went back and stayed).
        stale_epochs: epochs the decoder dropped as not later than its last record.
    """

    name: str
    gpsd_fixes: int
    reproduced: int
    extra: int
    ours: int
    rollover_shifted: int
    missed_times: tuple[int, ...]
    extra_times: tuple[int, ...]
    time_resets: int = 0
    stale_epochs: int = 0


@dataclass(frozen=True, slots=True)
class ParityTotals:
    """Sums over logs; ``reproduced_ratio`` and ``extra_ratio`` are relative to gpsd's fixes."""

    logs: int
    gpsd_fixes: int
    reproduced: int
    extra: int
    rollover_shifted: int
    time_resets: int = 0
    stale_epochs: int = 0

    @property
    def reproduced_ratio(self) -> float:
        return self.reproduced / self.gpsd_fixes if self.gpsd_fixes else 1.0

    @property
    def extra_ratio(self) -> float:
        return self.extra / self.gpsd_fixes if self.gpsd_fixes else 0.0


def is_nmea_log(data: bytes) -> bool:
    """Plain-text NMEA: no binary bytes outside ``#`` comment lines, and a position sentence."""
    body = b"\n".join(line for line in data.splitlines() if not line.startswith(b"#"))
    return not _BINARY.search(body) and _POSITION_SENTENCE.search(body) is not None


def _time_ms(text: str) -> int:
    stamp = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    return round(stamp.timestamp() * 1000)


def gpsd_fixes(chk_text: str) -> dict[int, tuple[float, float]]:
    """gpsd's fixes in a ``.chk`` file: epoch ms -> (lat, lon).

    gpsd reports an epoch several times as its sentences arrive; a time is a fix when any of
    its TPV reports has ``mode`` >= 2 and a position, and the position is the last such
    report's (a receiver that loses its fix after reporting one, as quectel.log does, may add a
    no-fix TPV with the same time: the fix was still reported).
    """
    fixes: dict[int, tuple[float, float]] = {}
    for line in chk_text.splitlines():
        if not line.startswith('{"class":"TPV"'):
            continue
        try:
            report = json.loads(line)
        except ValueError:
            continue
        if not isinstance(report, dict) or not isinstance(report.get("time"), str):
            continue
        mode, lat, lon = report.get("mode"), report.get("lat"), report.get("lon")
        if isinstance(mode, int) and mode >= 2 and isinstance(lat, float | int) and isinstance(lon, float | int):
            fixes[_time_ms(report["time"])] = (float(lat), float(lon))
    return fixes


def compare_log(log: Path, chk: Path, *, earliest_date: dt.date = GPSD_EARLIEST_DATE) -> LogParity:
    """Decode ``log`` with a fresh :class:`NmeaDecoder` and compare its fixes with ``chk``."""
    theirs = gpsd_fixes(chk.read_text(encoding="utf-8", errors="replace"))
    decoder = NmeaDecoder(earliest_date=earliest_date)
    # A new time base may repeat times of the old one: the later fix of a time counts, as
    # gpsd's last report of it does.
    ours = {r.time_ms: (r.lat, r.lon) for r in read_nmea_file(log, decoder=decoder) if isinstance(r, Fix)}
    matched: set[int] = set()
    reproduced = shifted = 0
    missed: list[int] = []
    for time_ms, (lat, lon) in sorted(theirs.items()):
        for ours_ms in (time_ms, time_ms - _ROLLOVER_MS):
            pos = ours.get(ours_ms)
            if (
                pos is not None
                and abs(pos[0] - lat) <= POSITION_TOLERANCE_DEG
                and abs(pos[1] - lon) <= POSITION_TOLERANCE_DEG
            ):
                reproduced += 1
                shifted += ours_ms != time_ms
                matched.add(ours_ms)
                break
        else:
            missed.append(time_ms)
    their_times = set(theirs) | {t - _ROLLOVER_MS for t in theirs}
    extra = [t for t in sorted(ours) if t not in their_times]
    return LogParity(
        name=log.name,
        gpsd_fixes=len(theirs),
        reproduced=reproduced,
        extra=len(extra),
        ours=len(ours),
        rollover_shifted=shifted,
        missed_times=tuple(missed),
        extra_times=tuple(extra),
        time_resets=decoder.counters.time_resets,
        stale_epochs=decoder.counters.stale_epochs,
    )


def total(results: Iterable[LogParity]) -> ParityTotals:
    """Sum per-log results."""
    rows = list(results)
    return ParityTotals(
        logs=len(rows),
        gpsd_fixes=sum(r.gpsd_fixes for r in rows),
        reproduced=sum(r.reproduced for r in rows),
        extra=sum(r.extra for r in rows),
        rollover_shifted=sum(r.rollover_shifted for r in rows),
        time_resets=sum(r.time_resets for r in rows),
        stale_epochs=sum(r.stale_epochs for r in rows),
    )
