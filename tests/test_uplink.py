"""MQTT uplink against a private SecureBroker, and the downlink configuration gate."""

from __future__ import annotations

import hashlib
import random
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import cbor2
import paho.mqtt.client as mqtt
import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from collector.cli.broker_auth import Credentials
from edge.backoff import Backoff
from edge.config import MqttSettings
from edge.errors import ConfigError
from edge.outbox import Outbox, Priority
from edge.uplink import ConfigGate, DownlinkRejectedError, Uplink, UplinkError
from protocol import (
    Batch,
    DeviceConfig,
    DeviceState,
    Fix,
    batch_topic,
    config_topic,
    open_batch,
    open_state,
    seal_batch,
    seal_config,
    seal_state,
    state_topic,
)
from tests.mqtt_subscriber import Collector, wait_until
from tests.secure_broker import SecureBroker

DEVICE = "car-0042"
T0 = 1_767_225_600_000
BOOT = bytes(range(16))


@pytest.fixture
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture
def collector(mosquitto: SecureBroker) -> Iterator[Collector]:
    c = Collector(mosquitto, [batch_topic(DEVICE), state_topic(DEVICE)])
    yield c
    c.close()


def sealed(seq: int, key: Ed25519PrivateKey) -> bytes:
    fixes = (Fix(time_ms=T0 + seq * 1000, lat=31.3 + seq * 1e-5, lon=121.25),)
    batch = Batch(device_id=DEVICE, boot_id=BOOT, seq=seq, created_ms=T0 + seq * 1000, fixes=fixes)
    return seal_batch(batch, key, batch_topic(DEVICE))


def make_uplink(
    port: int, outbox: Outbox, key: Ed25519PrivateKey, *, login: Credentials | None = None, **kw: object
) -> Uplink:
    account = {} if login is None else {"username": login.username, "password": login.password}
    settings = MqttSettings(
        port=port,
        client_id=DEVICE,
        inflight=5,
        backoff_min_s=0.05,
        backoff_max_s=0.5,
        **account,  # type: ignore[arg-type]
    )

    def make_state(online: bool) -> bytes:
        state = DeviceState(DEVICE, online, T0, BOOT, {"agent": "test"}, {"published": 1})
        return seal_state(state, key, state_topic(DEVICE))

    return Uplink(settings, device_id=DEVICE, outbox=outbox, make_state=make_state, rng=random.Random(7), **kw)  # type: ignore[arg-type]


def seqs_of(messages: list[mqtt.MQTTMessage], key: Ed25519PrivateKey) -> dict[int, set[str]]:
    """seq -> distinct payload digests seen for it (verified with the project's decoder)."""
    out: dict[int, set[str]] = {}
    keys = {DEVICE: key.public_key()}
    for m in messages:
        if m.topic == batch_topic(DEVICE):
            batch = open_batch(bytes(m.payload), m.topic, keys)
            out.setdefault(batch.seq, set()).add(hashlib.sha256(m.payload).hexdigest())
    return out


def test_every_batch_arrives_and_is_deleted_on_puback(
    mosquitto: SecureBroker, collector: Collector, key: Ed25519PrivateKey, tmp_path: Path
) -> None:
    outbox = Outbox(tmp_path / "o.db")
    for seq in range(1, 31):
        outbox.put(seq, sealed(seq, key), priority=Priority.ROUTINE, fixes=1)
    uplink = make_uplink(mosquitto.port, outbox, key, login=mosquitto.login(DEVICE))
    uplink.start()
    try:
        assert collector.wait_for(lambda ms: len([m for m in ms if m.topic.endswith("/batch")]) >= 30)
        assert wait_until(lambda: outbox.stats()["outbox_batches"] == 0)
        # birth message: signed, retained, online
        births = collector.on(state_topic(DEVICE))
        assert open_state(bytes(births[0].payload), state_topic(DEVICE), {DEVICE: key.public_key()}).online is True
    finally:
        assert uplink.stop(grace_s=2.0) is True
    seen = seqs_of(collector.messages, key)
    assert sorted(seen) == list(range(1, 31))
    assert all(len(v) == 1 for v in seen.values())
    assert uplink.counters["batches_acked"] == 30
    assert uplink.counters["mqtt_connects"] == 1
    # clean shutdown replaced the retained birth with a signed offline state
    assert collector.wait_for(lambda ms: len([m for m in ms if m.topic.endswith("/state")]) >= 2)
    last = collector.on(state_topic(DEVICE))[-1]
    assert open_state(bytes(last.payload), state_topic(DEVICE), {DEVICE: key.public_key()}).online is False
    outbox.close()


def test_broker_outage_loses_nothing_and_duplicates_keep_their_content(
    mosquitto: SecureBroker, collector: Collector, key: Ed25519PrivateKey, tmp_path: Path
) -> None:
    outbox = Outbox(tmp_path / "o.db")
    uplink = make_uplink(mosquitto.port, outbox, key, login=mosquitto.login(DEVICE))
    uplink.start()
    try:
        for seq in range(1, 11):
            outbox.put(seq, sealed(seq, key), priority=Priority.ROUTINE)
            uplink.wake()
        assert collector.wait_for(lambda ms: len(seqs_of(ms, key)) >= 10)
        mosquitto.stop()
        assert wait_until(lambda: not uplink.connected.is_set())
        for seq in range(11, 41):
            outbox.put(seq, sealed(seq, key), priority=Priority.ROUTINE)
            uplink.wake()
        assert outbox.stats()["outbox_batches"] >= 30  # nothing is acked while the broker is down
        mosquitto.start()
        assert collector.wait_for(lambda ms: len(seqs_of(ms, key)) >= 40, timeout=60)
        assert wait_until(lambda: outbox.stats()["outbox_batches"] == 0)
    finally:
        uplink.stop(grace_s=1.0)
    seen = seqs_of(collector.messages, key)
    assert sorted(seen) == list(range(1, 41))
    assert all(len(digests) == 1 for digests in seen.values())
    assert uplink.counters["mqtt_connects"] >= 2
    assert uplink.counters["mqtt_disconnects"] >= 1
    outbox.close()


def test_captured_batch_verifies_with_an_independent_cose_check(
    mosquitto: SecureBroker, key: Ed25519PrivateKey, tmp_path: Path
) -> None:
    login = mosquitto.login()  # the collector's account
    sub = ["mosquitto_sub", "-h", "127.0.0.1", "-p", str(mosquitto.port), "-i", "capture", "-c", "-q", "1",
           "-u", login.username, "-P", login.password]  # fmt: skip
    # establish a persistent subscription first (-E: exit once subscribed), so nothing races
    subprocess.run([*sub, "-t", "lw/v1/+/batch", "-E"], check=True, timeout=30)
    outbox = Outbox(tmp_path / "o.db")
    outbox.put(7, sealed(7, key), priority=Priority.ROUTINE, fixes=1)
    uplink = make_uplink(mosquitto.port, outbox, key, login=mosquitto.login(DEVICE))
    uplink.start()
    try:
        assert wait_until(lambda: outbox.stats()["outbox_batches"] == 0)
    finally:
        uplink.stop()
    capture = tmp_path / "batch.cose"
    with capture.open("wb") as out:  # -N: no newline appended, the file is the payload byte for byte
        subprocess.run([*sub, "-t", "lw/v1/+/batch", "-C", "1", "-N", "-W", "30"], stdout=out, check=True, timeout=40)
    data = capture.read_bytes()
    assert data == sealed(7, key)  # Ed25519 is deterministic: same batch, same bytes

    # Independent COSE_Sign1 check (RFC 9052) with cbor2 + cryptography only.
    tagged = cbor2.loads(data)
    assert isinstance(tagged, cbor2.CBORTag)
    assert tagged.tag == 18
    protected, unprotected, payload, signature = tagged.value
    assert cbor2.loads(protected) == {1: -8, 4: DEVICE.encode()}
    assert unprotected == {}
    topic = f"lw/v1/{DEVICE}/batch"
    to_be_signed = cbor2.dumps(["Signature1", protected, topic.encode(), payload])
    pub = Ed25519PublicKey.from_public_bytes(key.public_key().public_bytes_raw())
    pub.verify(signature, to_be_signed)
    with pytest.raises(InvalidSignature):  # bound to the topic: replayed elsewhere it fails
        pub.verify(signature, cbor2.dumps(["Signature1", protected, b"lw/v1/other/batch", payload]))
    body = cbor2.loads(payload)
    assert (body[0], body[1], body[2], body[3]) == (1, DEVICE, BOOT, 7)
    assert body[6][0] == [T0 + 7000]  # fix times, first absolute
    outbox.close()


def test_a_batch_nobody_receives_stays_and_goes_again_once_a_collector_subscribes(
    mosquitto: SecureBroker, key: Ed25519PrivateKey, tmp_path: Path
) -> None:
    """PUBACK 0x10 ("no matching subscribers", e.g. Mosquitto forgot the collector's shared
    subscription on restart) is a success code, but the broker dropped the message: the uplink
    keeps the batch, defers it, and publishes it again until a collector receives it."""
    outbox = Outbox(tmp_path / "o.db")
    outbox.put(1, sealed(1, key), priority=Priority.ROUTINE)
    outbox.put(2, sealed(2, key), priority=Priority.ROUTINE)
    uplink = make_uplink(mosquitto.port, outbox, key, login=mosquitto.login(DEVICE))
    uplink.start()
    try:
        assert wait_until(lambda: uplink.counters["puback_no_subscribers"] >= 2)
        assert uplink.counters["batches_acked"] == 0
        assert [b.seq for b in outbox.pending(5)] == [1, 2]
        late = Collector(mosquitto, [batch_topic(DEVICE)], client_id="late-collector")
        try:
            assert late.wait_for(lambda ms: sorted(seqs_of(ms, key)) == [1, 2])
            assert wait_until(lambda: outbox.stats()["outbox_batches"] == 0)
        finally:
            late.close()
    finally:
        uplink.stop()
    assert uplink.counters["batches_acked"] == 2
    assert uplink.counters["puback_failures"] == 0
    outbox.close()


def test_a_failure_puback_keeps_the_batch(key: Ed25519PrivateKey, tmp_path: Path) -> None:
    """A PUBACK with a failure code (>= 0x80) keeps the batch. No broker at hand answers with
    one, so paho's callback is called as paho would, with the message ids it was given."""
    outbox = Outbox(tmp_path / "o.db")
    outbox.put(1, b"m1", priority=Priority.ROUTINE)
    outbox.put(2, b"m2", priority=Priority.ROUTINE)
    uplink = make_uplink(1, outbox, key)
    uplink._inflight = {10: 1, 11: 2}
    uplink._on_publish(None, None, 10, ReasonCode(PacketTypes.PUBACK, identifier=0x97), None)  # quota exceeded
    uplink._on_publish(None, None, 11, ReasonCode(PacketTypes.PUBACK, identifier=0x10), None)  # nobody subscribed
    uplink._on_publish(None, None, 99, ReasonCode(PacketTypes.PUBACK, identifier=0), None)  # unknown mid
    # Neither is delivered: 0x97 failed, and 0x10 means the broker dropped it for want of a
    # subscriber (e.g. Mosquitto forgot the collector's shared subscription on restart).
    assert [b.seq for b in outbox.pending(5)] == [1, 2]
    assert uplink.counters["puback_failures"] == 1
    assert uplink.counters["puback_no_subscribers"] == 1
    assert uplink.counters["batches_acked"] == 0
    assert uplink.inflight == 0
    outbox.close()


def test_connect_failures_back_off_and_stop_is_clean(key: Ed25519PrivateKey, tmp_path: Path) -> None:
    from firmware_sim.rig import free_port

    outbox = Outbox(tmp_path / "o.db")
    outbox.put(1, b"m1", priority=Priority.ROUTINE)
    uplink = make_uplink(free_port(), outbox, key)  # nothing listens there
    uplink.start()
    assert wait_until(lambda: uplink.counters["mqtt_connect_failures"] >= 3)
    assert uplink.stop(grace_s=0.0) is False
    assert [b.seq for b in outbox.pending(5)] == [1]
    outbox.close()


def test_starting_twice_is_an_error(key: Ed25519PrivateKey, tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "o.db")
    uplink = make_uplink(1, outbox, key)  # nothing listens on port 1: the thread keeps retrying
    assert uplink.stop() is False  # never started: nothing to stop
    uplink.start()
    try:
        assert uplink.alive
        with pytest.raises(UplinkError, match="already started"):
            uplink.start()
    finally:
        uplink.stop()
    assert not uplink.alive
    outbox.close()


def test_backoff_grows_with_jitter_and_caps() -> None:
    backoff = Backoff(0.5, 8.0)
    rng = random.Random(1)
    delays = [backoff.delay(n, rng) for n in range(8)]
    bases = [0.5, 1.0, 2.0, 4.0, 8.0, 8.0, 8.0, 8.0]
    assert all(base / 2 <= d <= base for d, base in zip(delays, bases, strict=True))
    assert len({round(d, 6) for d in delays[4:]}) == 4  # jittered, not all equal at the cap
    assert backoff.delay(10_000, rng) <= 8.0
    with pytest.raises(ConfigError):
        Backoff(0, 1)


# ----------------------------------------------------------------------------- downlink gate


@pytest.fixture
def collector_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def config_message(
    key: Ed25519PrivateKey, version: int, device: str = DEVICE, body: dict[str, object] | None = None
) -> bytes:
    config = DeviceConfig(device, version, T0, body or {"markets": []})
    return seal_config(config, key, config_topic(device))


def test_gate_accepts_newer_versions_and_persists_the_floor(collector_key: Ed25519PrivateKey, tmp_path: Path) -> None:
    state = tmp_path / "downlink.cose"
    gate = ConfigGate(DEVICE, collector_key.public_key(), state)
    assert gate.version == 0
    msg = config_message(collector_key, 3)
    config = gate.check(config_topic(DEVICE), msg)
    assert config is not None
    assert config.version == 3
    gate.commit(config, msg)
    assert gate.check(config_topic(DEVICE), msg) is None  # the retained copy seen again
    assert gate.counters["config_unchanged"] == 1
    again = ConfigGate(DEVICE, collector_key.public_key(), state)  # after a restart
    assert again.version == 3
    with pytest.raises(DownlinkRejectedError) as info:
        again.check(config_topic(DEVICE), config_message(collector_key, 2))
    assert info.value.reason == "stale_version"
    with pytest.raises(DownlinkRejectedError) as info:
        again.check(config_topic(DEVICE), config_message(collector_key, 3, body={"markets": [], "x": 1}))
    assert info.value.reason == "stale_version"
    assert again.counters["config_rejected_stale_version"] == 2
    assert again.last_rejection == "configuration version 3 is not newer than 3"


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda k, o: config_message(o, 5), "bad_signature"),  # signed by someone else
        (lambda k, o: config_message(k, 5, device="car-0043"), "bad_signature"),  # replayed from another device
        (lambda k, o: config_message(k, 5)[:-7], "truncated"),
        (lambda k, o: b"\xd2\x84" + b"\x00" * 10, "trailing_bytes"),  # malformed
        (lambda k, o: b"", "invalid_envelope"),
        (lambda k, o: b"\x00" * (300 * 1024), "oversized"),
        (lambda k, o: config_message(k, 5) + b"\x00", "trailing_bytes"),
    ],
)
def test_gate_rejects_forged_and_malformed_configs(
    collector_key: Ed25519PrivateKey, tmp_path: Path, make: Callable[..., bytes], reason: str
) -> None:
    gate = ConfigGate(DEVICE, collector_key.public_key(), tmp_path / "downlink.cose")
    other = Ed25519PrivateKey.generate()
    with pytest.raises(DownlinkRejectedError) as info:
        gate.check(config_topic(DEVICE), make(collector_key, other))
    assert info.value.reason == reason
    assert gate.counters["config_rejected"] == 1
    assert gate.counters[f"config_rejected_{reason}"] == 1
    assert gate.version == 0
    assert not (tmp_path / "downlink.cose").exists()


def test_gate_rejects_another_topic(collector_key: Ed25519PrivateKey, tmp_path: Path) -> None:
    gate = ConfigGate(DEVICE, collector_key.public_key(), tmp_path / "d.cose")
    with pytest.raises(DownlinkRejectedError) as info:
        gate.check(config_topic("car-0043"), config_message(collector_key, 1, device="car-0043"))
    assert info.value.reason == "wrong_topic"


def test_gate_moves_a_tampered_state_file_aside(collector_key: Ed25519PrivateKey, tmp_path: Path) -> None:
    state = tmp_path / "downlink.cose"
    forged = config_message(Ed25519PrivateKey.generate(), 99)  # someone wrote a file by hand
    state.write_bytes(forged)
    gate = ConfigGate(DEVICE, collector_key.public_key(), state)
    assert gate.version == 0
    assert gate.counters["config_state_lost"] == 1
    assert not state.exists()
    assert len(list(tmp_path.glob("downlink.cose.corrupt-*"))) == 1


def test_config_messages_reach_the_callback_through_the_broker(
    mosquitto: SecureBroker, key: Ed25519PrivateKey, collector_key: Ed25519PrivateKey, tmp_path: Path
) -> None:
    got: list[tuple[str, bytes]] = []
    arrived = threading.Event()

    def on_config(topic: str, payload: bytes) -> None:
        got.append((topic, payload))
        arrived.set()

    outbox = Outbox(tmp_path / "o.db")
    uplink = make_uplink(mosquitto.port, outbox, key, login=mosquitto.login(DEVICE), on_config=on_config)
    uplink.start()
    try:
        assert uplink.downlink_ready.wait(20)
        msg = config_message(collector_key, 1)
        pub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="cfg-pub", protocol=mqtt.MQTTv5)
        pub.username_pw_set(mosquitto.login().username, mosquitto.login().password)  # the collector's account
        pub.connect("127.0.0.1", mosquitto.port)
        pub.loop_start()
        pub.publish(config_topic(DEVICE), msg, qos=1, retain=True).wait_for_publish(10)
        pub.publish(config_topic("car-0043"), b"not ours", qos=1).wait_for_publish(10)
        pub.disconnect()
        pub.loop_stop()
        assert arrived.wait(20)
    finally:
        uplink.stop()
    assert got == [(config_topic(DEVICE), msg)]
    assert uplink.counters["config_messages"] == 1
    stray = mqtt.MQTTMessage(topic=b"lw/v1/car-0042/other")
    uplink._on_message(None, None, stray)  # never subscribed to, but counted if it ever came
    assert uplink.counters["unexpected_messages"] == 1
    outbox.close()
