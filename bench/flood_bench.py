"""Flood before authentication: collector memory and another device's latency (issue 13, finding 4).

One collector process (``lienwatch collector serve --ingest-only``, SQLite) behind a private
Mosquitto. The attacker has no device key and publishes, as fast as the broker takes them:

* ``--qos0`` messages (default 50,000) of 200 bytes at QoS 0 on batch topics;
* ``--junk`` messages (default 600) of 1 MiB of junk at QoS 1 on batch topics.

Two brokers (``--broker``):

* ``authenticated`` (default; how every tool of the project runs it since issue 13): anonymous
  off, per-device accounts and the ACL (``collector.cli.broker_auth``). The attacker holds one
  device's broker account (a stolen box) and floods that device's own topic, the only one
  the ACL lets it publish on; the collector and the genuine device use their own accounts.
* ``open`` (the attack of issue 13 as first reported): anonymous, no ACL; the flood is spread
  over 1,000 QoS 0 ids and 20 junk ids.

Meanwhile a registered device publishes a genuine batch every ``--probe-period`` seconds
(0.2 by default; whether or not the previous one has arrived). Reported, in the same run:
the latency (publish -> row in ``batches``) of 10 genuine batches without the flood and of
every one published from the start of the flood until the collector is back to normal
(median and max); the collector's RSS when idle and its peak during the flood (sampled
from /proc every 50 ms); and how every flood message was accounted for (the collector's
``/metrics``: QoS 0 and rate-limited junk refused unread, junk dead-lettered).
Pass criteria of issue 13: peak RSS - idle RSS < 100 MB, and
the flood adds no more than about a second to the genuine latency (the fleet-ingest
fairness bound).

``--subscriber bare`` runs the same flood against a reference instead of the collector: a
bare paho MQTT 5 subscriber process with paho's own reader (same shared subscription, same
Receive Maximum, manual acks sent at once, nothing verified or stored); the latency is
publish -> its ``on_message``. The broker delivers one session's messages in order, so the
wait is how fast the subscriber reads what is in front: the collector's reader
(``collector.ingest.mqtt_read``) must beat this reference, which does no work at all.

    .venv/bin/python bench/flood_bench.py [--qos0 50000] [--junk 600] [--broker authenticated|open]
                                          [--subscriber collector|bare] [--probe-period 0.2]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import paho.mqtt.client as mqtt
import sqlalchemy as sa
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from collector.cli.broker_auth import BrokerAccounts, Credentials
from collector.ingest.registry import DeviceRegistry
from collector.ingest.service import batch_subscription
from collector.ingest.settings import MqttSettings
from collector.storage.database import create_engine, migrate
from firmware_sim.rig import BrokerAuth, Mosquitto, free_port
from protocol import Batch, Fix, batch_topic, seal_batch

DEVICE = "bench-genuine"
ATTACKER = "stolen-box"  # the device account the attacker holds (authenticated broker)
TIMEOUT_S = 600.0
RSS_BOUND_MB = 100.0
LATENCY_BOUND_S = 1.0


def _client(client_id: str, login: Credentials | None) -> mqtt.Client:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    if login is not None:
        client.username_pw_set(login.username, login.password)
    return client


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


class RssSampler(threading.Thread):
    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.peak = 0.0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.05):
            try:
                self.peak = max(self.peak, rss_mb(self.pid))
            except OSError:
                return


def genuine(key: Ed25519PrivateKey, seq: int) -> bytes:
    now = time.time_ns() // 1_000_000
    fixes = tuple(Fix(now - 60_000 + i * 1000, 31.2 + i * 1e-5, 121.4, speed_mps=10.0) for i in range(60))
    return seal_batch(Batch(DEVICE, b"\x01" * 16, seq, now, fixes=fixes), key, batch_topic(DEVICE))


#: which of the genuine batches {seq: sealed bytes} have arrived where they are measured?
Arrived = Callable[[dict[int, bytes]], set[int]]


def stored_in(engine: sa.Engine) -> Arrived:
    """The collector: the batch is a row in ``batches``."""

    def stored(waiting: dict[int, bytes]) -> set[int]:
        with engine.connect() as conn:
            found = conn.execute(
                sa.select(sa.column("seq")).select_from(sa.table("batches"))
                .where(sa.column("device_id") == DEVICE, sa.column("seq").in_(list(waiting)))
            ).scalars()  # fmt: skip
            return set(found)

    return stored


def received_by(log_path: Path) -> Arrived:
    """The bare subscriber: the SHA-256 of the payload is a line of its log."""

    def received(waiting: dict[int, bytes]) -> set[int]:
        seen = set(log_path.read_text(encoding="ascii").split())
        return {seq for seq, payload in waiting.items() if hashlib.sha256(payload).hexdigest() in seen}

    return received


def bare_subscriber(port: int, out: Path) -> None:
    """The reference subscriber (``--subscriber bare``; runs in its own process): the
    collector's subscription and Receive Maximum, acks at once, logs the digest of each
    genuine message. Credentials come from LW_BENCH_MQTT_USER / LW_BENCH_MQTT_PASSWORD."""
    settings = MqttSettings()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="flood-bare", protocol=mqtt.MQTTv5, manual_ack=True)
    if os.environ.get("LW_BENCH_MQTT_USER"):
        client.username_pw_set(os.environ["LW_BENCH_MQTT_USER"], os.environ.get("LW_BENCH_MQTT_PASSWORD"))
    genuine_topic = batch_topic(DEVICE)
    with out.open("a", encoding="ascii") as log:

        def on_message(cl: mqtt.Client, _userdata: object, message: mqtt.MQTTMessage) -> None:
            if message.topic == genuine_topic:
                log.write(hashlib.sha256(message.payload).hexdigest() + "\n")
                log.flush()
            if message.qos:
                cl.ack(message.mid, message.qos)

        def on_subscribe(*_args: object) -> None:
            print("subscribed to", batch_subscription(settings.group), flush=True)

        client.on_message = on_message
        client.on_subscribe = on_subscribe
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.ReceiveMaximum = settings.receive_maximum
        client.connect("127.0.0.1", port, properties=props)
        client.subscribe(batch_subscription(settings.group), qos=1)
        client.loop_forever()


class Prober(threading.Thread):
    """The genuine device: publishes a batch every ``period_s`` (whether or not the last one has
    arrived) and records each one's latency, publish -> arrival, polling every 10 ms."""

    def __init__(self, port: int, arrived: Arrived, key: Ed25519PrivateKey, login: Credentials | None,
                 period_s: float) -> None:  # fmt: skip
        super().__init__(daemon=True)
        self.client = _client("genuine", login)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        self.arrived = arrived
        self.key = key
        self.period_s = period_s
        self.seq = 0
        self.sent: dict[int, float] = {}
        self.waiting: dict[int, bytes] = {}
        self.latency: dict[int, float] = {}
        self.publishing = threading.Event()
        self.stop = threading.Event()
        self._lock = threading.Lock()

    def run(self) -> None:
        next_at = time.monotonic()
        while not self.stop.is_set():
            if self.publishing.is_set() and time.monotonic() >= next_at:
                self.seq += 1
                payload = genuine(self.key, self.seq)
                with self._lock:
                    self.sent[self.seq] = time.monotonic()
                    self.waiting[self.seq] = payload
                self.client.publish(batch_topic(DEVICE), payload, qos=1)
                next_at += self.period_s
            with self._lock:
                waiting = dict(self.waiting)
            if waiting:
                now = time.monotonic()
                for seq in self.arrived(waiting):
                    with self._lock:
                        self.latency[seq] = now - self.sent[seq]
                        del self.waiting[seq]
            time.sleep(0.01)

    def probe(self, count: int) -> list[float]:
        """Publish ``count`` probes at the period and wait for all of them (the baseline)."""
        first = self.seq + 1
        self.publishing.set()
        while self.seq < first + count - 1:
            time.sleep(0.01)
        self.publishing.clear()
        return self.wait(range(first, first + count))

    def wait(self, seqs: range) -> list[float]:
        deadline = time.monotonic() + TIMEOUT_S
        while any(seq not in self.latency for seq in seqs) and time.monotonic() < deadline:
            time.sleep(0.02)
        return [self.latency.get(seq, TIMEOUT_S) for seq in seqs]

    def close(self) -> None:
        self.stop.set()
        self.join(10)
        self.client.disconnect()
        self.client.loop_stop()


def scrape(url: str) -> dict[str, float]:
    """The collector's ``/metrics`` as {sample with labels: value}."""
    with urllib.request.urlopen(url, timeout=10) as answer:
        text = answer.read().decode()
    return {
        name: float(value) for name, _, value in (line.rpartition(" ") for line in text.splitlines())
        if name and not name.startswith("#")
    }  # fmt: skip


def flood(port: int, qos0: int, junk: int, login: Credentials | None) -> float:
    """Publish the flood; with ``login`` (a device account) on that device's own topic only."""
    client = _client("attacker", login)
    client.max_inflight_messages_set(100)
    client.connect("127.0.0.1", port)
    client.loop_start()
    started = time.monotonic()
    blob = os.urandom(1 << 20)
    infos = []
    try:
        total = max(qos0, junk)
        junk_at = {k * total // junk for k in range(junk)} if junk else set()
        for i in range(total):
            if i < qos0:
                topic = batch_topic(login.username) if login else f"lw/v1/flood-{i % 1000}/batch"
                client.publish(topic, b"\x00" * 200, qos=0)
            if i in junk_at:
                topic = batch_topic(login.username) if login else f"lw/v1/junk-{i % 20}/batch"
                infos.append(client.publish(topic, blob, qos=1))
        for info in infos:
            info.wait_for_publish(TIMEOUT_S)
    finally:
        client.disconnect()
        client.loop_stop()
    return time.monotonic() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--qos0", type=int, default=50_000, help="QoS 0 flood messages (default 50,000)")
    parser.add_argument("--junk", type=int, default=600, help="1 MiB QoS 1 junk messages (default 600)")
    parser.add_argument("--broker", choices=("authenticated", "open"), default="authenticated",
                        help="authenticated: accounts + ACL, the attacker holds one device account (default); "
                        "open: anonymous, no ACL")  # fmt: skip
    parser.add_argument("--subscriber", choices=("collector", "bare"), default="collector",
                        help="collector: lienwatch collector serve --ingest-only (default); bare: a paho "
                        "subscriber that only acks (the reference)")  # fmt: skip
    parser.add_argument("--probe-period", type=float, default=0.2,
                        help="seconds between the genuine device's batches (default 0.2)")  # fmt: skip
    parser.add_argument("--bare-subscriber", nargs=2, metavar=("PORT", "LOG"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.bare_subscriber:
        bare_subscriber(int(args.bare_subscriber[0]), Path(args.bare_subscriber[1]))
        return 0
    command = (f".venv/bin/python bench/flood_bench.py --qos0 {args.qos0} --junk {args.junk} --broker {args.broker}"
               f" --subscriber {args.subscriber} --probe-period {args.probe_period}")  # fmt: skip

    workdir = Path(tempfile.mkdtemp(prefix="lw-flood-bench-"))
    key = Ed25519PrivateKey.from_private_bytes(hashlib.sha256(DEVICE.encode()).digest())
    url = f"sqlite:///{workdir / 'collector.db'}"
    engine = create_engine(url)
    migrate(engine)
    pem = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    DeviceRegistry(engine).add(DEVICE, pem)
    (workdir / "broker").mkdir()
    logins: dict[str, Credentials | None] = {"collector": None, DEVICE: None, ATTACKER: None}
    auth = None
    if args.broker == "authenticated":
        accounts = BrokerAccounts(workdir / "broker-accounts")
        logins = {"collector": accounts.collector_account(), DEVICE: accounts.add_device(DEVICE),
                  ATTACKER: accounts.add_device(ATTACKER)}  # fmt: skip
        auth = BrokerAuth(accounts.password_file, accounts.acl_file)
    proc = None
    try:
        with Mosquitto(workdir=workdir / "broker", persistence=False, auth=auth) as broker:
            config = workdir / "collector.toml"
            mqtt_login = logins["collector"]
            account = "" if mqtt_login is None else (
                f'username = "{mqtt_login.username}"\npassword = "{mqtt_login.password}"\n'
            )  # fmt: skip
            metrics_port = free_port()
            config.write_text(
                f'database_url = "{url}"\n[api]\nport = {metrics_port}\n'
                f'[mqtt]\nport = {broker.port}\nclient_id = "flood-collector"\n{account}'
            )
            log_path = workdir / "collector.log"
            env = dict(os.environ)
            if args.subscriber == "collector":
                argv = [sys.executable, "-m", "collector", "serve", "--ingest-only", "--config", str(config)]
                arrived = stored_in(engine)
                metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
            else:
                received = workdir / "bare-received.log"
                received.touch()
                argv = [sys.executable, __file__, "--bare-subscriber", str(broker.port), str(received)]
                if mqtt_login is not None:
                    env.update(LW_BENCH_MQTT_USER=mqtt_login.username, LW_BENCH_MQTT_PASSWORD=mqtt_login.password)
                arrived = received_by(received)
                metrics_url = ""
            with log_path.open("wb") as log:
                proc = subprocess.Popen(argv, stdout=log, stderr=log, env=env)
            deadline = time.monotonic() + 60
            while "subscribed to" not in log_path.read_text(errors="replace"):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"collector did not start:\n{log_path.read_text()[-2000:]}")
                time.sleep(0.05)
            prober = Prober(broker.port, arrived, key, logins[DEVICE], args.probe_period)
            prober.start()
            baseline = prober.probe(10)
            idle = rss_mb(proc.pid)
            sampler = RssSampler(proc.pid)
            sampler.start()
            first_during = prober.seq + 1
            prober.publishing.set()
            flood_s = flood(broker.port, args.qos0, args.junk, logins[ATTACKER])
            flood_end = prober.seq
            # Keep probing until the collector has drained what the broker still held:
            # two probes in a row back at the normal latency (or two minutes).
            deadline = time.monotonic() + 120
            normal = max(baseline)
            while time.monotonic() < deadline:
                late = [prober.latency.get(seq) for seq in (prober.seq - 1, prober.seq)]
                if prober.seq >= flood_end + 2 and all(x is not None and x < normal + 0.5 for x in late):
                    break
                time.sleep(0.05)
            drained_s = time.monotonic() - deadline + 120
            prober.publishing.clear()
            during = prober.wait(range(first_during, prober.seq + 1))
            prober.close()
            sampler.stop.set()
            sampler.join()
            after = rss_mb(proc.pid)
            counts = scrape(metrics_url) if metrics_url else {}
            with engine.connect() as conn:
                letters, kept = conn.execute(
                    sa.text("SELECT COUNT(*), COALESCE(SUM(LENGTH(payload)), 0) FROM dead_letters")
                ).one()
    finally:
        if proc is not None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)
        engine.dispose()
        shutil.rmtree(workdir, ignore_errors=True)

    growth = sampler.peak - idle
    rss_ok = growth < RSS_BOUND_MB
    added = max(during) - normal
    latency_ok = added < LATENCY_BOUND_S
    attacker = f"one device account ({ATTACKER})" if args.broker == "authenticated" else "anonymous"
    where = "stored by the collector" if args.subscriber == "collector" else "received by the bare paho subscriber"
    print(f"command: {command}")
    print(f"broker: {args.broker}; attacker: {attacker}; latency = publish -> {where}")
    print(f"flood: {args.qos0:,} QoS 0 x 200 B + {args.junk} QoS 1 x 1 MiB junk, published in {flood_s:.1f} s; "
          f"back to normal latency {drained_s:.1f} s after the last flood message was published")  # fmt: skip
    if counts:
        refused = {r: int(counts.get(f'lienwatch_ingest_refused_total{{reason="{r}"}}', 0))
                   for r in ("qos0", "rate_limited", "oversized")}  # fmt: skip
        dead = int(sum(v for k, v in counts.items() if k.startswith("lienwatch_ingest_dead_letters_total{")))
        print(f"accounted by the collector: QoS 0 refused unread {refused['qos0']:,} of {args.qos0:,} "
              f"(the rest dropped by the broker: {args.qos0 - refused['qos0']:,}); junk dead-lettered {dead} + "
              f"refused unread for the rate limit {refused['rate_limited']} + oversized {refused['oversized']} "
              f"= {dead + refused['rate_limited'] + refused['oversized']} of {args.junk}; "
              f"dead-letter rows {letters}, {kept / 1024:.0f} KiB of raw bytes")  # fmt: skip
    print(f"genuine batch latency without flood ({len(baseline)} probes every {args.probe_period} s): median "
          f"{statistics.median(baseline) * 1000:.0f} ms, max {normal * 1000:.0f} ms")  # fmt: skip
    print(f"genuine batch latency during flood ({len(during)} probes every {args.probe_period} s, "
          f"{flood_end - first_during + 1} published while the flood was): median "
          f"{statistics.median(during) * 1000:.0f} ms, max {max(during) * 1000:.0f} ms")  # fmt: skip
    print(f"FIGURE rss: idle {idle:.0f} MB, peak {sampler.peak:.0f} MB, growth {growth:+.0f} MB "
          f"(bound < {RSS_BOUND_MB:.0f} MB), after {after:.0f} MB: {'PASS' if rss_ok else 'FAIL'}")  # fmt: skip
    print(f"FIGURE fairness: another device's batch max {max(during) * 1000:.0f} ms during "
          f"the flood vs {normal * 1000:.0f} ms normal, added {added * 1000:.0f} ms, ratio "
          f"{max(during) / normal:.1f} (bound: added < {LATENCY_BOUND_S * 1000:.0f} ms): "
          f"{'PASS' if latency_ok else 'FAIL'}")  # fmt: skip
    ok = rss_ok and latency_ok
    print("PASS" if ok else "FAIL", "(peak - idle < 100 MB; flood adds < 1 s to the genuine latency)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
