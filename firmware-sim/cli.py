"""The simulator package's command line: ``lienwatch sim`` and ``lienwatch demo``.

``lienwatch sim``: run a scenario, record it to log files, generate a constant load, list or
inspect scenarios. ``lienwatch demo``: the whole chain, run by :mod:`firmware_sim.rig.demo`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

from .errors import SimError
from .fleet import FleetGenerator, FleetKeys, run_fleet
from .load import run_load
from .record import RecordPlan, record_to_files
from .runner import iso_utc, run_scenario, stop_on_signals
from .scenario import list_scenarios, load_scenario

__all__ = ["demo_main", "main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lienwatch sim",
        description="Vehicle simulator: an NMEA GNSS receiver and an SLCAN CAN adapter on pseudo-terminals.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="play a scenario on two pseudo-terminals")
    run.add_argument("--scenario", required=True, help="shipped scenario NAME or a TOML file")
    run.add_argument("--gnss-link", required=True, type=Path, help="symlink path for the NMEA pty")
    run.add_argument("--can-link", required=True, type=Path, help="symlink path for the SLCAN pty")
    run.add_argument(
        "--speed", type=float, help="scenario seconds per wall second for the whole run (overrides the scenario)"
    )
    run.add_argument(
        "--speed-factor", type=float, default=1.0, help="multiply the scenario's speeds (1x windows stay 1x)"
    )
    run.add_argument("--events-jsonl", help="write JSON lines of the clock and events here ('-' = stdout)")
    run.add_argument("--loop", action="store_true", help="start again at the end (scenario clock continues)")
    run.add_argument(
        "--end-now",
        action="store_true",
        help="play the scenario on today's calendar: moved by whole days, the car parked until the play ends "
        "(docs/simulator.md, One clock)",
    )
    run.add_argument(
        "--start-now",
        action="store_true",
        help="start the scenario the moment its clock starts (live vehicle time for a 1x scenario; "
        "docs/simulator.md, One clock)",
    )
    run.add_argument(
        "--hold",
        action="store_true",
        help="after the end keep the car parked and reporting at 1x until stopped (no invented unplug)",
    )
    run.add_argument(
        "--wait-open",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="hold the scenario clock until the host opens the SLCAN channel (at most SECONDS)",
    )
    run.add_argument("-v", "--verbose", action="store_true", help="log SLCAN errors and signals to stderr")

    defaults = RecordPlan()
    record = sub.add_parser(
        "record",
        help="render a scenario offline into an NMEA log and a candump log (scenario clock, no ptys)",
        description="Render a whole scenario as fast as the CPU allows into a plain NMEA log and a candump "
        "log stamped on the scenario clock. Dense (every receiver epoch, one CAN round per epoch) while "
        "moving, idling or near an event; sparse while parked (one epoch per --parked-interval, the bus "
        "every min(interval, 20 s); beyond 90 s a box that sleeps between wakes). Prints a JSON summary. "
        "See docs/simulator.md.",
    )
    record.add_argument("--scenario", required=True, help="shipped scenario NAME or a TOML file")
    record.add_argument("--nmea", required=True, type=Path, help="NMEA log to write (one sentence a line)")
    record.add_argument("--can", required=True, type=Path, help="candump log to write (python-can LogReader reads it)")
    record.add_argument(
        "--gnss-hz", type=float, help="epochs per scenario second while dense, 0.1-10 (default: the scenario's rate)"
    )
    record.add_argument(
        "--parked-interval",
        type=float,
        default=defaults.parked_interval_s,
        metavar="SECONDS",
        help=f"one epoch per SECONDS while parked away from events, 1-3600 (default {defaults.parked_interval_s:g})",
    )
    record.add_argument(
        "--event-margin",
        type=float,
        default=defaults.event_margin_s,
        metavar="SECONDS",
        help=f"dense recording this long either side of every event, 0-3600 (default {defaults.event_margin_s:g})",
    )
    record.add_argument("--channel", default=defaults.channel, help="CAN interface name in the candump log")

    load = sub.add_parser("load", help="constant CAN (and GNSS) load for benchmarks; prints JSON at the end")
    load.add_argument("--can-link", required=True, type=Path, help="symlink path for the SLCAN pty")
    load.add_argument("--fps", required=True, type=float, help="frames per second while the channel is open")
    load.add_argument("--mapped-share", type=float, default=0.05, help="fraction of DBC messages (default 0.05)")
    load.add_argument("--seconds", type=float, help="stop this long after the host opened the channel")
    load.add_argument("--gnss-link", type=Path, help="also publish an NMEA receiver here")
    load.add_argument("--gnss-hz", type=float, default=10.0, help="its epoch rate, 1-10 (default 10)")
    load.add_argument("--open-timeout", type=float, default=60.0, help="give up if nobody opens the channel (s)")

    fleet = sub.add_parser(
        "fleet",
        help="a fleet of devices publishing signed 1 Hz batches to a broker; prints JSON at the end",
        description="N devices with keys derived from --seed publish signed one-minute batches of 1 Hz fixes "
        "(occasionally with an alert) at QoS 1, RATE batches per second in total, for DURATION seconds. "
        "--keys-out writes the public keys (JSON lines) for the collector's registry.",
    )
    fleet.add_argument("--devices", type=int, required=True, help="fleet size")
    fleet.add_argument("--rate", type=float, required=True, help="batches per second, whole fleet")
    fleet.add_argument("--duration", type=float, required=True, help="seconds to publish (0: keys only)")
    fleet.add_argument("--host", default="127.0.0.1", help="broker host (default 127.0.0.1)")
    fleet.add_argument("--port", type=int, default=1883, help="broker port (default 1883)")
    fleet.add_argument("--seed", default="lienwatch-fleet", help="key seed: the same seed, the same keys")
    fleet.add_argument("--prefix", default="fleet", help="device id prefix (default fleet)")
    fleet.add_argument("--fixes", type=int, default=60, help="fixes per batch at 1 Hz (default 60)")
    fleet.add_argument("--alert-share", type=float, default=0.01, help="share of batches with an alert (0.01)")
    fleet.add_argument("--first-seq", type=int, default=1, help="every device's first sequence number (default 1)")
    fleet.add_argument("--keys-out", type=Path, help="write the public keys here as JSON lines first")

    sub.add_parser("list", help="list the shipped scenarios")

    show = sub.add_parser("show", help="print a scenario's compiled timeline as JSON lines")
    show.add_argument("scenario", help="shipped scenario NAME or a TOML file")
    show.add_argument("--speed", type=float, help="as for run")
    show.add_argument("--speed-factor", type=float, default=1.0, help="as for run")
    return parser


@contextlib.contextmanager
def _events_stream(target: str | None) -> Iterator[TextIO | None]:
    if target is None:
        yield None
    elif target == "-":
        yield sys.stdout
    else:
        with open(target, "w", encoding="utf-8") as handle:
            yield handle


def _show(name: str, speed: float | None, factor: float) -> int:
    scenario = load_scenario(name)
    pace = scenario.pace(override=speed, factor=factor)
    header = {
        "scenario": scenario.name,
        "description": scenario.description,
        "start": iso_utc(scenario.start_ms),
        "end": iso_utc(scenario.end_ms),
        "duration_s": scenario.duration_ms / 1000,
        "planned_wall_s": round(pace.wall_duration_s, 3),
        "segments": len(scenario.segments),
    }
    print(json.dumps(header))
    for event in scenario.events:
        record = {
            "event": event.name,
            "scenario_time": iso_utc(event.time_ms),
            "wall_offset_s": round(pace.wall_at(event.time_ms), 3),
            "speed": pace.speed_at(event.time_ms),
            "segment": event.segment,
            **event.data,
        }
        print(json.dumps(record))
    return 0


def _fleet(args: argparse.Namespace, stop: threading.Event) -> int:
    keys = FleetKeys(args.devices, args.seed, args.prefix)
    generator = FleetGenerator(keys, args.fixes, args.alert_share, args.first_seq)
    if args.keys_out is not None:
        keys.write_public_keys(args.keys_out)
    if args.duration == 0:
        return 0
    with stop_on_signals(stop):
        report = run_fleet(
            generator, host=args.host, port=args.port, rate=args.rate, duration_s=args.duration, stop=stop
        )
    print(json.dumps(report.as_dict()), flush=True)
    return 0 if report.acknowledged == report.published else 1


def main(argv: list[str]) -> int:
    """Entry point of ``lienwatch sim``."""
    parser = _parser()
    args = parser.parse_args(argv)
    if getattr(args, "verbose", False):
        logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="sim: %(message)s")
    try:
        if args.command == "list":
            for name in list_scenarios():
                print(f"{name:<20} {load_scenario(name).description}")
            return 0
        if args.command == "show":
            try:
                return _show(args.scenario, args.speed, args.speed_factor)
            except BrokenPipeError:  # `lienwatch sim show X | head`: the reader has seen enough
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
                return 0
        if args.command == "record":
            plan = RecordPlan(
                gnss_hz=args.gnss_hz,
                parked_interval_s=args.parked_interval,
                event_margin_s=args.event_margin,
                channel=args.channel,
            )
            recorded = record_to_files(load_scenario(args.scenario), args.nmea, args.can, plan)
            print(json.dumps(recorded.as_dict()), flush=True)
            return 0
        stop = threading.Event()
        if args.command == "fleet":
            return _fleet(args, stop)
        if args.command == "run":
            if args.loop and (args.end_now or args.hold):
                parser.error("--loop cannot be combined with --end-now or --hold")
            if args.start_now and args.end_now:
                parser.error("--start-now cannot be combined with --end-now")
            scenario = load_scenario(args.scenario)
            with stop_on_signals(stop), _events_stream(args.events_jsonl) as events:
                run_scenario(
                    scenario,
                    gnss_link=args.gnss_link,
                    can_link=args.can_link,
                    speed=args.speed,
                    speed_factor=args.speed_factor,
                    events_out=events,
                    loop=args.loop,
                    wait_open=args.wait_open,
                    stop=stop,
                    end_now=args.end_now,
                    hold=args.hold,
                    start_now=args.start_now,
                )
            return 0
        with stop_on_signals(stop):
            report = run_load(
                can_link=args.can_link,
                fps=args.fps,
                mapped_share=args.mapped_share,
                seconds=args.seconds,
                gnss_link=args.gnss_link,
                gnss_hz=args.gnss_hz,
                open_timeout=args.open_timeout,
                stop=stop,
                ready_out=sys.stderr,
            )
        print(json.dumps(report.as_dict()), flush=True)
        return 0 if report.reason != "never_opened" else 1
    except SimError as exc:
        print(f"lienwatch sim: {exc}", file=sys.stderr)
        return 2
    except ValueError as exc:
        print(f"lienwatch sim: {exc}", file=sys.stderr)
        return 2


def demo_main(argv: list[str]) -> int:
    """Entry point of ``lienwatch demo`` (the whole chain; needs the ``edge`` and ``collector`` packages)."""
    # Imported here, not at the top: ``lienwatch sim`` runs where only the simulator is
    # installed, and the rig looks for the agent's data files when it is imported.
    from .rig import demo

    return demo.main(argv)
