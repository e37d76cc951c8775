"""Ingest throughput: where does the time go between the broker and the database?

Measured in one run, on the same pre-sealed one-minute batches (600 fixes each, 10 Hz):

1. ``protocol.open_batch`` alone (verify + strict decode), in this process;
2. ``collector.ingest.ingestor.Ingestor.handle`` alone (open + one transaction), in this process,
   on SQLite and on PostgreSQL: the database cost without MQTT;
3. a bare paho subscriber (QoS 1, auto ack) receiving the batches through a private
   Mosquitto: the transport ceiling;
4. one collector process (``python -m collector serve --ingest-only``) storing them
   through the same Mosquitto, on SQLite and on PostgreSQL: the real thing.

For 3 and 4 the clock runs from the first publish to the last message received / stored;
the publisher publishes as fast as the broker accepts. Rerun:

    .venv/bin/python bench/ingest_bench.py [--batches 300] [--no-postgres]
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
from pathlib import Path

import paho.mqtt.client as mqtt
import sqlalchemy as sa
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from paho.mqtt.enums import CallbackAPIVersion

from collector.ingest.ingestor import Ingestor
from collector.ingest.registry import DeviceRegistry
from collector.settings import Limits
from collector.storage.database import create_engine, migrate
from firmware_sim.rig import Mosquitto, Postgres
from protocol import Batch, Fix, batch_topic, open_batch, seal_batch

T0 = 1_700_000_000_000
DEVICE = "bench-truck"
TIMEOUT_S = 600.0


def make_messages(n: int, fixes: int) -> tuple[Ed25519PrivateKey, list[bytes]]:
    key = Ed25519PrivateKey.from_private_bytes(hashlib.sha256(DEVICE.encode()).digest())
    topic = batch_topic(DEVICE)
    messages = []
    for seq in range(1, n + 1):
        start = T0 + seq * 60_000
        track = tuple(
            Fix(start + i * 100, 31.2 + (seq * fixes + i) * 1e-6, 121.4 + i * 1e-6, speed_mps=12.5, hdop=0.9,
                sats_used=12, mean_snr=38.0)
            for i in range(fixes)
        )  # fmt: skip
        messages.append(seal_batch(Batch(DEVICE, b"\x07" * 16, seq, start + 60_000, fixes=track), key, topic))
    return key, messages


def pem_of(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def rate(n: int, seconds: float) -> float:
    return n / seconds if seconds > 0 else float("inf")


def bench_open_batch(key: Ed25519PrivateKey, messages: list[bytes]) -> float:
    keys = {DEVICE: key.public_key()}
    topic = batch_topic(DEVICE)
    started = time.perf_counter()
    for message in messages:
        open_batch(message, topic, keys)
    return rate(len(messages), time.perf_counter() - started)


def prepared_engine(url: str, key: Ed25519PrivateKey) -> sa.Engine:
    engine = create_engine(url)
    migrate(engine)
    DeviceRegistry(engine).add(DEVICE, pem_of(key))
    return engine


def bench_ingestor(url: str, key: Ed25519PrivateKey, messages: list[bytes]) -> float:
    engine = prepared_engine(url, key)
    ingestor = Ingestor(engine, Limits(max_clock_skew_s=10 * 365 * 86_400))
    topic = batch_topic(DEVICE)
    started = time.perf_counter()
    for message in messages:
        ingestor.handle(topic, message)
    elapsed = time.perf_counter() - started
    assert ingestor.counters["stored"] == len(messages), ingestor.counters
    engine.dispose()
    return rate(len(messages), elapsed)


def publish_all(port: int, messages: list[bytes]) -> float:
    """Publish every message at QoS 1 as fast as the broker takes them; return the start time."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-publisher", protocol=mqtt.MQTTv5)
    client.max_inflight_messages_set(100)
    client.max_queued_messages_set(0)
    client.connect("127.0.0.1", port)
    client.loop_start()
    topic = batch_topic(DEVICE)
    started = time.perf_counter()
    infos = [client.publish(topic, message, qos=1) for message in messages]
    for info in infos:
        info.wait_for_publish(TIMEOUT_S)
    client.disconnect()
    client.loop_stop()
    return started


def bench_bare_subscriber(port: int, messages: list[bytes]) -> float:
    done = threading.Event()
    received = [0]
    last = [0.0]

    def on_message(_c: object, _u: object, _m: object) -> None:
        received[0] += 1
        if received[0] == len(messages):
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
    started = publish_all(port, messages)
    if not done.wait(TIMEOUT_S):
        raise RuntimeError(f"bare subscriber got {received[0]} of {len(messages)}")
    sub.disconnect()
    sub.loop_stop()
    return rate(len(messages), last[0] - started)


def wait_for(condition: Callable[[], bool], what: str, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + TIMEOUT_S
    while not condition():
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"collector exited with {proc.returncode} while waiting for {what}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.01)


def bench_collector(url: str, port: int, key: Ed25519PrivateKey, messages: list[bytes], workdir: Path) -> float:
    engine = prepared_engine(url, key)
    config = workdir / "collector.toml"
    config.write_text(
        f'database_url = "{url}"\nlog_level = "INFO"\n[mqtt]\nport = {port}\nclient_id = "bench-collector"\n'
        f"[limits]\nmax_clock_skew_s = {10 * 365 * 86_400}\n"
    )
    command = [sys.executable, "-m", "collector"]
    log_path = workdir / "collector.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [*command, "serve", "--ingest-only", "--config", str(config)], stdout=log, stderr=log
        )
    try:
        wait_for(lambda: "subscribed to" in log_path.read_text(errors="replace"), "the collector to subscribe", proc)
        batches = sa.table("batches")

        def stored() -> int:
            with engine.connect() as conn:
                return int(conn.execute(sa.select(sa.func.count()).select_from(batches)).scalar_one())

        started = publish_all(port, messages)
        wait_for(lambda: stored() >= len(messages), f"{len(messages)} stored batches", proc)
        elapsed = time.perf_counter() - started
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
        engine.dispose()
    return rate(len(messages), elapsed)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, default=300, help="number of one-minute batches (default 300)")
    parser.add_argument("--fixes", type=int, default=600, help="fixes per batch (default 600 = 1 min at 10 Hz)")
    parser.add_argument("--no-postgres", action="store_true", help="skip the PostgreSQL runs")
    args = parser.parse_args()

    print(f"preparing {args.batches} batches x {args.fixes} fixes ...", flush=True)
    key, messages = make_messages(args.batches, args.fixes)
    size = sum(map(len, messages)) / len(messages)
    print(f"mean signed batch: {size:,.0f} bytes; cores: {os.cpu_count()}; load: {os.getloadavg()[0]:.2f}")

    results: dict[str, float] = {}
    results["open_batch (verify + decode), in-process"] = bench_open_batch(key, messages)
    workdir = Path(tempfile.mkdtemp(prefix="lw-ingest-bench-"))
    postgres = None
    try:
        urls = {"sqlite": f"sqlite:///{workdir / 'inproc.db'}"}
        if not args.no_postgres:
            postgres = Postgres().start()
            urls["postgres"] = postgres.url
        for name, url in urls.items():
            inproc_url = url if name == "sqlite" else url.rsplit("/", 1)[0] + "/lienwatch"
            results[f"Ingestor.handle on {name}, in-process (no MQTT)"] = bench_ingestor(inproc_url, key, messages)
        (workdir / "broker").mkdir()
        with Mosquitto(workdir=workdir / "broker") as broker:
            results["bare paho subscriber via Mosquitto"] = bench_bare_subscriber(broker.port, messages)
            for name in urls:
                if name == "sqlite":
                    url = f"sqlite:///{workdir / 'collector.db'}"
                else:
                    assert postgres is not None
                    engine = sa.create_engine(postgres.url, isolation_level="AUTOCOMMIT")
                    with engine.connect() as conn:
                        conn.execute(sa.text('CREATE DATABASE "collector_bench"'))
                    engine.dispose()
                    url = postgres.url.rsplit("/", 1)[0] + "/collector_bench"
                run_dir = workdir / f"run-{name}"
                run_dir.mkdir()
                results[f"collector process via Mosquitto on {name}"] = bench_collector(
                    url, broker.port, key, messages, run_dir
                )
    finally:
        if postgres is not None:
            postgres.close()
        shutil.rmtree(workdir, ignore_errors=True)

    print()
    print(f"{'what':<52} {'batches/s':>10} {'fixes/s':>12}")
    for name, batches_per_s in results.items():
        print(f"{name:<52} {batches_per_s:>10.1f} {batches_per_s * args.fixes:>12,.0f}")
    bare = results["bare paho subscriber via Mosquitto"]
    opened = results["open_batch (verify + decode), in-process"]
    print()
    for name in urls:
        collector = results[f"collector process via Mosquitto on {name}"]
        inproc = results[f"Ingestor.handle on {name}, in-process (no MQTT)"]
        print(
            f"{name}: collector / bare subscriber = {collector / bare:.2f}; collector / open_batch = "
            f"{collector / opened:.2f}; collector / in-process Ingestor = {collector / inproc:.2f}"
        )
    print()
    rerun = "--no-postgres " if args.no_postgres else ""
    print(f"rerun: .venv/bin/python bench/ingest_bench.py {rerun}--batches {args.batches} --fixes {args.fixes}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
