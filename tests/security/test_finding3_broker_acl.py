"""Finding 3: an open broker. Any client read every track, cleared retained configs and
published anywhere.

With the accounts and ACL that ``lienwatch collector broker init`` and ``devices add
--broker-dir`` write, the private Mosquitto refuses anonymous clients, and a device
(right password, its own id) cannot subscribe to ``lw/#``, publish on another device's
topic or clear a retained configuration, while the collector and the devices' own
traffic keep working (through the shared subscription).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
import sqlalchemy as sa
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from collector.cli.broker_auth import BrokerAccounts, Credentials, hash_password, verify_password
from collector.cli.commands import main as collector_main
from collector.ingest.ingestor import Ingestor
from collector.ingest.service import IngestService
from collector.settings import Limits, MqttSettings
from firmware_sim.rig.tls import CertificateAuthority, ClientCertificate
from protocol import config_topic, receipt_topic
from tests.child_processes import ChildProcesses
from tests.secure_broker import SecureBroker, connack

from .signing_devices import NOW, SigningDevice, register, rows

WAIT_S = 20.0


class Client:
    """An MQTT 5 client that records CONNACK, SUBACK and PUBACK reason codes and messages."""

    def __init__(
        self, port: int, client_id: str, credentials: Credentials | None,
        *, tls: tuple[Path, ClientCertificate] | None = None,
    ) -> None:  # fmt: skip
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        if credentials is not None:
            self.client.username_pw_set(credentials.username, credentials.password)
        if tls is not None:  # a client certificate: its CN is the user name
            ca_file, cert = tls
            self.client.tls_set(ca_certs=str(ca_file), certfile=str(cert.cert_file), keyfile=str(cert.key_file))
        self.connack: ReasonCode | None = None
        self.connected = threading.Event()
        self.subacks: dict[int, list[ReasonCode]] = {}
        self.pubacks: dict[int, ReasonCode] = {}
        self.messages: list[tuple[str, bytes, bool]] = []
        self._changed = threading.Condition()
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_publish = self._on_publish
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        self.connected.wait(WAIT_S)

    def _on_connect(self, _c: object, _u: object, _f: object, reason: ReasonCode, _p: object) -> None:
        self.connack = reason
        self.connected.set()

    def _on_subscribe(self, _c: object, _u: object, mid: int, reasons: list[ReasonCode], _p: object) -> None:
        with self._changed:
            self.subacks[mid] = reasons
            self._changed.notify_all()

    def _on_publish(self, _c: object, _u: object, mid: int, reason: ReasonCode, _p: object) -> None:
        with self._changed:
            self.pubacks[mid] = reason
            self._changed.notify_all()

    def _on_message(self, _c: object, _u: object, message: mqtt.MQTTMessage) -> None:
        with self._changed:
            self.messages.append((message.topic, bytes(message.payload), bool(message.retain)))
            self._changed.notify_all()

    def subscribe(self, topic: str) -> list[ReasonCode]:
        _, mid = self.client.subscribe(topic, qos=1)
        with self._changed:
            assert self._changed.wait_for(lambda: mid in self.subacks, WAIT_S)
            return self.subacks[mid]

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> ReasonCode:
        mid = self.client.publish(topic, payload, qos=1, retain=retain).mid
        with self._changed:
            assert self._changed.wait_for(lambda: mid in self.pubacks, WAIT_S)
            return self.pubacks[mid]

    def wait_message(self, topic: str, timeout: float = WAIT_S) -> bool:
        with self._changed:
            return self._changed.wait_for(lambda: any(t == topic for t, _, _ in self.messages), timeout)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def broker(tmp_path: Path, processes: ChildProcesses) -> Iterator[SecureBroker]:
    """Not started: each test makes its accounts first, then calls ``start()``.

    The broker is a child process: asking for ``processes`` puts its tests in the process tier.
    """
    broker = SecureBroker(tmp_path / "mosquitto", persistence=False)
    try:
        yield broker
    finally:
        broker.close()


@pytest.fixture
def accounts(broker: SecureBroker) -> BrokerAccounts:
    return broker.accounts


def test_password_hashes_are_mosquitto_passwd_compatible() -> None:
    # Produced by `mosquitto_passwd -b` (Mosquitto 2.0.11) for user1 / secret.
    reference = (
        "$7$101$vavnmxfqM8vPnK3D$"
        "XCgrsZbngko94G46qk9HYmKluIxsxwFoIBMpCFJgi+5JvSxd1BTir203UYBgRGkfqFVM0/7BTEECH2jJsOwiVg=="
    )
    assert verify_password("secret", reference)
    assert not verify_password("Secret", reference)
    salt = bytes.fromhex("bdabe79b17ea33cbcf9cadc3")
    assert hash_password("secret", salt=salt) == reference


def test_anonymous_and_wrong_device_clients_are_refused(broker: SecureBroker, accounts: BrokerAccounts) -> None:
    collector_account = accounts.collector_account()
    car_a, car_b = accounts.add_device("car-a"), accounts.add_device("car-b")
    broker.start()
    collector = Client(broker.port, "collector", collector_account)
    a = Client(broker.port, "car-a", car_a)
    b = Client(broker.port, "car-b", car_b)
    anonymous = Client(broker.port, "anonymous", None)
    impostor = Client(broker.port, "impostor", Credentials("car-b", car_a.password))
    try:
        assert anonymous.connack is not None
        assert anonymous.connack.is_failure
        assert impostor.connack is not None
        assert impostor.connack.is_failure
        assert collector.connack is not None
        assert not collector.connack.is_failure
        assert a.connack is not None
        assert not a.connack.is_failure

        # The collector keeps a retained configuration for car-b.
        assert not collector.publish(config_topic("car-b"), b"signed config v3", retain=True).is_failure
        assert not collector.publish(config_topic("car-a"), b"car-a config", retain=True).is_failure
        assert not collector.publish(receipt_topic("car-b"), b"car-b receipt", retain=True).is_failure
        assert not collector.publish(receipt_topic("car-a"), b"car-a receipt", retain=True).is_failure
        assert collector.subscribe("lw/v1/+/batch")[0].value < 0x80

        # car-a tries to read everything. Mosquitto grants the filter but delivers only what
        # the ACL lets car-a read: nothing of car-b (its own retained config is all it gets).
        a.subscribe("lw/#")
        assert b.publish("lw/v1/car-b/batch", b"car-b's track").value < 0x80
        assert collector.wait_message("lw/v1/car-b/batch")
        assert not a.wait_message("lw/v1/car-b/batch", timeout=1.0)
        assert not a.wait_message(config_topic("car-b"), timeout=0.1)
        assert a.wait_message(receipt_topic("car-a"))
        # its own config and receipt only
        assert sorted(t for t, _, _ in a.messages) == [config_topic("car-a"), receipt_topic("car-a")]

        # car-a publishes on car-b's topics, and clears car-b's (and its own) configuration.
        assert a.publish("lw/v1/car-b/batch", b"forged").is_failure
        assert a.publish("lw/v1/car-b/state", b"forged will").is_failure
        assert a.publish(config_topic("car-b"), b"", retain=True).is_failure
        assert a.publish(config_topic("car-a"), b"", retain=True).is_failure
        assert a.publish(receipt_topic("car-a"), b"", retain=True).is_failure  # nor clear its receipt
        assert [t for t, _, _ in collector.messages] == ["lw/v1/car-b/batch"]

        # The retained configuration is still there for car-b.
        assert b.subscribe(config_topic("car-b"))[0].value < 0x80
        assert b.wait_message(config_topic("car-b"))
        assert b.messages[-1] == (config_topic("car-b"), b"signed config v3", True)
        # ... and car-b gets nothing from car-a's configuration topic.
        b.subscribe(config_topic("car-a"))
        assert not b.wait_message(config_topic("car-a"), timeout=1.0)

        # Receipts (docs/protocol.md section 13): the collector writes them, each device reads
        # only its own and cannot forge or clear one.
        receipt_b = "lw/v1/car-b/receipt"
        assert not collector.publish(receipt_b, b"signed receipt", retain=True).is_failure
        assert a.publish(receipt_b, b"forged receipt", retain=True).is_failure
        assert b.publish(receipt_b, b"", retain=True).is_failure
        assert b.subscribe(receipt_b)[0].value < 0x80
        assert b.wait_message(receipt_b)
        assert [p for t, p, _ in b.messages if t == receipt_b] == [b"signed receipt"]
        a.subscribe(receipt_b)
        assert not a.wait_message(receipt_b, timeout=1.0)
    finally:
        for client in (collector, a, b, anonymous, impostor):
            client.close()


def test_collector_ingests_through_the_authenticated_broker(
    broker: SecureBroker, accounts: BrokerAccounts, engine: sa.Engine, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    car = SigningDevice("car-0001")
    register(engine, car)
    # `devices add --broker-dir` registers the key and makes the device's account.
    pem = tmp_path / "car.pub"
    pem.write_bytes(car.pem)
    toml = tmp_path / "collector.toml"
    toml.write_text(f'database_url = "{engine.url.render_as_string(hide_password=False)}"\n')
    assert collector_main(["broker", "init", "--broker-dir", str(accounts.folder)]) == 0
    collector_login = json.loads(capsys.readouterr().out)
    assert collector_main(["devices", "add", "--device", "car-0002", "--public-key", str(pem), "--config", str(toml),
                           "--broker-dir", str(accounts.folder)]) == 0  # fmt: skip
    added = json.loads(capsys.readouterr().out)
    assert added["mqtt_username"] == "car-0002"
    assert set(accounts.accounts()) == {"lw-collector", "car-0002"}
    old_hash = accounts.accounts()["car-0002"]
    assert collector_main(["broker", "device", "--device", "car-0002", "--broker-dir", str(accounts.folder)]) == 0
    assert json.loads(capsys.readouterr().out)["mqtt_password"] != added["mqtt_password"]
    assert accounts.accounts()["car-0002"] != old_hash
    device_login = accounts.add_device("car-0001")
    broker.start()

    login = collector_login["mqtt_username"], collector_login["mqtt_password"]
    settings = MqttSettings(
        host="127.0.0.1", port=broker.port, client_id="sec-collector", group="sec", username=login[0], password=login[1]
    )
    assert "mqtt_password" not in repr(settings)
    assert collector_login["mqtt_password"] not in repr(settings)
    service = IngestService(Ingestor(engine, Limits(key_cache_ttl_s=0), clock_ms=lambda: NOW), settings)
    device = Client(broker.port, "car-0001", device_login)
    try:
        service.start()
        assert service.ready.wait(WAIT_S), "the collector account could not subscribe"
        assert not device.publish(car.topic, car.sealed(1, t0=NOW - 60_000)).is_failure
        deadline = threading.Event()
        for _ in range(200):
            if rows(engine, "batches"):
                break
            deadline.wait(0.05)
    finally:
        device.close()
        service.stop()
    assert [r["seq"] for r in rows(engine, "batches")] == [1]
    # Revoking the device removes its broker account as well.
    assert collector_main(["devices", "revoke", "car-0002", "--config", str(toml),
                           "--broker-dir", str(accounts.folder)]) == 0  # fmt: skip
    assert json.loads(capsys.readouterr().out)["mqtt_account_removed"] is True
    assert "car-0002" not in accounts.accounts()


def test_tls_broker_takes_passwords_and_client_certificates_from_the_deployment_ca(
    tmp_path: Path, processes: ChildProcesses
) -> None:
    """The HIL rig's broker: TLS only; a device logs in with its password, or with a client
    certificate from the deployment's CA whose CN is its device id (the same ACL applies)."""
    ca = CertificateAuthority(tmp_path / "ca")
    broker = SecureBroker(tmp_path / "mosquitto", persistence=False, tls=ca.server())
    car_a = broker.accounts.add_device("car-a")
    broker.start()
    try:
        assert broker.cert_port is not None
        # Plain MQTT gets nowhere: the listener speaks TLS only.
        assert connack(broker.port, car_a, timeout=3.0) is None
        assert connack(broker.port, car_a, ca_file=ca.ca_file) == 0
        assert connack(broker.port, Credentials("car-a", "wrong"), ca_file=ca.ca_file) not in (0, None)
        assert connack(broker.port, None, ca_file=ca.ca_file) not in (0, None)

        def cert_client(cert: ClientCertificate) -> Client:
            return Client(broker.cert_port or 0, "cert-client", None, tls=(ca.ca_file, cert))

        own = cert_client(ca.client("car-a"))
        try:
            assert own.connack is not None
            assert not own.connack.is_failure
            assert own.publish("lw/v1/car-a/batch", b"own batch").value < 0x80
            assert own.publish("lw/v1/car-b/batch", b"forged").is_failure  # the CN is the ACL's user
            assert own.publish(config_topic("car-a"), b"", retain=True).is_failure
        finally:
            own.close()
        # The deployment's certificate connects; one from another CA (same CN) never gets a CONNACK.
        mine = ca.client("car-a")
        assert connack(broker.cert_port, None, ca_file=ca.ca_file, client_cert=(mine.cert_file, mine.key_file)) == 0
        stranger = CertificateAuthority(tmp_path / "other-ca").client("car-a")
        stranger_pair = (stranger.cert_file, stranger.key_file)
        assert connack(broker.cert_port, None, ca_file=ca.ca_file, client_cert=stranger_pair, timeout=3.0) is None
    finally:
        broker.close()
