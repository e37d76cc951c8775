"""The ingest through a real private SecureBroker, on SQLite and PostgreSQL.

In-process tests run :class:`collector.ingest.service.IngestService` on threads; the crash
and scale-out tests run ``lienwatch collector serve --ingest-only`` as subprocesses. Every
wait is on a condition with a bounded timeout (a poll of the database or a counter).
"""

from __future__ import annotations

import collections
import re
import threading
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
import sqlalchemy as sa
from paho.mqtt.enums import CallbackAPIVersion

from collector.errors import DatabaseUnavailableError
from collector.ingest.ingestor import Ingestor, IngestResult, Message
from collector.ingest.service import IngestService
from collector.settings import Limits, MqttSettings
from collector.storage.database import create_engine, migrate
from collector.storage.tables import Base
from firmware_sim.rig import Mosquitto
from protocol import parse_topic, state_topic
from tests.collector_process import WAIT_S, CollectorProcess, wait_until
from tests.fake_devices import NOW, T0, FakeDevice, count, register, status_row
from tests.secure_broker import SecureBroker


class Publisher:
    """Device-side MQTT 5 publishers that record which messages the broker acknowledged.

    A message goes out from the account of the device its topic names (the broker's ACL
    lets a device publish only on its own topics), one client per device.
    """

    def __init__(self, broker: SecureBroker, client_id: str = "test-publisher") -> None:
        self._broker = broker
        self._client_id = client_id
        self._clients: dict[str, mqtt.Client] = {}

    def _client(self, topic: str) -> mqtt.Client:
        device_id = parse_topic(topic).device_id
        client = self._clients.get(device_id)
        if client is None:
            login = self._broker.login(device_id)
            client = mqtt.Client(
                CallbackAPIVersion.VERSION2, client_id=f"{self._client_id}-{device_id}", protocol=mqtt.MQTTv5
            )
            client.username_pw_set(login.username, login.password)
            client.max_inflight_messages_set(100)
            client.connect("127.0.0.1", self._broker.port)
            client.loop_start()
            self._clients[device_id] = client
        return client

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> mqtt.MQTTMessageInfo:
        return self._client(topic).publish(topic, payload, qos=1, retain=retain)

    def publish_acked(self, topic: str, payload: bytes, *, retain: bool = False) -> bool:
        info = self.publish(topic, payload, retain=retain)
        info.wait_for_publish(WAIT_S)
        return info.is_published()

    def close(self) -> None:
        for client in self._clients.values():
            client.disconnect()
            client.loop_stop()


@pytest.fixture
def engine(database_url: str) -> Iterator[sa.Engine]:
    db = create_engine(database_url)
    migrate(db)
    yield db
    db.dispose()


@pytest.fixture
def publisher(mosquitto: SecureBroker) -> Iterator[Publisher]:
    pub = Publisher(mosquitto)
    yield pub
    pub.close()


def mqtt_settings(broker: SecureBroker, client_id: str = "collector-test") -> MqttSettings:
    login = broker.login()  # the collector's account
    return MqttSettings(
        host="127.0.0.1", port=broker.port, client_id=client_id, group="test",
        username=login.username, password=login.password,
    )  # fmt: skip


FAST_LIMITS = Limits(key_cache_ttl_s=0, db_retry_initial_s=0.01, db_retry_max_s=0.05)


@pytest.fixture
def service(engine: sa.Engine, mosquitto: SecureBroker) -> Iterator[IngestService]:
    ingest = IngestService(Ingestor(engine, FAST_LIMITS), mqtt_settings(mosquitto), FAST_LIMITS)
    ingest.start()
    assert ingest.ready.wait(WAIT_S), "collector did not subscribe"
    yield ingest
    ingest.stop()


def stored_seqs(engine: sa.Engine, device_id: str) -> list[int]:
    t = Base.metadata.tables["batches"]
    with engine.connect() as conn:
        return sorted(conn.execute(sa.select(t.c.seq).where(t.c.device_id == device_id)).scalars())


# ------------------------------------------------------------------ in-process


def test_same_batch_published_three_times_is_stored_once(
    engine: sa.Engine, service: IngestService, publisher: Publisher
) -> None:
    truck = FakeDevice("truck-1")
    register(engine, truck)
    message = truck.sealed(1, fixes=600)
    assert all(publisher.publish_acked(truck.topic, message) for _ in range(3))
    wait_until(lambda: service.acked == 3, what="3 acknowledgements")
    assert count(engine, "batches") == 1
    assert count(engine, "fixes") == 600
    assert (service.ingestor.counters["stored"], service.ingestor.counters["duplicates"]) == (1, 2)
    assert status_row(engine, "truck-1")["duplicates"] == 2


def test_commit_listener_gets_stored_and_duplicate_seqs_after_the_commit(
    engine: sa.Engine, service: IngestService, publisher: Publisher
) -> None:
    truck = FakeDevice("truck-1")
    register(engine, truck)
    seen: list[tuple[str, int]] = []
    committed: list[bool] = []

    def listener(pairs: Sequence[tuple[str, int]]) -> None:
        assert pairs
        committed.append(all(s in stored_seqs(engine, "truck-1") for _, s in pairs))
        seen.extend(pairs)

    service.add_commit_listener(listener)
    service.add_commit_listener(lambda pairs: 1 / 0)  # a failing listener is counted, nothing else
    for seq in (1, 2, 2, 3):
        assert publisher.publish_acked(truck.topic, truck.sealed(seq))
    assert publisher.publish_acked(truck.topic, b"junk")
    wait_until(lambda: service.acked == 5, what="5 acknowledgements")
    assert sorted(seen) == [("truck-1", 1), ("truck-1", 2), ("truck-1", 2), ("truck-1", 3)]
    assert all(committed)
    assert service.ingestor.counters["hook_errors"] == len(committed)


def test_poisoned_messages_are_dead_lettered_while_valid_traffic_flows(
    engine: sa.Engine, service: IngestService, publisher: Publisher
) -> None:
    truck, other, ghost = FakeDevice("truck-1"), FakeDevice("truck-2"), FakeDevice("ghost")
    revoked = FakeDevice("revoked-1")
    register(engine, truck, other, revoked)
    from collector.ingest.registry import DeviceRegistry

    DeviceRegistry(engine).revoke("revoked-1")
    good = truck.sealed(1)
    poison = [
        (truck.topic, seal_with(other, truck), "bad_signature"),
        (ghost.topic, ghost.sealed(1), "unknown_device"),
        (revoked.topic, revoked.sealed(1), "unknown_device"),
        (other.topic, truck.sealed(1), "device_mismatch"),  # replayed onto another device's topic
        (truck.topic, b"\xd2" + b"\x00" * (1 << 20), None),  # over max_message_bytes: refused unread
        (truck.topic, good[: len(good) // 2], "truncated"),
        (truck.topic, b"\x00garbage\xff", "invalid_envelope"),
        (truck.topic, b"\xd2" + b"\x81" * 5000 + b"\x00", "too_deep"),
    ]
    expected_seqs = []
    seq = 1
    for topic, payload, _reason in poison:
        assert publisher.publish_acked(truck.topic, truck.sealed(seq))
        expected_seqs.append(seq)
        seq += 1
        assert publisher.publish_acked(topic, payload)
    # More poison than the broker's in-flight window: acked dead letters never stall delivery.
    for i in range(120):
        assert publisher.publish_acked(truck.topic, b"junk %d" % i)
    assert publisher.publish_acked(truck.topic, truck.sealed(seq))
    expected_seqs.append(seq)
    total = 2 * len(poison) + 121
    wait_until(lambda: service.acked == total, what=f"{total} acknowledgements")
    assert stored_seqs(engine, "truck-1") == expected_seqs
    t = Base.metadata.tables["dead_letters"]
    with engine.connect() as conn:
        reasons = collections.Counter(conn.execute(sa.select(t.c.reason)).scalars())
    # Devices are served round-robin, so rows of different topics need not keep publish order.
    assert reasons == collections.Counter([r for _, _, r in poison if r] + ["invalid_envelope"] * 120)
    # The oversized one was skipped as it arrived (never held, so no dead letter), and counted.
    assert service.refused["oversized"] == 1
    assert service.client.skipped_bytes == (1 << 20) + 1


def seal_with(signer: FakeDevice, device: FakeDevice) -> bytes:
    """``device``'s batch signed with ``signer``'s key (a forgery)."""
    from protocol import seal_batch

    return seal_batch(device.batch(99), signer.key, device.topic)


def test_state_messages_set_online_and_offline(
    engine: sa.Engine, mosquitto: SecureBroker, publisher: Publisher
) -> None:
    truck = FakeDevice("truck-1")
    register(engine, truck)
    # A retained birth published before the collector ever connected is still applied.
    assert publisher.publish_acked(state_topic("truck-1"), truck.state(True, T0), retain=True)
    with IngestService(Ingestor(engine, FAST_LIMITS), mqtt_settings(mosquitto), FAST_LIMITS) as ingest:
        wait_until(lambda: ingest.acked == 1, what="the retained birth")
        assert status_row(engine, "truck-1")["online"] is True
        assert publisher.publish_acked(state_topic("truck-1"), truck.state(False, T0))
        wait_until(lambda: ingest.acked == 2, what="the will")
        assert status_row(engine, "truck-1")["online"] is False


class FlakyIngestor(Ingestor):
    """Reports the database as unreachable for the first ``failures`` calls."""

    def __init__(self, *args: object, failures: int, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.failures = failures
        self.release = threading.Event()

    def handle_group(self, messages: Sequence[Message]) -> list[IngestResult]:
        if self.failures > 0:
            self.failures -= 1
            if self.failures == 0:
                self.release.wait(WAIT_S)
            raise DatabaseUnavailableError("database unreachable (simulated)")
        return super().handle_group(messages)


def test_database_outage_holds_the_ack_and_retries(
    engine: sa.Engine, mosquitto: SecureBroker, publisher: Publisher
) -> None:
    truck = FakeDevice("truck-1")
    register(engine, truck)
    flaky = FlakyIngestor(engine, FAST_LIMITS, failures=3, clock_ms=lambda: NOW)
    with IngestService(flaky, mqtt_settings(mosquitto), FAST_LIMITS) as ingest:
        assert ingest.ready.wait(WAIT_S)
        assert publisher.publish_acked(truck.topic, truck.sealed(1))
        assert publisher.publish_acked(truck.topic, truck.sealed(2))
        wait_until(lambda: flaky.failures == 0, what="three failed attempts")
        # While the database is "down" nothing is acknowledged and nothing dead-lettered.
        assert (ingest.acked, count(engine, "dead_letters"), count(engine, "batches")) == (0, 0, 0)
        flaky.release.set()
        wait_until(lambda: ingest.acked == 2, what="both acknowledgements")
    assert stored_seqs(engine, "truck-1") == [1, 2]
    assert flaky.counters["db_retries"] == 3
    assert flaky.metrics.registry.get_sample_value("lienwatch_ingest_db_retries_total") == 3.0


# ------------------------------------------------------------------ separate processes


def write_config(
    path: Path, database_url: str, broker: SecureBroker | Mosquitto, client_id: str, extra: str = ""
) -> Path:
    """A collector.toml for a collector subprocess; ``extra``: more TOML appended (e.g. ``[downlink]``)."""
    account = ""
    if isinstance(broker, SecureBroker):  # the collector's account (an open load-generator broker has none)
        login = broker.login()
        account = f'username = "{login.username}"\npassword = "{login.password}"\n'
    path.write_text(
        f"""database_url = "{database_url}"
data_dir = "{path.parent / "data"}"
log_level = "INFO"

[mqtt]
host = "127.0.0.1"
port = {broker.port}
group = "collectors"
client_id = "{client_id}"
{account}
[api]
port = 0

[limits]
key_cache_ttl_s = 0
max_clock_skew_s = 315360000
{extra}"""
    )
    return path


def test_collector_killed_mid_stream_loses_nothing(
    engine: sa.Engine, database_url: str, mosquitto: SecureBroker, publisher: Publisher, tmp_path: Path
) -> None:
    truck = FakeDevice("truck-1")
    register(engine, truck)
    config = write_config(tmp_path / "collector.toml", database_url, mosquitto, "collector-a")
    messages = {seq: truck.sealed(seq, t0=T0 + seq * 60_000, fixes=600) for seq in range(1, 121)}
    accepted: set[int] = set()
    infos: dict[int, mqtt.MQTTMessageInfo] = {}

    first = CollectorProcess(config, "--ingest-only")
    try:
        first.wait_ready()
        for seq in range(1, 61):
            infos[seq] = publisher.publish(truck.topic, messages[seq])
        wait_until(lambda: count(engine, "batches") >= 5, what="the first stored batches")
        first.kill()  # SIGKILL mid-stream: some batches in flight, unacknowledged
    finally:
        first.close()
    stored_at_kill = count(engine, "batches")
    for seq in range(61, 121):  # published while no collector runs
        infos[seq] = publisher.publish(truck.topic, messages[seq])
    for seq, info in infos.items():
        info.wait_for_publish(WAIT_S)
        if info.is_published():
            accepted.add(seq)
    assert accepted == set(range(1, 121))

    second = CollectorProcess(config, "--ingest-only")
    try:
        second.wait_ready()
        wait_until(lambda: count(engine, "batches") == 120, what="all 120 batches")
        wait_until(lambda: "metrics on http" in second.log, what="the metrics endpoint")
        port = re.search(r"metrics on http://127.0.0.1:(\d+)/metrics", second.log).group(1)  # type: ignore[union-attr]
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=WAIT_S).read().decode()
        assert "lienwatch_ingest_batches_stored_total" in metrics
        assert second.terminate() == 0
    finally:
        second.close()
    assert stored_at_kill < 120
    assert stored_seqs(engine, "truck-1") == sorted(accepted)
    assert count(engine, "fixes") == 120 * 600
    assert "ingest stopped" in second.log


def test_two_collectors_on_one_shared_subscription_store_each_batch_once(
    engine: sa.Engine, database_url: str, mosquitto: SecureBroker, publisher: Publisher, tmp_path: Path
) -> None:
    trucks = [FakeDevice("truck-1"), FakeDevice("truck-2")]
    register(engine, *trucks)
    configs = [write_config(tmp_path / f"c-{name}.toml", database_url, mosquitto, f"collector-{name}") for name in "ab"]
    collectors = [CollectorProcess(config, "--ingest-only") for config in configs]
    try:
        for c in collectors:
            c.wait_ready()
        infos = [
            publisher.publish(truck.topic, truck.sealed(seq, t0=T0 + seq * 60_000, fixes=60))
            for seq in range(1, 101)
            for truck in trucks
        ]
        for info in infos:
            info.wait_for_publish(WAIT_S)
        assert all(info.is_published() for info in infos)
        wait_until(lambda: count(engine, "batches") == 200, what="200 batches")
        codes = [c.terminate() for c in collectors]
    finally:
        for c in collectors:
            c.close()
    assert codes == [0, 0]
    for truck in trucks:
        assert stored_seqs(engine, truck.device_id) == list(range(1, 101))
    stored = [int(re.search(r"'stored': (\d+)", c.log).group(1)) for c in collectors]  # type: ignore[union-attr]
    assert sum(stored) == 200
    assert all(n > 0 for n in stored), f"one collector did all the work: {stored}"
