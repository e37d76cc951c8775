"""``lienwatch replay``: recorded NMEA and CAN logs through the same decoders and rules.

The NMEA log goes through :func:`edge.gnss.read_nmea_file` (the agent's NmeaDecoder), the
CAN log (any format python-can reads: candump .log, .asc, .blf, .csv, ...) through
:func:`edge.canbus.read_can_log` and the ``[can]`` section's SignalDecoder, and the two
streams are merged by observation time into one :class:`edge.rules.Engine` built from
the ``[rules]`` section (markets and regions loaded from its files). Alerts and daily
statistics go to stdout; decoder and engine counters go to stderr at the end.
"""

from __future__ import annotations

import argparse
import heapq
import json
import sys
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from edge.errors import ConfigError, EdgeError
from protocol import Alert, AlertState, DailyStats, Fix, NoFix, SignalSample
from protocol.errors import PlacesError

if TYPE_CHECKING:  # the drivers are imported when the command runs, not when it is listed
    from edge.canbus import CanCounters, SignalDecoder
    from edge.rules import Engine

__all__ = ["alert_json", "main", "merge_streams", "stats_json"]

Event = Fix | NoFix | SignalSample


def _iso(time_ms: int) -> str:
    moment = datetime.fromtimestamp(time_ms / 1000.0, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{time_ms % 1000:03d}Z"


def alert_json(alert: Alert) -> dict[str, Any]:
    """The JSON form of an alert record printed by ``replay``."""
    return {
        "rule": alert.rule,
        "severity": alert.severity.label,
        "time": _iso(alert.time_ms),
        "time_ms": alert.time_ms,
        "episode": alert.episode,
        "state": "raised" if alert.state is AlertState.RAISED else "cleared",
        "evidence": dict(alert.evidence),
    }


def stats_json(stats: DailyStats) -> dict[str, Any]:
    """The JSON form of a daily statistics record (``{"stats": {...}}``)."""
    return {
        "stats": {
            "day": stats.day,
            "time_ms": stats.time_ms,
            "distance_m": stats.distance_m,
            "driving_s": stats.driving_s,
            "harsh_accel": stats.harsh_accel,
            "harsh_brake": stats.harsh_brake,
            "odometer_km": stats.odometer_km,
            "final": stats.final,
        }
    }


def merge_streams(*streams: Iterable[Event]) -> Iterator[Event]:
    """Merge time-ordered streams by ``time_ms`` (ties keep the order of the arguments)."""
    return heapq.merge(*streams, key=lambda event: event.time_ms)


def _can_samples(path: Path, decoder: SignalDecoder, counters: CanCounters) -> Iterator[SignalSample]:
    from edge.canbus import read_can_log

    for message in read_can_log(path, counters):
        yield from decoder.decode(message)


def _print_record(record: Alert | DailyStats, out: TextIO, jsonl: bool) -> None:
    if isinstance(record, Alert):
        data = alert_json(record)
        if jsonl:
            out.write(json.dumps(data, separators=(",", ":")) + "\n")
        else:
            evidence = json.dumps(data["evidence"], separators=(",", ":"))
            out.write(
                f"{data['time']}  {data['severity']:<7}  {data['state']:<7}  {record.rule:<22}  "
                f"{record.episode}  {evidence}\n"
            )
    elif jsonl:
        out.write(json.dumps(stats_json(record), separators=(",", ":")) + "\n")
    else:
        s = record
        out.write(
            f"{_iso(s.time_ms)}  stats    {'final' if s.final else 'interim':<7}  {s.day}  "
            f"{s.distance_m / 1000:.1f} km  {s.driving_s / 60:.0f} min driving  "
            f"harsh +{s.harsh_accel}/-{s.harsh_brake}  odometer {s.odometer_km}\n"
        )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lienwatch replay",
        description="Run recorded NMEA / CAN logs through the agent's decoders and rules; print alerts.",
    )
    parser.add_argument("--config", required=True, type=Path, help="agent.toml ([rules] and [can] are used)")
    parser.add_argument("--nmea", required=True, type=Path, help="NMEA 0183 log, one sentence a line")
    parser.add_argument("--can", type=Path, help="CAN log: candump .log, .asc, .blf, .csv (needs [can] in the config)")
    parser.add_argument(
        "--jsonl", action="store_true", help="one JSON object per line (alerts; stats as {'stats': ...})"
    )
    parser.add_argument("--progress", action="store_true", help="progress bar on stderr even when it is not a TTY")
    parser.add_argument("--no-stats", action="store_true", help="do not print daily statistics records")
    return parser


def _inputs(args: argparse.Namespace) -> tuple[Engine, SignalDecoder | None]:
    """The engine (from [rules] and its place files) and the CAN decoder (from [can], if --can).

    Raises:
        EdgeError, PlacesError: the configuration, a file it names or a log path is unusable.
    """
    from edge.canbus import decoder_from_config
    from edge.config import load_replay_config
    from edge.place_files import load_rules_places
    from edge.rules import Engine

    config_path: Path = args.config
    config = load_replay_config(config_path)
    markets, regions = load_rules_places(config.rules)
    decoder = decoder_from_config(config.can) if args.can is not None and config.can is not None else None
    if args.can is not None and decoder is None:
        raise ConfigError(f"{config_path}: --can needs a [can] section (dbc, signal_map)")
    if not args.nmea.is_file():
        raise ConfigError(f"NMEA log {args.nmea} is not a readable file")
    if args.can is not None and not args.can.is_file():
        raise ConfigError(f"CAN log {args.can} is not a readable file")
    return Engine(config.rules, markets=markets, regions=regions), decoder


def _replay(engine: Engine, streams: list[Iterable[Event]], args: argparse.Namespace) -> tuple[int, int]:
    """Feed the merged streams to the engine, printing what it produces; (exit status, events)."""
    progress = None
    if args.progress or sys.stderr.isatty():
        from tqdm import tqdm

        progress = tqdm(unit=" events", file=sys.stderr, mininterval=0.5, disable=None if not args.progress else False)
    status = 0
    events = 0
    try:
        for event in merge_streams(*streams):
            events += 1
            for record in engine.feed(event):
                if not (isinstance(record, DailyStats) and args.no_stats):
                    _print_record(record, sys.stdout, args.jsonl)
            if progress is not None and events % 1000 == 0:
                progress.update(1000)
    except (OSError, EdgeError) as exc:
        print(f"lienwatch replay: {exc}", file=sys.stderr)
        status = 1
    finally:
        if progress is not None:
            progress.update(events % 1000)
            progress.close()
    return status, events


def main(argv: list[str]) -> int:
    """Entry point of ``lienwatch replay`` (0 ok, 1 a log failed mid-way, 2 bad arguments/config)."""
    args = _parser().parse_args(argv)
    from edge.canbus import CanCounters
    from edge.gnss import NmeaDecoder, read_nmea_file

    try:
        engine, decoder = _inputs(args)
    except (EdgeError, PlacesError) as exc:
        print(f"lienwatch replay: {exc}", file=sys.stderr)
        return 2
    nmea_decoder = NmeaDecoder()
    can_counters = decoder.counters if decoder is not None else CanCounters()
    streams: list[Iterable[Event]] = [read_nmea_file(args.nmea, decoder=nmea_decoder)]
    if decoder is not None:
        streams.append(_can_samples(args.can, decoder, can_counters))
    status, events = _replay(engine, streams, args)
    summary = {
        "events": events,
        "gnss": nmea_decoder.counters.as_dict(),
        "can": can_counters.as_dict() if decoder is not None else {},
        "rules": engine.counters.as_dict(),
    }
    print(json.dumps({"replay_counters": summary}, separators=(",", ":")), file=sys.stderr)
    sys.stdout.flush()
    return status
