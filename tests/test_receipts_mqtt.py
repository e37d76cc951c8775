"""End-to-end receipts through a real private Mosquitto and ``lienwatch collector serve``.

The agent side is the agent's own outbox, uplink and receipt gate (in this process); the
collector is a subprocess; the broker keeps at most 1,000 queued messages per session (the
Mosquitto default), so a flood makes it drop messages it has already acknowledged to their
publisher. The property: every batch of the device is stored exactly once anyway, because
the device forgets a batch only when a signed receipt covers it and publishes again what
stays un-receipted. Loads are the issue's numbers (300 batches, a 20,000-message flood).
"""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
import sqlalchemy as sa
from paho.mqtt.enums import CallbackAPIVersion

from collector.storage.database import create_engine, migrate
from collector.storage.tables import Base
from edge.config import MqttSettings
from edge.outbox import Outbox, Priority
from edge.receipts import ReceiptGate, ReceiptMode
from edge.uplink import Uplink
from firmware_sim.rig import Mosquitto
from protocol.cli.key_files import generate
from tests.collector_process import CollectorProcess, collector_command, wait_until
from tests.fake_devices import T0, FakeDevice, register
from tests.secure_broker import SecureBroker
from tests.test_ingest_mqtt import write_config as write_ingest_config

BATCHES = 300
FLOOD = 20_000
RECEIPT_TIMEOUT_S = 5.0
pytestmark = pytest.mark.mqtt  # a broker and a collector process: the process tier


def write_config(path: Path, database_url: str, broker: Mosquitto | SecureBroker, signing_key: Path, *,
                 receipts: bool) -> Path:
    """The ingest tests' collector.toml with a signing key and receipts on or off."""
    downlink = (
        f'\n[downlink]\nsigning_key = "{signing_key}"\nreceipts = {"true" if receipts else "false"}\n'
        "receipt_interval_s = 0.5\n"
    )
    return write_ingest_config(path, database_url, broker, "collector-r", extra=downlink)


class Rig:
    """A collector subprocess with a signing key, the device and the flooding device registered."""

    def __init__(self, tmp_path: Path, broker: Mosquitto | SecureBroker, *, receipts: bool = True) -> None:
        self.tmp_path = tmp_path
        self.broker = broker
        self.database_url = f"sqlite:///{tmp_path / 'collector.db'}"
        self.engine = create_engine(self.database_url)
        migrate(self.engine)
        self.device, self.flooder = FakeDevice("car-0001"), FakeDevice("car-flood")
        register(self.engine, self.device, self.flooder)
        self.keys = generate(tmp_path / "keys", "collector")
        self.config = write_config(
            tmp_path / "collector.toml", self.database_url, broker, self.keys.private_path, receipts=receipts
        )
        self.collector = CollectorProcess(self.config, "--ingest-only")
        self.collector.wait_ready()

    def agent(self, mode: ReceiptMode) -> tuple[Outbox, Uplink]:
        outbox = Outbox(self.tmp_path / "agent" / "outbox.db", max_bytes=64 * 1024 * 1024)
        gate = ReceiptGate(self.device.device_id, self.keys.public_key, outbox)
        login = self.broker.login("car-0001") if isinstance(self.broker, SecureBroker) else None
        settings = MqttSettings(
            host="127.0.0.1", port=self.broker.port, client_id="car-0001", inflight=20, backoff_max_s=2.0,
            username=login.username if login else None, password=login.password if login else None,
        )
        uplink = Uplink(
            settings,
            device_id=self.device.device_id,
            outbox=outbox,
            make_state=lambda online: self.device.state(online, T0),
            receipts=gate,
            receipt_mode=mode,
            receipt_timeout_s=RECEIPT_TIMEOUT_S,
        )
        uplink.start()
        return outbox, uplink

    def stored_seqs(self) -> list[int]:
        t = Base.metadata.tables["batches"]
        with self.engine.connect() as conn:
            return list(conn.execute(sa.select(t.c.seq).where(t.c.device_id == "car-0001").order_by(t.c.seq)).scalars())

    def gaps(self) -> dict[str, object]:
        out = subprocess.run(
            [*collector_command(), "gaps", "--device", "car-0001", "--config", str(self.config)],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        return json.loads(out.stdout)  # type: ignore[no-any-return]

    def close(self) -> None:
        self.collector.close()
        self.engine.dispose()


class Flood:
    """FLOOD QoS 1 copies of one stored batch, published as fast as the broker takes them."""

    def __init__(self, broker: Mosquitto, topic: str, message: bytes) -> None:
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="flooder", protocol=mqtt.MQTTv5)
        self.client.max_inflight_messages_set(1000)
        self.client.max_queued_messages_set(0)
        self.client.connect("127.0.0.1", broker.port)
        self.client.loop_start()
        self.acked = 0
        self.client.on_publish = self._on_publish
        self._thread = threading.Thread(target=self._run, args=(topic, message), daemon=True)
        self._thread.start()

    def _on_publish(self, *_args: object) -> None:
        self.acked += 1

    def _run(self, topic: str, message: bytes) -> None:
        for _ in range(FLOOD):
            self.client.publish(topic, message, qos=1)

    def close(self) -> None:
        self._thread.join(120)
        wait_until(lambda: self.acked >= FLOOD, timeout=120, what="the flood acknowledged by the broker")
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def bounded_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    """A broker with Mosquitto's default queue bound and no persistence (a crash loses its queues)."""
    broker = Mosquitto(workdir=tmp_path_factory.mktemp("bounded"), persistence=False, max_queued_messages=1000)
    broker.start()
    try:
        yield broker
    finally:
        broker.close()


def run_stream(rig: Rig, outbox: Outbox, uplink: Uplink, *, restart_broker_at: int | None = None,
               stall_collector_at: int | None = None) -> None:
    """Store BATCHES signed one-minute batches in the outbox while the flood runs.

    ``stall_collector_at``: at that seq the collector process is stopped (SIGSTOP) for 3 s, as
    a busy collector would be, so the broker's queue for its session overflows for certain
    (a fast collector on an idle machine may otherwise keep the queue under 1,000).
    ``restart_broker_at``: at that seq the broker is killed and restarted, the collector
    stopped meanwhile (so the broker dies holding messages for it).
    """
    flood_message = rig.flooder.sealed(1, fixes=60)  # stored once, then 19,999 duplicates
    flood = Flood(rig.broker, rig.flooder.topic, flood_message)
    try:
        for seq in range(1, BATCHES + 1):
            message = rig.device.sealed(seq, fixes=60, t0=T0 + seq * 60_000)
            outbox.put(seq, message, priority=Priority.ROUTINE, fixes=60)
            uplink.wake()
            if seq == stall_collector_at:
                rig.collector.proc.send_signal(signal.SIGSTOP)
                time.sleep(3.0)
                rig.collector.proc.send_signal(signal.SIGCONT)
            if seq == restart_broker_at:
                # The collector paused first, so the broker's queue for it is certainly not empty
                # when the broker dies (a collector that keeps up may otherwise have read it all).
                rig.collector.proc.send_signal(signal.SIGSTOP)
                time.sleep(1.0)
                rig.broker.stop(kill=True)  # no persistence: its queues and retained receipts are gone
                time.sleep(1.0)
                rig.broker.start()
                rig.collector.proc.send_signal(signal.SIGCONT)
            time.sleep(0.01)
    finally:
        flood.close()
    wait_until(lambda: outbox.stats()["outbox_batches"] == 0, timeout=300, what="every batch receipted")


@pytest.mark.parametrize("restart", [False, True], ids=["flood", "flood-and-broker-killed"])
def test_every_batch_is_stored_exactly_once_through_a_flood(
    bounded_broker: Mosquitto, tmp_path: Path, restart: bool
) -> None:
    rig = Rig(tmp_path, bounded_broker)
    outbox, uplink = rig.agent(ReceiptMode.REQUIRED)
    try:
        run_stream(rig, outbox, uplink, restart_broker_at=BATCHES // 2 if restart else None,
                   stall_collector_at=None if restart else 1)  # paused while the flood arrives
        assert rig.stored_seqs() == list(range(1, BATCHES + 1))  # all there; (device, seq) is unique
        wait_until(lambda: rig.gaps()["missing"] == 0, what="the gap count back to 0")
        gaps = rig.gaps()
        assert (gaps["low_seq"], gaps["high_seq"]) == (1, BATCHES)
        counters = {**uplink.counters, **(uplink.receipts.counters if uplink.receipts else {})}
        dropped = "dropped" in bounded_broker.log_path.read_text()
        print(
            f"\n{'broker killed mid-stream; ' if restart else ''}broker dropped messages: {dropped}; agent: "
            + ", ".join(f"{k}={counters[k]}" for k in sorted(counters) if counters[k])
        )
        assert counters["batches_receipted"] == BATCHES
        assert counters["receipts_rejected"] == 0
        # The load did what the issue measured: the broker dropped messages it had acknowledged
        # (or lost them with its queues when killed); the copies published again filled the holes.
        assert dropped or restart
        assert counters["batches_resent"] > 0
    finally:
        uplink.stop()
        outbox.close()
        rig.close()


def test_auto_mode_with_a_collector_that_sends_no_receipts_behaves_as_before(
    mosquitto: SecureBroker, tmp_path: Path
) -> None:
    rig = Rig(tmp_path, mosquitto, receipts=False)
    outbox, uplink = rig.agent(ReceiptMode.AUTO)
    try:
        for seq in range(1, 21):
            outbox.put(seq, rig.device.sealed(seq, t0=T0 + seq * 60_000), priority=Priority.ROUTINE, fixes=3)
            uplink.wake()
        wait_until(lambda: rig.stored_seqs() == list(range(1, 21)), what="20 batches stored")
        # No receipt ever came: each batch is forgotten one receipt timeout after its PUBACK,
        # never published again.
        wait_until(lambda: outbox.stats()["outbox_batches"] == 0, timeout=60, what="the outbox emptied")
        assert uplink.counters["batches_expired_unreceipted"] == 20
        assert uplink.counters["batches_resent"] == 0
        assert uplink.receipts is not None
        assert not uplink.receipts.ever_seen
    finally:
        uplink.stop()
        outbox.close()
        rig.close()
