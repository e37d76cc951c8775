"""Rules engine throughput and its cost per hour of 10 Hz driving, beside NMEA parsing.

Builds one hour of synthetic 10 Hz driving (fixes, CAN speed at 1 Hz, a voltage
heartbeat, door and ignition changes) with every rule switched on (the sample markets
plus 1,000 synthetic ones, the sample region), feeds it through ``edge.rules.Engine``
and measures CPU time. As a baseline measured in the same run, the same hour is written
as NMEA (GGA, GSA, GSV, RMC per epoch) and parsed with ``edge.gnss.NmeaDecoder`` alone.

Run: .venv/bin/python bench/rules_bench.py [--hours 1] [--repeat 3]
"""

from __future__ import annotations

import argparse
import math
import random
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edge.place_files import load_markets_file, load_regions_file  # noqa: E402
from edge.rules import Engine, RulesConfig  # noqa: E402
from protocol import Fix, SignalSample  # noqa: E402
from protocol.places import Place  # noqa: E402

T0 = 1_714_968_000_000  # 2024-05-06 12:00 Asia/Shanghai
START = (31.2200, 121.4400)


def synthetic_hour(hours: float) -> list[Fix | SignalSample]:
    """10 Hz driving in a slow loop through Shanghai with CAN samples interleaved."""
    rng = random.Random(7)
    events: list[Fix | SignalSample] = [
        SignalSample("Vehicle.LowVoltageSystemState", T0, "ON"),
        SignalSample("Vehicle.Cabin.Door.Row1.DriverSide.IsOpen", T0, False),
    ]
    lat, lon = START
    heading = 0.0
    speed = 12.0
    n = int(hours * 36_000)
    for i in range(1, n + 1):
        t = T0 + i * 100
        heading += 0.002
        speed = min(25.0, max(0.0, speed + rng.uniform(-0.3, 0.3)))
        lat += speed * 0.1 * math.cos(heading) / 111_195.0
        lon += speed * 0.1 * math.sin(heading) / (111_195.0 * math.cos(math.radians(lat)))
        events.append(Fix(t, lat, lon, speed_mps=speed, hdop=0.9, sats_used=10, mean_snr=41.0 + rng.uniform(-2, 2)))
        if i % 10 == 0:
            events.append(SignalSample("Vehicle.Speed", t, round(speed * 3.6, 1)))
        if i % 600 == 0:
            events.append(SignalSample("Vehicle.LowVoltageBattery.CurrentVoltage", t, 13.9))
        if i % 6000 == 0:
            events.append(SignalSample("Vehicle.TraveledDistance", t, 20_000.0 + i / 1000))
    return events


def _nmea(body: str) -> str:
    checksum = 0
    for ch in body:
        checksum ^= ord(ch)
    return f"${body}*{checksum:02X}\r\n"


def _ddmm(value: float, width: int) -> str:
    degrees = int(value)
    return f"{degrees:0{width}d}{(value - degrees) * 60:07.4f}"


def as_nmea(fixes: list[Fix]) -> list[bytes]:
    """GGA, GSA, GSV, RMC lines for each fix (what a 10 Hz receiver would send)."""
    lines: list[bytes] = []
    for f in fixes:
        utc = datetime.fromtimestamp(f.time_ms / 1000.0, UTC)
        hms = utc.strftime("%H%M%S") + f".{utc.microsecond // 10000:02d}"
        lat, lon = _ddmm(f.lat, 2), _ddmm(f.lon, 3)
        knots = (f.speed_mps or 0.0) / 0.514444
        lines += [
            _nmea(f"GPGGA,{hms},{lat},N,{lon},E,1,10,0.9,12.0,M,0.0,M,,").encode(),
            _nmea("GPGSA,A,3,03,04,05,06,07,08,09,10,,,,,1.5,0.9,1.2").encode(),
            _nmea("GPGSV,1,1,04,03,40,100,41,04,40,130,42,05,40,160,40,06,40,190,41").encode(),
            _nmea(f"GPRMC,{hms},A,{lat},N,{lon},E,{knots:.2f},0.0,{utc.strftime('%d%m%y')},,,A").encode(),
        ]
    return lines


def best_cpu(fn, repeat: int) -> float:  # type: ignore[no-untyped-def]
    """Smallest CPU time (process_time) of ``repeat`` runs of ``fn``."""
    best = math.inf
    for _ in range(repeat):
        start = time.process_time()
        fn()
        best = min(best, time.process_time() - start)
    return best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hours", type=float, default=1.0, help="hours of 10 Hz driving to generate")
    parser.add_argument("--repeat", type=int, default=3, help="runs per measurement (best is kept)")
    args = parser.parse_args()

    events = synthetic_hour(args.hours)
    fixes = [e for e in events if isinstance(e, Fix)]
    rng = random.Random(11)
    markets = load_markets_file(ROOT / "edge" / "data" / "markets.sample.toml") + [
        Place(f"m{i}", f"synthetic {i}", 30.0 + rng.random() * 2, 120.5 + rng.random() * 2, 400.0) for i in range(1000)
    ]
    regions = load_regions_file(ROOT / "edge" / "data" / "regions.sample.toml")
    config = RulesConfig()
    records: list[object] = []

    def run_engine() -> None:
        engine = Engine(config, markets=markets, regions=regions)
        feed = engine.feed
        for event in events:
            records.extend(feed(event))

    engine_cpu = best_cpu(run_engine, args.repeat)

    lines = as_nmea(fixes)
    parse_cpu = math.nan
    parsed = 0
    try:
        from edge.gnss import NmeaDecoder

        def run_parser() -> None:
            nonlocal parsed
            decoder = NmeaDecoder()
            count = 0
            for line in lines:
                count += len(decoder.feed_line(line))
            count += len(decoder.flush())
            parsed = count

        parse_cpu = best_cpu(run_parser, args.repeat)
    except ImportError as exc:
        print(f"edge.gnss.NmeaDecoder not available ({exc}); no parsing baseline")

    hours = args.hours
    print(f"data: {hours:g} h of 10 Hz driving = {len(fixes):,} fixes + {len(events) - len(fixes):,} CAN samples")
    print(f"      rules on: all 7 ({len(markets):,} markets, {len(regions)} region); records out per run: "
          f"{len(records) // args.repeat}")
    print(f"engine : {len(events) / engine_cpu:,.0f} events/s   {engine_cpu / hours:.3f} CPU s per hour of data "
          f"({engine_cpu / hours / 36:.2f}% of one core in real time)")
    if not math.isnan(parse_cpu):
        print(f"NMEA   : {len(lines) / parse_cpu:,.0f} lines/s ({parsed:,} epochs)   "
              f"{parse_cpu / hours:.3f} CPU s per hour of data (NmeaDecoder alone, same epochs)")
        print(f"ratio  : engine / NMEA parsing = {engine_cpu / parse_cpu:.2f}")
    print(f"rerun  : .venv/bin/python bench/rules_bench.py --hours {hours:g} --repeat {args.repeat}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
