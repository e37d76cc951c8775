"""Cellular bytes per vehicle per day: every fix uploaded (the old behaviour) vs the reporting policy.

What it does, for each scenario, in one run:

1. renders the first ``--hours`` of the scenario with the simulator's recorder
   (``firmware_sim.record.render``) as a receiver that runs all day: one epoch per receiver
   period while driving *and* parked (``parked_interval_s`` = 1 s), the CAN bus alongside;
2. decodes the logs with the agent's own NMEA decoder and CAN signal decoder and feeds one
   rules engine (the sample DBC, signal map and places, Asia/Shanghai) with them;
3. sends what the engine saw and produced through two upload paths side by side, each a
   :class:`edge.reporting.ReportingPolicy` and an :class:`edge.batcher.Batcher` on
   observation time, and seals every closed batch (CBOR + COSE_Sign1, Ed25519) exactly as
   the agent does:

   * **before**: ``[reporting] enabled = false`` (every decoded fix and sample goes up);
   * **policy**: the default ``[reporting]`` settings.

Bytes on the wire per batch: the signed message, MQTT 5 PUBLISH framing (fixed header,
remaining length, topic, packet id, property length) and its PUBACK, and TLS 1.3 record
overhead estimated as 22 bytes (5 header + 16 tag + 1 content type) per record of at most
16 KiB, for both packets. Keepalive pings and state messages are the same for both paths
and reported apart.

It also reports, on moving stretches (full-rate fixes at or above the policy's parked
speed), the distance from each full-rate fix to the uploaded track (the uploaded fixes'
polyline), 95th percentile and maximum, and checks that both paths upload the same alert
records (rule, time, episode, state, evidence) — the rules run on full-rate data either way.

Run: .venv/bin/python bench/data_budget_bench.py [--hours 24] [--gnss-hz 1]
         [--scenario commute_week --scenario parked_in_market] [--keepalive-s 60]
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from edge.batcher import Batcher, ClosedBatch  # noqa: E402
from edge.canbus import decoder_from_config, read_can_log  # noqa: E402
from edge.cli.replay import merge_streams  # noqa: E402
from edge.config import BatchSettings, ReportingSettings, load_replay_config  # noqa: E402
from edge.gnss import NmeaDecoder, read_nmea_file  # noqa: E402
from edge.place_files import load_rules_places  # noqa: E402
from edge.reporting import ReportingPolicy, segment_distance_m  # noqa: E402
from edge.rules import Engine  # noqa: E402
from firmware_sim import load_scenario  # noqa: E402
from firmware_sim.record import RecordPlan, candump_line, render  # noqa: E402
from firmware_sim.simulation import CanCatalog  # noqa: E402
from protocol import Alert, Batch, DailyStats, Fix, SignalSample, batch_topic, seal_batch  # noqa: E402

DATA = REPO / "edge" / "data"
DEVICE = "bench-budget"
TLS_RECORD_OVERHEAD = 22
TLS_RECORD_MAX = 16_384
PUBACK_BYTES = 4  # MQTT 5 PUBACK with reason "success" and no properties
PING_BYTES = 2 + 2  # PINGREQ + PINGRESP


def tls_bytes(plain: int) -> int:
    """Bytes on the wire for ``plain`` application bytes over TLS 1.3 (record overhead estimated)."""
    return plain + TLS_RECORD_OVERHEAD * max(1, math.ceil(plain / TLS_RECORD_MAX))


def publish_bytes(topic: str, payload: int) -> int:
    """An MQTT 5 QoS 1 PUBLISH: fixed header + remaining length + topic + packet id + properties."""
    remaining = 2 + len(topic.encode()) + 2 + 1 + payload
    length_bytes = 1 if remaining < 128 else 2 if remaining < 16_384 else 3 if remaining < 2_097_152 else 4
    return 1 + length_bytes + remaining


@dataclass
class UploadPath:
    """One upload path: a reporting policy, a batcher and the sealed bytes it produced."""

    name: str
    policy: ReportingPolicy
    batcher: Batcher
    key: Ed25519PrivateKey
    topic: str = field(default_factory=lambda: batch_topic(DEVICE))
    seq: int = 0
    batches: int = 0
    message_bytes: int = 0
    wire_bytes: int = 0
    fixes: list[Fix] = field(default_factory=list)
    samples: int = 0
    alerts: list[tuple[Any, ...]] = field(default_factory=list)
    stats: int = 0

    def offer(self, record: Fix | SignalSample | Alert | DailyStats, now_s: float, active: bool) -> None:
        for item in self.policy.offer(record):
            self._seal(self.batcher.add(item, now_s, active=active))
        self.batcher.set_idle_max_age(self.policy.batch_max_age_s)

    def poll(self, now_s: float, active: bool) -> None:
        self._seal(self.batcher.poll(now_s, active=active))

    def flush(self) -> None:
        self._seal(self.batcher.flush())

    def _seal(self, closed: list[ClosedBatch]) -> None:
        for batch in closed:
            self.seq += 1
            message = seal_batch(
                Batch(
                    device_id=DEVICE,
                    boot_id=b"\x01" * 16,
                    seq=self.seq,
                    created_ms=(batch.fixes or batch.samples or batch.alerts or batch.stats)[-1].time_ms,
                    fixes=batch.fixes,
                    samples=batch.samples,
                    alerts=batch.alerts,
                    stats=batch.stats,
                    counters={},
                ),
                self.key,
                self.topic,
            )
            self.batches += 1
            self.message_bytes += len(message)
            self.wire_bytes += tls_bytes(publish_bytes(self.topic, len(message))) + tls_bytes(PUBACK_BYTES)
            self.fixes += batch.fixes
            self.samples += len(batch.samples)
            self.stats += len(batch.stats)
            self.alerts += [(a.rule, a.time_ms, a.episode, a.state, sorted(a.evidence.items())) for a in batch.alerts]


def record_logs(name: str, hours: float, gnss_hz: float | None, folder: Path) -> tuple[Path, Path, int]:
    """The first ``hours`` of a scenario as an NMEA log and a candump log; (nmea, can, epochs)."""
    scenario = load_scenario(name)
    plan = RecordPlan(gnss_hz=gnss_hz, parked_interval_s=1.0)
    end_ms = scenario.start_ms + int(hours * 3_600_000)
    nmea_path, can_path = folder / f"{name}.nmea", folder / f"{name}.log"
    steps = 0
    with nmea_path.open("wb") as nmea, can_path.open("w") as can_log:
        for step in render(scenario, plan, CanCatalog(scenario.can.dbc), Counter()):
            if step.time_ms > end_ms:
                break
            steps += 1
            nmea.write(step.nmea)
            can_log.write("".join(candump_line(frame, step.time_ms) + "\n" for frame in step.frames))
            if steps % 20_000 == 0:
                print(f"  {name}: rendered {(step.time_ms - scenario.start_ms) / 3_600_000:.1f} h", file=sys.stderr)
    return nmea_path, can_path, steps


def track_errors(full: list[Fix], uploaded: list[Fix], moving_mps: float) -> list[float]:
    """Distance (m) from each moving full-rate fix to the uploaded segment spanning its time."""
    up = sorted(uploaded, key=lambda f: f.time_ms)
    out: list[float] = []
    j = 0
    for fix in full:
        if fix.speed_mps is None or fix.speed_mps < moving_mps:
            continue
        while j + 1 < len(up) and up[j + 1].time_ms < fix.time_ms:
            j += 1
        if j + 1 >= len(up) or fix.time_ms < up[j].time_ms:
            continue
        a, b = up[j], up[j + 1]
        cos = math.cos(math.radians(a.lat))
        k = 6_371_008.8 * math.pi / 180

        def xy(f: Fix, a: Fix = a, cos: float = cos) -> tuple[float, float]:
            return (f.lon - a.lon) * k * cos, (f.lat - a.lat) * k  # noqa: B023

        (bx, by), (px, py) = xy(b), xy(fix)
        out.append(segment_distance_m(px, py, bx, by))
    return out


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]


def run_scenario(name: str, args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    started = time.perf_counter()
    nmea_path, can_path, steps = record_logs(name, args.hours, args.gnss_hz, folder)
    config_path = folder / "agent.toml"
    config_path.write_text(
        '[can]\ninterface = "virtual"\nchannel = "bench"\n'
        f'dbc = ["{DATA / "generic_car.dbc"}"]\nsignal_map = "{DATA / "generic_car_map.toml"}"\n'
        f'\n[rules]\ntimezone = "Asia/Shanghai"\nmarkets_file = "{DATA / "places.sample.toml"}"\n'
    )
    config = load_replay_config(config_path)
    assert config.can is not None
    markets, regions = load_rules_places(config.rules)
    engine = Engine(config.rules, markets=markets, regions=regions)
    decoder = decoder_from_config(config.can)
    key = Ed25519PrivateKey.generate()
    batch = BatchSettings()
    paths = [
        UploadPath("before", ReportingPolicy(ReportingSettings(enabled=False)), Batcher(batch), key),
        UploadPath("policy", ReportingPolicy(ReportingSettings()), Batcher(batch), key),
    ]
    full_fixes: list[Fix] = []
    can_stream = (s for m in read_can_log(can_path) for s in decoder.decode(m))
    events = 0
    first_ms = last_ms = None
    for event in merge_streams(read_nmea_file(nmea_path, decoder=NmeaDecoder()), can_stream):
        events += 1
        now_s = event.time_ms / 1000.0
        first_ms = event.time_ms if first_ms is None else first_ms
        last_ms = event.time_ms
        produced = engine.feed(event)
        active = bool(engine.active_rules)
        if isinstance(event, Fix):
            full_fixes.append(event)
        for path in paths:
            if isinstance(event, (Fix, SignalSample)):
                path.offer(event, now_s, active)
            for item in produced:
                if isinstance(item, (Alert, DailyStats)):
                    path.offer(item, now_s, active)
            path.poll(now_s, active)
    for path in paths:
        path.flush()
    assert first_ms is not None
    assert last_ms is not None
    days = (last_ms - first_ms) / 86_400_000
    keepalive = (86_400 / args.keepalive_s) * 2 * tls_bytes(2) if args.keepalive_s else 0
    before, policy = paths
    errors = track_errors(full_fixes, policy.fixes, ReportingSettings().parked_speed_mps)
    return {
        "scenario": name,
        "hours": round(days * 24, 2),
        "receiver_epochs": steps,
        "events": events,
        "paths": {
            p.name: {
                "batches": p.batches,
                "fixes": len(p.fixes),
                "samples": p.samples,
                "alerts": len(p.alerts),
                "stats": p.stats,
                "message_bytes_per_day": round(p.message_bytes / days),
                "wire_bytes_per_day": round(p.wire_bytes / days),
            }
            for p in paths
        },
        "ratio": round(before.wire_bytes / max(1, policy.wire_bytes), 1),
        "keepalive_bytes_per_day": round(keepalive),
        "moving_fixes": len(errors),
        "track_error_p95_m": round(percentile(errors, 0.95), 2),
        "track_error_max_m": round(max(errors, default=0.0), 2),
        "same_alerts": before.alerts == policy.alerts,
        "alerts": len(before.alerts),
        "seconds": round(time.perf_counter() - started, 1),
    }


def main(argv: list[str] | None = None) -> int:
    logging.disable(logging.WARNING)  # background CAN frames the signal map does not know
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", action="append", help="scenario name (repeatable)")
    parser.add_argument("--hours", type=float, default=24.0, help="scenario hours to render (default 24)")
    parser.add_argument("--gnss-hz", type=float, default=1.0, help="receiver rate (default 1 Hz)")
    parser.add_argument("--keepalive-s", type=float, default=60.0, help="MQTT keepalive for the ping estimate")
    args = parser.parse_args(argv)
    names = args.scenario or ["commute_week", "parked_in_market"]
    results = []
    with tempfile.TemporaryDirectory(prefix="lw-budget-") as tmp:
        for name in names:
            print(f"{name}: rendering {args.hours:g} h at {args.gnss_hz:g} Hz ...", file=sys.stderr)
            results.append(run_scenario(name, args, Path(tmp)))
    print("\nBytes per vehicle per day on the wire (signed batches + MQTT 5 framing + PUBACK, TLS 1.3 estimated)")
    print(
        f"{'scenario':<20} {'before B/day':>13} {'policy B/day':>13} {'ratio':>6} "
        f"{'fixes before':>12} {'fixes up':>9} {'p95 m':>6} {'max m':>6} {'alerts':>6} {'same':>5}"
    )
    failed = False
    for r in results:
        b, p = r["paths"]["before"], r["paths"]["policy"]
        print(
            f"{r['scenario']:<20} {b['wire_bytes_per_day']:>13,} {p['wire_bytes_per_day']:>13,} {r['ratio']:>6} "
            f"{b['fixes']:>12,} {p['fixes']:>9,} {r['track_error_p95_m']:>6} {r['track_error_max_m']:>6} "
            f"{r['alerts']:>6} {r['same_alerts']!s:>5}"
        )
        failed |= not r["same_alerts"] or r["track_error_max_m"] > 15.0
    print(
        f"\nKeepalive pings (both paths alike, {args.keepalive_s:g} s): {results[0]['keepalive_bytes_per_day']:,} B/day"
    )
    for r in results:
        print(
            f"{r['scenario']}: {r['hours']} h, {r['receiver_epochs']:,} receiver epochs, {r['events']:,} events, "
            f"batches before/policy {r['paths']['before']['batches']}/{r['paths']['policy']['batches']}, "
            f"{r['seconds']} s"
        )
    print(
        f"\nRerun: .venv/bin/python bench/data_budget_bench.py --hours {args.hours:g} --gnss-hz {args.gnss_hz:g} "
        + " ".join(f"--scenario {n}" for n in names)
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
