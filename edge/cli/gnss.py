"""``lienwatch gnss``: fixes from an NMEA receiver or log, one line per epoch (our ``gpspipe -w``)."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import TextIO

from edge.errors import EdgeError
from edge.gnss import DEFAULT_EARLIEST_DATE, GnssRecord, GnssSource, NmeaDecoder, read_nmea_file
from protocol import Fix

__all__ = ["main", "record_to_json"]


def _iso_time(time_ms: int) -> str:
    stamp = dt.datetime.fromtimestamp(time_ms / 1000, tz=dt.UTC)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{time_ms % 1000:03d}Z"


def _rounded(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def record_to_json(record: GnssRecord) -> dict[str, object]:
    """The JSON object printed for one epoch.

    Keys: ``time`` (ISO 8601 UTC, milliseconds, ``Z``), ``mode`` (``none``/``2d``/``3d``),
    ``lat``, ``lon`` (degrees), ``alt`` (m above mean sea level), ``speed_mps``, ``course_deg``,
    ``hdop``, ``sats`` (used), ``mean_snr`` (dB-Hz); a no-fix epoch has null position fields
    and adds ``sats_in_view``.
    """
    if isinstance(record, Fix):
        return {
            "time": _iso_time(record.time_ms),
            "mode": record.mode.label,
            "lat": round(record.lat, 9),
            "lon": round(record.lon, 9),
            "alt": _rounded(record.alt_m, 3),
            "speed_mps": _rounded(record.speed_mps, 3),
            "course_deg": _rounded(record.course_deg, 3),
            "hdop": record.hdop,
            "sats": record.sats_used,
            "mean_snr": record.mean_snr,
        }
    return {
        "time": _iso_time(record.time_ms),
        "mode": "none",
        "lat": None,
        "lon": None,
        "alt": None,
        "speed_mps": None,
        "course_deg": None,
        "hdop": None,
        "sats": None,
        "mean_snr": record.mean_snr,
        "sats_in_view": record.sats_in_view,
    }


def _text_line(record: GnssRecord) -> str:
    row = record_to_json(record)
    if row["mode"] == "none":
        return f"{row['time']}  no fix  in view {row['sats_in_view']}  snr {row['mean_snr']}"
    return (
        f"{row['time']}  {row['mode']}  {row['lat']:.7f} {row['lon']:.7f}  alt {row['alt']}  "
        f"{row['speed_mps']} m/s  {row['course_deg']} deg  hdop {row['hdop']}  "
        f"sats {row['sats']}  snr {row['mean_snr']}"
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lienwatch gnss",
        description=(
            "Read NMEA 0183 from a serial URL or a log file and print one line per epoch. "
            "Counters go to stderr on exit."
        ),
        epilog="examples: lienwatch gnss --device /dev/ttyS1 --baud 9600 --jsonl | lienwatch gnss --file drive.nmea",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--device", metavar="URL", help="pyserial URL or device path (/dev/ttyS1, a pty, socket://h:p)")
    source.add_argument("--file", metavar="PATH", help="plain NMEA log ('#' lines are comments)")
    parser.add_argument("--baud", type=int, default=9600, help="line speed (default 9600)")
    parser.add_argument("--jsonl", action="store_true", help="print one JSON object per epoch")
    parser.add_argument("--reopen", action="store_true", help="keep reopening the device when it disappears")
    parser.add_argument(
        "--idle-exit",
        type=float,
        metavar="S",
        help="stop after S seconds without a record (default: never; 1 s for loop://)",
    )
    parser.add_argument(
        "--earliest-date",
        type=dt.date.fromisoformat,
        default=DEFAULT_EARLIEST_DATE,
        metavar="YYYY-MM-DD",
        help=f"dates before this are receiver defaults, not time (default {DEFAULT_EARLIEST_DATE})",
    )
    return parser


def _from_device(source: GnssSource, idle_exit: float | None) -> Iterator[GnssRecord]:
    last = time.monotonic()
    while not source.at_end:
        records = source.read(timeout=0.5)
        if records:
            last = time.monotonic()
            yield from records
        elif idle_exit is not None and time.monotonic() - last >= idle_exit:
            yield from source.decoder.flush()
            return


def _emit(records: Iterable[GnssRecord], out: TextIO, jsonl: bool) -> None:
    for record in records:
        out.write((json.dumps(record_to_json(record)) if jsonl else _text_line(record)) + "\n")
        out.flush()


def main(argv: list[str]) -> int:
    """Run ``lienwatch gnss``; returns the process exit code."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="lienwatch gnss: %(message)s", stream=sys.stderr)
    decoder = NmeaDecoder(earliest_date=args.earliest_date)
    source: GnssSource | None = None
    code = 0
    try:
        if args.file is not None or (args.device and os.path.isfile(args.device)):
            _emit(read_nmea_file(args.file or args.device, decoder=decoder), sys.stdout, args.jsonl)
        else:
            source = GnssSource(args.device, args.baud, decoder=decoder, reopen=args.reopen)
            source.open()
            idle = args.idle_exit
            if idle is None and args.device.startswith("loop://"):
                idle = 1.0
            _emit(_from_device(source, idle), sys.stdout, args.jsonl)
    except BrokenPipeError:  # pragma: no cover - the reader went away (| head)
        return 0
    except (EdgeError, OSError) as exc:
        print(f"lienwatch gnss: {exc}", file=sys.stderr)
        code = 1
    except KeyboardInterrupt:
        code = 130
    finally:
        if source is not None:
            source.close()
    print(json.dumps({"counters": decoder.counters.as_dict()}), file=sys.stderr)
    return code
