"""``lienwatch can``: decoded canonical CAN signals from a live bus or a recorded log.

Prints one line per sample on stdout (JSON with ``--jsonl``: ``time`` ISO 8601 UTC with
``Z``, ``name``, ``value``) and the counters as one JSON object on stderr on exit.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

from edge.canbus import (
    SAMPLE_DBC,
    SAMPLE_MAP,
    CanCounters,
    CanSource,
    SignalDecoder,
    read_can_log,
)
from edge.errors import EdgeError
from protocol import SignalSample

__all__ = ["format_sample", "main"]


def _iso_utc(time_ms: int) -> str:
    stamp = dt.datetime.fromtimestamp(time_ms / 1000, tz=dt.UTC)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{time_ms % 1000:03d}Z"


def format_sample(sample: SignalSample, *, jsonl: bool) -> str:
    """One output line for ``sample`` (JSON object, or ``TIME NAME VALUE`` text)."""
    if jsonl:
        return json.dumps({"time": _iso_utc(sample.time_ms), "name": sample.name, "value": sample.value})
    return f"{_iso_utc(sample.time_ms)} {sample.name} {json.dumps(sample.value)}"


def _bus_option(text: str) -> tuple[str, Any]:
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        value: Any = json.loads(raw)
    except ValueError:
        value = raw
    return key, value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lienwatch can",
        description="Read CAN frames through DBC files and a signal map; print canonical samples.",
        epilog=(
            "examples:\n"
            "  lienwatch can --interface slcan --channel /tmp/lw-can --bitrate 500000 --jsonl\n"
            "  lienwatch can --log drive.log --dbc car.dbc --map car_map.toml --jsonl\n"
            "Without --dbc/--map the sample generic-car DBC and map are used (docs/signals.md)."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--interface", help="python-can interface: socketcan, slcan, virtual, ...")
    parser.add_argument("--channel", help="channel: can0, a serial/pty path for slcan, a virtual channel name")
    parser.add_argument("--bitrate", type=int, help="bus bitrate in bit/s (e.g. 500000)")
    parser.add_argument("--dbc", action="append", type=Path, help="DBC file (repeat for several)")
    parser.add_argument("--map", type=Path, help="signal map TOML")
    parser.add_argument("--jsonl", action="store_true", help="one JSON object per sample")
    parser.add_argument("--log", type=Path, help="read a recorded log (candump .log, .asc, .blf, .csv) instead")
    parser.add_argument("--bus-option", action="append", type=_bus_option, default=[], metavar="KEY=VALUE",
                        help="extra can.Bus argument (value parsed as JSON when it can be)")
    parser.add_argument("--max-samples", type=int, help="stop after this many samples")
    parser.add_argument("--duration", type=float, help="stop after this many seconds (live bus)")
    parser.add_argument("--wait-for-bus", action="store_true",
                        help="keep retrying when the bus cannot be opened at start (default: exit 1)")
    return parser


class _Stop:
    """Set by SIGTERM/SIGINT; the read loop checks it between reads."""

    def __init__(self) -> None:
        self.requested = False

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        self.requested = True


def _emit(samples: Iterable[SignalSample], out: TextIO, *, jsonl: bool) -> int:
    count = 0
    for sample in samples:
        out.write(format_sample(sample, jsonl=jsonl) + "\n")
        count += 1
    if count:
        out.flush()
    return count


def _run_log(args: argparse.Namespace, decoder: SignalDecoder, out: TextIO, stop: _Stop) -> int:
    emitted = 0
    for msg in read_can_log(args.log, decoder.counters):
        emitted += _emit(decoder.decode(msg), out, jsonl=args.jsonl)
        if stop.requested or (args.max_samples is not None and emitted >= args.max_samples):
            break
    return 0


def _run_live(args: argparse.Namespace, decoder: SignalDecoder, out: TextIO, stop: _Stop) -> int:
    source = CanSource(args.interface, args.channel, bitrate=args.bitrate, decoder=decoder, **dict(args.bus_option))
    try:
        if not source.is_open and not args.wait_for_bus:
            print(f"lienwatch can: {source.last_error} (use --wait-for-bus to keep retrying)", file=sys.stderr)
            return 1
        deadline = None if args.duration is None else time.monotonic() + args.duration
        emitted = 0
        while not stop.requested:
            remaining = 0.2 if deadline is None else min(0.2, deadline - time.monotonic())
            if remaining <= 0:
                break
            emitted += _emit(source.read(timeout=remaining), out, jsonl=args.jsonl)
            if args.max_samples is not None and emitted >= args.max_samples:
                break
        return 0
    finally:
        source.close()


def main(argv: list[str]) -> int:
    """Entry point of ``lienwatch can``; returns the process exit code."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.log is None and (not args.interface or not args.channel):
        parser.error("--interface and --channel are required unless --log is given")
    if args.max_samples is not None and args.max_samples < 1:
        parser.error("--max-samples must be at least 1")
    dbc_paths = args.dbc or [SAMPLE_DBC]
    map_path = args.map or SAMPLE_MAP
    counters = CanCounters()
    stop = _Stop()
    logging.basicConfig(level=logging.WARNING, format="lienwatch can: %(message)s")
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)} if in_main_thread else {}
    code = 0
    try:
        decoder = SignalDecoder.from_files(dbc_paths, map_path)
        counters = decoder.counters
        runner = _run_log if args.log is not None else _run_live
        code = runner(args, decoder, sys.stdout, stop)
    except EdgeError as exc:
        print(f"lienwatch can: {exc}", file=sys.stderr)
        code = 1
    except BrokenPipeError:
        # The reader went away (e.g. piped into head): stop quietly, still report counters.
        with contextlib.suppress(OSError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        print(json.dumps({"counters": counters.as_dict()}), file=sys.stderr, flush=True)
    return code
