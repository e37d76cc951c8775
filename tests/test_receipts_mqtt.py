"""End-to-end receipts through a real private Mosquitto and ``lienwatch collector serve``.

The agent side is the agent's own outbox, uplink and receipt gate (in this process); the
collector is a subprocess; the broker keeps at most 1,000 queued messages per session (the
Mosquitto default), so a flood makes it drop messages it has already acknowledged to their
publisher. The property: every batch of the device is stored exactly once anyway, because
the device forgets a batch only when a signed receipt covers it and publishes again what
stays un-receipted. Loads are the issue's numbers (300 batches, a 20,000-message flood).
"""

from __future__ import annotations

import itertools
import json
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
import sqlalchemy as sa
from paho.mqtt.enums import CallbackAPIVersion

from collector.ingest.seq_ledger import SeqLedger
from collector.storage.database import create_engine, migrate
from collector.storage.tables import Base, SeqLedgerRecord
from edge.batcher import ClosedBatch
from edge.config import MqttSettings
from edge.outbox import Outbox, Priority
from edge.receipts import ReceiptGate, ReceiptMode
from edge.sealing import BatchSealer
from edge.sequence import SequenceAllocator, provision_sequence
from edge.uplink import Uplink
from firmware_sim.rig import LinkCutter, Mosquitto
from protocol import Alert, Fix, Severity
from protocol.cli.key_files import generate
from tests.collector_process import CollectorProcess, collector_command, wait_until
from tests.fake_devices import BOOT_A, T0, FakeDevice, register
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
        self.start_collector()

    def start_collector(self) -> None:
        self.collector = CollectorProcess(self.config, "--ingest-only")
        self.collector.wait_ready()

    def agent(self, mode: ReceiptMode, *, max_bytes: int = 64 * 1024 * 1024, port: int | None = None
              ) -> tuple[Outbox, Uplink]:
        """The device's outbox and uplink (to the broker, or to ``port``: a relay in front of it)."""
        outbox = Outbox(self.tmp_path / "agent" / "outbox.db", max_bytes=max_bytes)
        gate = ReceiptGate(self.device.device_id, self.keys.public_key, outbox)
        login = self.broker.login("car-0001") if isinstance(self.broker, SecureBroker) else None
        settings = MqttSettings(
            host="127.0.0.1", port=port or self.broker.port, client_id="car-0001", inflight=20, backoff_max_s=2.0,
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


OFFLINE_BEFORE_KILL = 20


def run_stream(rig: Rig, outbox: Outbox, uplink: Uplink, *, restart_broker_at: int | None = None,
               stall_collector_at: int | None = None) -> None:
    """Store BATCHES signed one-minute batches in the outbox while the flood runs.

    ``stall_collector_at``: at that seq the collector process is stopped (SIGSTOP) for 3 s, as
    a busy collector would be, so the broker's queue for its session overflows for certain
    (a fast collector on an idle machine may otherwise keep the queue under 1,000).
    ``restart_broker_at``: the collector is killed ``OFFLINE_BEFORE_KILL`` seqs before it, so
    the batches published meanwhile sit acknowledged in its session's queue on the broker (not
    in a socket buffer); then the broker is killed (they are gone with it) and restarted, and a
    new collector process starts. Without that, a fast collector may hold every batch already
    and the kill would lose nothing (a stopped collector's socket buffers can hold them too).
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
            if restart_broker_at is not None and seq == restart_broker_at - OFFLINE_BEFORE_KILL:
                rig.collector.kill()  # its session stays on the broker and queues what arrives
            if seq == restart_broker_at:
                time.sleep(1.0)  # the last batches reach the broker's queue and are acknowledged
                rig.broker.stop(kill=True)  # no persistence: its queues and retained receipts are gone
                time.sleep(1.0)
                rig.broker.start()
                rig.start_collector()
            time.sleep(0.01)
    finally:
        if rig.collector.proc.poll() is None:
            rig.collector.proc.send_signal(signal.SIGCONT)  # never leave it stopped, whatever failed
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
        assert counters["batches_resent"] >= (OFFLINE_BEFORE_KILL if restart else 1)  # those 20 were lost for sure
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


def test_an_overflowing_outbox_announces_its_evictions_and_receipts_bridge_them(
    mosquitto: SecureBroker, tmp_path: Path
) -> None:
    """Issue 12: a 16 KiB outbox overflows while the broker is unreachable (every third batch an
    alert, which is never evicted, so the evicted seqs form more holes than a receipt's 32
    ranges could list); the link returns. The device announces what it evicted, the ledger
    bridges it: receipts run past the evicted seqs, the outbox drains to empty, and the gaps
    show the evicted count and nothing missing."""
    rig = Rig(tmp_path, mosquitto)
    cutter = LinkCutter(mosquitto.port)
    outbox, uplink = rig.agent(ReceiptMode.REQUIRED, max_bytes=16 * 1024, port=cutter.port)
    provision_sequence(tmp_path / "agent" / "sequence")
    sealer = BatchSealer(
        "car-0001", BOOT_A, rig.device.key, SequenceAllocator(tmp_path / "agent" / "sequence"), outbox,
        stored=uplink.wake, boot_counters={}, counters={}, wall_ms=lambda: T0 + 86_400_000,
    )  # fmt: skip
    sealed: list[int] = []
    evicted: list[int] = []
    put = outbox.put

    def put_and_note(*args: Any, **kw: Any) -> list[int]:
        made_room = put(*args, **kw)
        evicted.extend(made_room)
        return made_room

    outbox.put = put_and_note  # type: ignore[method-assign]

    def store(i: int) -> None:
        fixes = tuple(Fix(T0 + i * 60_000 + j * 1000, 31.2 + j * 1e-5, 121.4, speed_mps=10.0) for j in range(20))
        alerts = (Alert("power_cut", Severity.HIGH, T0 + i * 60_000, f"ep-{i}"),) if i % 3 == 0 else ()
        seq = sealer.store(ClosedBatch(fixes=fixes[:1] if alerts else fixes, alerts=alerts))
        assert seq is not None
        sealed.append(seq)

    try:
        for i in range(1, 6):  # the link is up: stored and receipted
            store(i)
        wait_until(lambda: outbox.stats()["outbox_batches"] == 0, timeout=60, what="the first batches receipted")
        cutter.cut()  # the broker is unreachable
        wait_until(lambda: not uplink.connected.is_set(), timeout=30, what="the uplink to notice the outage")
        for i in range(6, 126):
            store(i)
        assert len(evicted) > 60, f"only {len(evicted)} evicted: the outbox did not overflow"
        cutter.restore()
        # the link is back: batches keep coming; the next ones carry what is still unannounced
        i = 126
        while outbox.unannounced_evicted(100) and i < 200:
            store(i)
            i += 1
            time.sleep(0.2)
        assert outbox.unannounced_evicted(100) == []
        wait_until(lambda: outbox.stats()["outbox_batches"] == 0, timeout=180, what="the outbox drained by receipts")
        stored = set(rig.stored_seqs())
        lost = sorted(set(sealed) - stored)
        assert lost == sorted(set(evicted) - stored)  # an evicted batch the broker had acknowledged may have landed
        assert all(seq % 3 != 0 for seq in lost)  # no alert batch lost (seq i is batch i here)
        holes = sum(1 for a, b in itertools.pairwise(lost) if b != a + 1) + 1
        assert holes > 32  # more than one receipt's ranges: only bridging makes the outbox drain
        wait_until(lambda: rig.gaps()["high_seq"] == sealed[-1], what="the ledger merged the last batch")
        gaps = rig.gaps()
        assert (gaps["missing"], gaps["evicted"], gaps["low_seq"]) == (0, len(lost), 1), gaps
        assert gaps["evicted_ranges"][0]["first"] == lost[0]
        with rig.engine.connect() as conn:  # the receipt the collector signed last runs to the end
            row = conn.execute(sa.select(SeqLedgerRecord.ranges)).scalar_one()
        assert SeqLedger.from_json(row).receipt_view() == (1, sealed[-1], ())
        counters = {**uplink.counters, **(uplink.receipts.counters if uplink.receipts else {})}
        assert counters["receipts_rejected"] == 0
        assert counters["batches_receipted"] == len(sealed) - len(evicted)  # every batch: receipted or evicted
    finally:
        uplink.stop()
        outbox.close()
        cutter.close()
        rig.close()
