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

Meanwhile a registered device publishes one genuine batch every second. Reported: the
collector's RSS when idle and its peak during the flood (sampled from /proc every 50 ms),
and the latency (publish -> row in ``batches``) of the genuine batches, before and during
the flood, in the same run. Pass criteria of issue 13: peak RSS - idle RSS < 100 MB, and
the flood adds no more than about a second to the genuine latency (the fleet-ingest
fairness bound).

``--subscriber bare`` runs the same flood against a reference instead of the collector: a
bare paho MQTT 5 subscriber process (same shared subscription, same Receive Maximum, manual
acks sent at once, nothing verified or stored); the latency is publish -> its
``on_message``. It shows how much of the wait is the broker's in-order delivery to one
session and the MQTT client's read rate, which no code after ``on_message`` can shorten.

    .venv/bin/python bench/flood_bench.py [--qos0 50000] [--junk 600] [--broker authenticated|open]
                                          [--subscriber collector|bare]
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
from firmware_sim.rig import BrokerAuth, Mosquitto
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


#: has the genuine batch (seq, sealed bytes) arrived where it is measured?
Arrived = Callable[[int, bytes], bool]


def stored_in(engine: sa.Engine) -> Arrived:
    """The collector: the batch is a row in ``batches``."""

    def stored(seq: int, _payload: bytes) -> bool:
        with engine.connect() as conn:
            return (
                conn.execute(
                    sa.text("SELECT 1 FROM batches WHERE device_id = :d AND seq = :s"), {"d": DEVICE, "s": seq}
                ).first()
                is not None
            )

    return stored


def received_by(log_path: Path) -> Arrived:
    """The bare subscriber: the SHA-256 of the payload is a line of its log."""

    def received(_seq: int, payload: bytes) -> bool:
        return hashlib.sha256(payload).hexdigest() in log_path.read_text(encoding="ascii")

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


def measure_latency(
    port: int, arrived: Arrived, key: Ed25519PrivateKey, seqs: range, *, stop: threading.Event | None,
    out: list[float], login: Credentials | None,
) -> None:  # fmt: skip
    client = _client(f"genuine-{seqs.start}", login)
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        for seq in seqs:
            if stop is not None and stop.is_set():
                return
            sent = time.monotonic()
            payload = genuine(key, seq)
            client.publish(batch_topic(DEVICE), payload, qos=1)
            deadline = sent + TIMEOUT_S
            while time.monotonic() < deadline and not arrived(seq, payload):
                time.sleep(0.01)
            out.append(time.monotonic() - sent)
            time.sleep(max(0.0, 1.0 - (time.monotonic() - sent)))
    finally:
        client.disconnect()
        client.loop_stop()


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
    parser.add_argument("--bare-subscriber", nargs=2, metavar=("PORT", "LOG"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.bare_subscriber:
        bare_subscriber(int(args.bare_subscriber[0]), Path(args.bare_subscriber[1]))
        return 0
    command = (f".venv/bin/python bench/flood_bench.py --qos0 {args.qos0} --junk {args.junk} --broker {args.broker}"
               f" --subscriber {args.subscriber}")  # fmt: skip

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
            config.write_text(
                f'database_url = "{url}"\n[mqtt]\nport = {broker.port}\nclient_id = "flood-collector"\n{account}'
            )
            log_path = workdir / "collector.log"
            env = dict(os.environ)
            if args.subscriber == "collector":
                argv = [sys.executable, "-m", "collector", "serve", "--ingest-only", "--config", str(config)]
                arrived = stored_in(engine)
            else:
                received = workdir / "bare-received.log"
                received.touch()
                argv = [sys.executable, __file__, "--bare-subscriber", str(broker.port), str(received)]
                if mqtt_login is not None:
                    env.update(LW_BENCH_MQTT_USER=mqtt_login.username, LW_BENCH_MQTT_PASSWORD=mqtt_login.password)
                arrived = received_by(received)
            with log_path.open("wb") as log:
                proc = subprocess.Popen(argv, stdout=log, stderr=log, env=env)
            deadline = time.monotonic() + 60
            while "subscribed to" not in log_path.read_text(errors="replace"):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"collector did not start:\n{log_path.read_text()[-2000:]}")
                time.sleep(0.05)
            baseline: list[float] = []
            measure_latency(broker.port, arrived, key, range(1, 6), stop=None, out=baseline, login=logins[DEVICE])
            idle = rss_mb(proc.pid)
            sampler = RssSampler(proc.pid)
            sampler.start()
            during: list[float] = []
            stop = threading.Event()
            meter = threading.Thread(
                target=measure_latency,
                args=(broker.port, arrived, key, range(100, 10_000)),
                kwargs={"stop": stop, "out": during, "login": logins[DEVICE]},
            )
            meter.start()
            flood_s = flood(broker.port, args.qos0, args.junk, logins[ATTACKER])
            flood_end = len(during)
            # Keep measuring until the collector has drained what the broker still held:
            # two genuine batches in a row back at the normal latency (or two minutes).
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and not (
                len(during) >= flood_end + 2 and max(during[-2:]) < max(baseline) + 0.5
            ):
                time.sleep(0.2)
            drained_s = time.monotonic() - deadline + 120
            stop.set()
            meter.join(TIMEOUT_S)
            sampler.stop.set()
            sampler.join()
            after = rss_mb(proc.pid)
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
    normal = max(baseline)
    added = (max(during) - normal) if during else float("inf")
    latency_ok = bool(during) and added < LATENCY_BOUND_S
    attacker = f"one device account ({ATTACKER})" if args.broker == "authenticated" else "anonymous"
    where = "stored by the collector" if args.subscriber == "collector" else "received by the bare subscriber"
    print(f"command: {command}")
    print(f"broker: {args.broker}; attacker: {attacker}; latency = publish -> {where}")
    print(f"flood: {args.qos0:,} QoS 0 x 200 B + {args.junk} QoS 1 x 1 MiB junk, published in {flood_s:.1f} s")
    print(f"dead letters kept: {letters} rows, {kept / 1024:.0f} KiB of raw bytes; "
          f"back to normal latency {drained_s:.1f} s after the last flood message was published")  # fmt: skip
    print(f"genuine batch latency without flood ({len(baseline)} batches): median "
          f"{statistics.median(baseline) * 1000:.0f} ms, max {normal * 1000:.0f} ms")  # fmt: skip
    if during:
        print(f"genuine batch latency during flood ({len(during)} batches): median "
              f"{statistics.median(during) * 1000:.0f} ms, max {max(during) * 1000:.0f} ms")  # fmt: skip
    print(f"FIGURE rss: idle {idle:.0f} MB, peak {sampler.peak:.0f} MB, growth {growth:+.0f} MB "
          f"(bound < {RSS_BOUND_MB:.0f} MB), after {after:.0f} MB: {'PASS' if rss_ok else 'FAIL'}")  # fmt: skip
    print(f"FIGURE fairness: another device's batch max {max(during, default=float('nan')) * 1000:.0f} ms during "
          f"the flood vs {normal * 1000:.0f} ms normal, added {added * 1000:.0f} ms "
          f"(bound < {LATENCY_BOUND_S * 1000:.0f} ms): {'PASS' if latency_ok else 'FAIL'}")  # fmt: skip
    ok = rss_ok and latency_ok
    print("PASS" if ok else "FAIL", "(peak - idle < 100 MB; flood adds < 1 s to the genuine latency)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
