"""Ingest throughput: where does the time go between the broker and the database?

Measured in one run, on the same pre-sealed one-minute batches (default: 1,000 batches of
60 fixes = 1 Hz for a minute, about 1,020 bytes signed each):

1. ``protocol.open_batch`` alone (verify + strict decode), in this process;
2. ``collector.ingest.ingestor.Ingestor`` alone in this process, on SQLite and on
   PostgreSQL: one message per call (``handle``) and groups of ``--group`` messages
   (``handle_group``): the database cost without MQTT; then PostgreSQL's share alone: the
   fixes just stored copied in again with the ingest's binary COPY, ``--group`` batches a
   COPY and commit (the table's indexes and reference checks included);
3. a bare paho subscriber (QoS 1, auto ack) receiving the batches through a private
   Mosquitto: the transport ceiling, the baseline every collector figure is divided by;
4. one collector process (``python -m collector serve --ingest-only``) storing them
   through the same Mosquitto, on SQLite and on PostgreSQL: the real thing, with the
   collector's CPU-seconds per 1,000 batches (user + system time of the process, from
   ``/proc``);
5. 1 .. ``--workers`` collector processes in one ``$share`` group on one PostgreSQL: the
   wall-clock rate and the CPU-normalised rate (batches per collector CPU-second). On a
   machine with fewer cores than processes + broker + database + publisher the wall-clock
   rate cannot grow; the CPU-normalised rate says what each process costs.

For 3 to 5 the clock runs from the first publish to the last message received / stored;
the publisher publishes as fast as the broker accepts. Rerun:

    .venv/bin/python bench/ingest_bench.py [--batches 1000] [--fixes 60] [--devices 1] [--workers 3] [--no-postgres]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
import sqlalchemy as sa
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from paho.mqtt.enums import CallbackAPIVersion

from collector.ingest import ingestor as ingestor_module
from collector.ingest.ingestor import Ingestor
from collector.ingest.registry import DeviceRegistry
from collector.settings import Limits
from collector.storage.database import create_engine, migrate
from firmware_sim.fleet import FleetGenerator, FleetKeys
from firmware_sim.rig import Mosquitto, Postgres
from protocol import Batch, Fix, batch_topic, open_batch, seal_batch

T0 = 1_700_000_000_000
TIMEOUT_S = 900.0
SKEW = Limits(max_clock_skew_s=10 * 365 * 86_400)
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Workload:
    """Sealed messages (topic, payload) and the public keys of their devices."""

    keys: dict[str, Ed25519PrivateKey]
    messages: list[tuple[str, bytes]]


def make_workload(n: int, fixes: int, devices: int) -> Workload:
    """``n`` one-minute batches of ``fixes`` fixes.

    One device (the default, the workload of issue #12): one truck, fixes 100 ms apart.
    More devices: the ``lienwatch sim fleet`` generator (firmware_sim.fleet: derived keys,
    1 Hz fixes along a drive, 1 % with an alert), message ``i`` from device ``i mod devices``.
    """
    if devices > 1:
        fleet = FleetKeys(devices, prefix="bench")
        generator = FleetGenerator(fleet, fixes)
        keys = {fleet.device_id(i): fleet.private_key(i) for i in range(devices)}
        end_ms = T0 + 3_600_000
        messages = [generator.message(i, end_ms + (i // devices) * 60_000)[:2] for i in range(n)]
        return Workload(keys, messages)
    device = "bench-truck"
    key = Ed25519PrivateKey.from_private_bytes(hashlib.sha256(device.encode()).digest())
    topic = batch_topic(device)
    messages = []
    for seq in range(1, n + 1):
        start = T0 + seq * 60_000
        track = tuple(
            Fix(start + k * 100, 31.2 + (seq * fixes + k) * 1e-6, 121.4 + k * 1e-6, speed_mps=12.5, hdop=0.9,
                sats_used=12, mean_snr=38.0)
            for k in range(fixes)
        )  # fmt: skip
        batch = Batch(device, b"\x07" * 16, seq, start + 60_000, fixes=track)
        messages.append((topic, seal_batch(batch, key, topic)))
    return Workload({device: key}, messages)


def pem_of(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def rate(n: int, seconds: float) -> float:
    return n / seconds if seconds > 0 else float("inf")


def bench_open_batch(work: Workload) -> float:
    keys = {d: k.public_key() for d, k in work.keys.items()}
    started = time.perf_counter()
    for topic, message in work.messages:
        open_batch(message, topic, keys)
    return rate(len(work.messages), time.perf_counter() - started)


def prepared_engine(url: str, work: Workload) -> sa.Engine:
    engine = create_engine(url)
    migrate(engine)
    registry = DeviceRegistry(engine)
    for device, key in work.keys.items():
        registry.add(device, pem_of(key))
    return engine


def bench_ingestor(url: str, work: Workload, group: int) -> float:
    """In-process Ingestor: ``group`` 1 calls ``handle`` per message, else ``handle_group``."""
    engine = prepared_engine(url, work)
    ingestor = Ingestor(engine, SKEW)
    started = time.perf_counter()
    if group == 1:
        for topic, message in work.messages:
            ingestor.handle(topic, message)
    else:
        message = getattr(ingestor_module, "Message", None)  # absent before group commit
        if message is None:
            raise NotImplementedError("this collector has no Ingestor.handle_group")
        batch = [message(t, m) for t, m in work.messages]
        for i in range(0, len(batch), group):
            ingestor.handle_group(batch[i : i + group])
    elapsed = time.perf_counter() - started
    assert ingestor.counters["stored"] == len(work.messages), ingestor.counters
    engine.dispose()
    return rate(len(work.messages), elapsed)


def bench_pg_copy(url: str, n: int, group: int) -> float:
    """PostgreSQL's share: the fixes the in-process run stored at ``url`` copied in again, ``group``
    batches per binary COPY and commit, with the table's indexes and checks (batches/s of COPY alone)."""
    engine = create_engine(url)
    columns = ", ".join(ingestor_module._FIX_COLUMNS)
    with engine.connect() as conn:
        rows = conn.exec_driver_sql(f"SELECT {columns} FROM fixes ORDER BY id").fetchall()
    per_batch = len(rows) // n
    raw = engine.raw_connection()
    started = time.perf_counter()
    try:
        cursor = raw.cursor()
        for i in range(0, len(rows), per_batch * group):
            with cursor.copy(f"COPY fixes ({columns}) FROM STDIN (FORMAT BINARY)") as copy:  # type: ignore[attr-defined]
                copy.set_types(ingestor_module._FIX_COPY_TYPES)
                for row in rows[i : i + per_batch * group]:
                    copy.write_row(row)
            raw.commit()
    finally:
        raw.close()
        engine.dispose()
    return rate(n, time.perf_counter() - started)


def publish_all(port: int, messages: list[tuple[str, bytes]]) -> float:
    """Publish every message at QoS 1 as fast as the broker takes them; return the start time."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-publisher", protocol=mqtt.MQTTv5)
    client.max_inflight_messages_set(100)
    client.max_queued_messages_set(0)
    client.connect("127.0.0.1", port)
    client.loop_start()
    started = time.perf_counter()
    infos = [client.publish(topic, message, qos=1) for topic, message in messages]
    for info in infos:
        info.wait_for_publish(TIMEOUT_S)
    client.disconnect()
    client.loop_stop()
    return started


def bench_bare_subscriber(port: int, work: Workload) -> float:
    done = threading.Event()
    received = [0]
    last = [0.0]
    total = len(work.messages)

    def on_message(_c: object, _u: object, _m: object) -> None:
        received[0] += 1
        if received[0] == total:
            last[0] = time.perf_counter()
            done.set()

    ready = threading.Event()
    sub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-bare", protocol=mqtt.MQTTv5)
    sub.on_message = on_message
    sub.on_subscribe = lambda *_: ready.set()
    sub.on_connect = lambda c, *_: c.subscribe("$share/bare/lw/v1/+/batch", qos=1)
    sub.connect("127.0.0.1", port)
    sub.loop_start()
    ready.wait(30)
    started = publish_all(port, work.messages)
    if not done.wait(TIMEOUT_S):
        raise RuntimeError(f"bare subscriber got {received[0]} of {total}")
    sub.disconnect()
    sub.loop_stop()
    return rate(total, last[0] - started)


def wait_for(condition: Callable[[], bool], what: str, procs: list[subprocess.Popen[bytes]]) -> None:
    deadline = time.monotonic() + TIMEOUT_S
    while not condition():
        for proc in procs:
            if proc.poll() is not None:
                raise RuntimeError(f"collector exited with {proc.returncode} while waiting for {what}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.05)


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of the processes so far (Linux /proc)."""
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    return total / CLOCK_TICKS


@dataclass(frozen=True)
class Run:
    """One collector measurement."""

    batches_per_s: float
    cpu_s: float
    n: int

    @property
    def cpu_per_1000(self) -> float:
        return self.cpu_s * 1000 / self.n

    @property
    def per_cpu_s(self) -> float:
        return rate(self.n, self.cpu_s)


def bench_collectors(url: str, port: int, work: Workload, workdir: Path, workers: int) -> Run:
    """``workers`` collector processes in one ``$share`` group store the workload."""
    engine = prepared_engine(url, work)
    procs: list[subprocess.Popen[bytes]] = []
    logs: list[Path] = []
    try:
        for i in range(workers):
            config = workdir / f"collector-{i}.toml"
            config.write_text(
                f'database_url = "{url}"\nlog_level = "INFO"\n[mqtt]\nport = {port}\n'
                f'client_id = "bench-collector-{i}"\n'
                f"[limits]\nmax_clock_skew_s = {SKEW.max_clock_skew_s}\n"
            )
            log_path = workdir / f"collector-{i}.log"
            logs.append(log_path)
            with log_path.open("wb") as log:
                procs.append(
                    subprocess.Popen(
                        [sys.executable, "-m", "collector", "serve", "--ingest-only", "--config", str(config)],
                        stdout=log,
                        stderr=log,
                    )
                )
        wait_for(
            lambda: all("subscribed to" in p.read_text(errors="replace") for p in logs),
            "the collectors to subscribe",
            procs,
        )
        batches = sa.table("batches")

        def stored() -> int:
            with engine.connect() as conn:
                return int(conn.execute(sa.select(sa.func.count()).select_from(batches)).scalar_one())

        pids = [p.pid for p in procs]
        cpu_before = cpu_seconds(pids)
        started = publish_all(port, work.messages)
        wait_for(lambda: stored() >= len(work.messages), f"{len(work.messages)} stored batches", procs)
        elapsed = time.perf_counter() - started
        cpu = cpu_seconds(pids) - cpu_before
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            proc.wait(60)
        engine.dispose()
    return Run(rate(len(work.messages), elapsed), cpu, len(work.messages))


def fresh_database(postgres: Postgres, name: str) -> str:
    admin = sa.create_engine(postgres.url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return postgres.url.rsplit("/", 1)[0] + "/" + name


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, default=1000, help="number of one-minute batches (default 1000)")
    parser.add_argument("--fixes", type=int, default=60, help="fixes per batch (default 60 = 1 min at 1 Hz)")
    parser.add_argument(
        "--devices", type=int, default=1, help="devices the batches are spread over (default 1; >1: sim fleet)"
    )
    parser.add_argument("--workers", type=int, default=3, help="scale table: 1..K collector processes (default 3)")
    parser.add_argument("--group", type=int, default=250, help="in-process handle_group size (default 250)")
    parser.add_argument("--no-postgres", action="store_true", help="skip the PostgreSQL runs")
    args = parser.parse_args()

    print(f"preparing {args.batches} batches x {args.fixes} fixes over {args.devices} device(s) ...", flush=True)
    work = make_workload(args.batches, args.fixes, args.devices)
    size = sum(len(m) for _, m in work.messages) / len(work.messages)
    print(f"mean signed batch: {size:,.0f} bytes; cores: {os.cpu_count()}; load: {os.getloadavg()[0]:.2f}", flush=True)

    results: dict[str, float] = {}
    runs: dict[str, Run] = {}
    scale: dict[int, Run] = {}
    results["open_batch (verify + decode), in-process"] = bench_open_batch(work)
    workdir = Path(tempfile.mkdtemp(prefix="lw-ingest-bench-"))
    postgres = None
    names = ["sqlite"] if args.no_postgres else ["sqlite", "postgres"]
    try:
        if not args.no_postgres:
            postgres = Postgres().start()

        def url_for(name: str, label: str) -> str:
            if name == "sqlite":
                return f"sqlite:///{workdir / (label + '.db')}"
            assert postgres is not None
            return fresh_database(postgres, label)

        for name in names:
            for group in (1, args.group):
                label = f"inproc_{group}"
                what = "handle" if group == 1 else f"handle_group({group})"
                url = url_for(name, label)
                try:
                    results[f"Ingestor.{what} on {name}, in-process"] = bench_ingestor(url, work, group)
                except NotImplementedError:
                    print(f"(no handle_group in this collector: {what} skipped)")
                if name == "postgres" and group != 1:
                    results[f"PostgreSQL alone: COPY of the fixes, {group} batches a COPY"] = bench_pg_copy(
                        url, len(work.messages), group
                    )
        (workdir / "broker").mkdir()
        with Mosquitto(workdir=workdir / "broker") as broker:
            results["bare paho subscriber via Mosquitto"] = bench_bare_subscriber(broker.port, work)
            for name in names:
                run_dir = workdir / f"run-{name}"
                run_dir.mkdir()
                runs[name] = bench_collectors(url_for(name, f"collector_{name}"), broker.port, work, run_dir, 1)
                results[f"collector process via Mosquitto on {name}"] = runs[name].batches_per_s
            if not args.no_postgres:
                scale[1] = runs["postgres"]
                for k in range(2, args.workers + 1):
                    run_dir = workdir / f"scale-{k}"
                    run_dir.mkdir()
                    scale[k] = bench_collectors(url_for("postgres", f"scale_{k}"), broker.port, work, run_dir, k)
    finally:
        if postgres is not None:
            postgres.close()
        shutil.rmtree(workdir, ignore_errors=True)

    print()
    print(f"{'what':<52} {'batches/s':>10} {'fixes/s':>12}")
    for name, batches_per_s in results.items():
        print(f"{name:<52} {batches_per_s:>10.1f} {batches_per_s * args.fixes:>12,.0f}")
    bare = results["bare paho subscriber via Mosquitto"]
    print()
    for name, run in runs.items():
        print(
            f"{name}: collector / bare subscriber (same run) = {run.batches_per_s / bare:.2f}; "
            f"collector CPU = {run.cpu_per_1000:.2f} CPU-s per 1,000 batches"
        )
    if scale:
        print()
        print(f"PostgreSQL, K collector processes in one $share group ({os.cpu_count()} cores shared with broker,")
        print("database and publisher: the wall-clock rate cannot scale here; the CPU-normalised rate is per process)")
        print(f"{'K':>3} {'batches/s (wall)':>17} {'/ bare':>7} {'CPU-s per 1,000':>16} {'batches per CPU-s':>18}")
        for k, run in scale.items():
            print(
                f"{k:>3} {run.batches_per_s:>17.1f} {run.batches_per_s / bare:>7.2f} {run.cpu_per_1000:>16.2f} "
                f"{run.per_cpu_s:>18.1f}"
            )
    print()
    rerun = "--no-postgres " if args.no_postgres else ""
    print(
        f"rerun: .venv/bin/python bench/ingest_bench.py {rerun}--batches {args.batches} --fixes {args.fixes} "
        f"--devices {args.devices} --workers {args.workers} --group {args.group}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
