"""collector.jobs.downlink: market files, the config outbox, signing targets, and the MQTT publisher."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
import sqlalchemy as sa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi.testclient import TestClient
from paho.mqtt.enums import CallbackAPIVersion
from sqlalchemy.orm import Session

from collector.api.app import create_app
from collector.errors import ConfigError
from collector.ingest.registry import DeviceRegistry
from collector.jobs.downlink import (
    ConfigMessage,
    ConfigPublisher,
    build_device_configs,
    devices_needing_config,
    load_signing_key,
)
from collector.loans.csv_import import import_loans, parse_loans
from collector.settings import MqttSettings, Settings, hash_api_key
from collector.storage.database import create_engine, migrate
from collector.storage.places import PlaceFileError, load_place_file, upsert_places
from collector.storage.tables import ConfigVersion
from protocol import config_topic, open_config, parse_topic
from protocol.cli.key_files import generate
from tests.fake_devices import FakeDevice
from tests.secure_broker import SecureBroker

REPO = Path(__file__).parents[1]
SAMPLE_MARKETS = REPO / "edge" / "data" / "markets.sample.toml"
SAMPLE_LOANS = REPO / "collector" / "data" / "sample_loans.csv"
NOW = 1_795_858_800_000
KEY = Ed25519PrivateKey.from_private_bytes(b"\x09" * 32)
WAIT_S = 60.0
JIADING = {"id": "sh-jiading-ucm", "name": "Demo used-car market (Shanghai Jiading)", "lat": 31.3, "lon": 121.25,
           "radius_m": 400.0, "datum": "gcj02"}
MARKET = JIADING | {"type": "used_car_market"}
BODY = {"places": [MARKET], "markets": [JIADING]}


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[sa.Engine]:
    db = create_engine(f"sqlite:///{tmp_path / 'c.db'}")
    migrate(db)
    yield db
    db.dispose()


def test_sample_markets_file_loads_as_given() -> None:
    assert load_place_file(SAMPLE_MARKETS) == [MARKET]


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("m.toml", "[[market]\n", "is not valid toml"),
        ("m.json", "{", "is not valid json"),
        ("m.json", '{"other": []}', "has no [[place]]/[[market]] array nor a 'places'/'markets' list"),
        ("m.json", '{"markets": 3}', "must hold a list of places"),
        ("m.json", '[{"id": "a", "type": "casino", "name": "n", "lat": 1, "lon": 2, "radius_m": 5, "datum": "wgs84"}]',
         "type 'casino' must be one of"),
        ("m.json", '[{"id": "a", "name": "' + "n" * 201 + '", "lat": 1, "lon": 2, "radius_m": 5, "datum": "wgs84"}]',
         "name is 201 characters, over the limit of 200"),
        ("m.json", '[3]', "item 0 must be a table/map"),
        ("m.json", '"\u00e9"', "must hold a list of places"),
        ("m.json", '[{"id": "a", "name": "n", "lat": 1, "lon": 2, "radius_m": 5}]', "lacks required key 'datum'"),
        ("m.json", '[{"id": "a", "name": "n", "lat": 91, "lon": 2, "radius_m": 5, "datum": "wgs84"}]', "lat"),
        ("m.json", '[{"id": "a b", "name": "n", "lat": 1, "lon": 2, "radius_m": 5, "datum": "wgs84"}]',
         "id 'a b' must match"),
        ("m.json", '[{"id": "a", "name": "n", "lat": 1, "lon": 2, "radius_m": 60000, "datum": "wgs84"}]',
         "radius_m=60000 must be a number in [1, 50000]"),
        ("m.json", '[{"id": "a", "name": "n", "lat": 1, "lon": 2, "radius_m": 5, "datum": "wgs84", "x": 1}]',
         "unknown key 'x'"),
        ("m.json", '[{"id": "a", "name": "n", "lat": 1, "lon": 2, "radius_m": 5, "datum": "wgs84"},'
                   ' {"id": "a", "name": "n", "lat": 1, "lon": 2, "radius_m": 5, "datum": "wgs84"}]', "repeated"),
    ],
)
def test_bad_market_files_name_the_item_and_the_rule(tmp_path: Path, name: str, text: str, message: str) -> None:
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(PlaceFileError) as info:
        load_place_file(path)
    assert message in str(info.value)
    assert str(path) in str(info.value)


def test_oversized_and_missing_market_files(tmp_path: Path) -> None:
    big = tmp_path / "big.json"
    big.write_bytes(b" " * (4 * 1024 * 1024 + 1))
    with pytest.raises(PlaceFileError, match="over the 4194304 byte limit"):
        load_place_file(big)
    with pytest.raises(PlaceFileError, match="cannot read places file"):
        load_place_file(tmp_path / "nope.toml")


def test_signing_key_file_must_be_private(tmp_path: Path) -> None:
    keys = generate(tmp_path, "collector")
    assert isinstance(load_signing_key(keys.private_path), Ed25519PrivateKey)
    keys.private_path.chmod(0o644)
    with pytest.raises(ConfigError, match=r"downlink\.signing_key: .* has mode 0644"):
        load_signing_key(keys.private_path)
    with pytest.raises(ConfigError, match=r"downlink\.signing_key: cannot read key file"):
        load_signing_key(tmp_path / "missing.key")


def test_who_needs_a_config(engine: sa.Engine) -> None:
    truck = FakeDevice("truck-1")
    DeviceRegistry(engine, clock_ms=lambda: NOW).add("truck-1", truck.pem)
    with Session(engine) as session:
        import_loans(session, parse_loans(SAMPLE_LOANS.read_text(encoding="utf-8")), now_ms=NOW)
        session.commit()
        assert devices_needing_config(session) == []  # no markets yet: devices keep their own file
        assert upsert_places(session, [MARKET], now_ms=NOW) == (1, 0)
        assert upsert_places(session, [MARKET], now_ms=NOW + 1) == (0, 0)  # identical: nothing to sign
        session.commit()
        everyone = ["tbox-0001", "tbox-0002", "tbox-0003", "tbox-0004", "tbox-0005", "truck-1"]
        assert devices_needing_config(session) == everyone
        messages = build_device_configs(session, KEY, everyone, NOW + 5)
        session.commit()
        assert devices_needing_config(session) == []
        assert upsert_places(session, [MARKET | {"radius_m": 300.0}], now_ms=NOW + 10) == (0, 1)
        session.commit()
        assert devices_needing_config(session) == everyone  # the list changed after they were signed
        DeviceRegistry(engine, clock_ms=lambda: NOW).revoke("truck-1")
        assert "truck-1" not in devices_needing_config(session)
    config = open_config(messages[-1].payload, config_topic("truck-1"), KEY.public_key())
    assert (config.device_id, config.version, config.issued_ms) == ("truck-1", 1, NOW + 5)
    assert config.body == BODY


def test_a_device_registered_through_the_api_gets_the_current_list(engine: sa.Engine) -> None:
    published: list[ConfigMessage] = []
    settings = Settings(api_keys={hash_api_key("downlink-admin-key-0123"): "admin"})
    app = create_app(settings, engine=engine, clock_ms=lambda: NOW, signing_key=KEY, config_publisher=published.extend)
    body = {"device_id": "truck-1", "public_key_pem": FakeDevice("truck-1").pem.decode()}
    headers = {"Authorization": "Bearer downlink-admin-key-0123"}
    with TestClient(app) as client:
        assert client.post("/v1/devices", json=body, headers=headers).json()["configs_signed"] == 0  # no markets
        with Session(engine) as session:
            upsert_places(session, [MARKET], now_ms=NOW)
            session.commit()
        body2 = {"device_id": "truck-2", "public_key_pem": FakeDevice("truck-2").pem.decode()}
        assert client.post("/v1/devices", json=body2, headers=headers).json()["configs_signed"] == 1
    assert [(m.device_id, m.version) for m in published] == [("truck-2", 1)]
    assert open_config(published[0].payload, config_topic("truck-2"), KEY.public_key()).body == BODY


class Listener:
    def __init__(self, broker: SecureBroker, topic: str) -> None:
        self.messages: list[bytes] = []
        self.subscribed = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="downlink-listener", protocol=mqtt.MQTTv5)
        self.client.on_message = lambda _c, _u, m: self.messages.append(bytes(m.payload))
        self.client.on_subscribe = lambda *_a: self.subscribed.set()
        self.client.on_connect = lambda c, *_a: c.subscribe(topic, qos=1)
        broker.authenticate(self.client, parse_topic(topic).device_id)  # the device reads its own config
        self.client.connect("127.0.0.1", broker.port)
        self.client.loop_start()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def wait_until(condition: object, what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_publisher_signs_for_a_cli_registered_device_and_publishes_retained(
    engine: sa.Engine, mosquitto: SecureBroker
) -> None:
    with Session(engine) as session:
        upsert_places(session, [MARKET], now_ms=NOW)  # like `lienwatch collector markets import`
        session.commit()
    DeviceRegistry(engine, clock_ms=lambda: NOW).add("truck-1", FakeDevice("truck-1").pem)  # like `devices add`
    login = mosquitto.login()  # the collector's broker account
    settings = MqttSettings(
        port=mosquitto.port, client_id="downlink-test", username=login.username, password=login.password
    )
    publisher = ConfigPublisher(engine, KEY, settings, resync_interval_s=0.1, clock_ms=lambda: NOW + 1)

    # Not connected yet: signed into the outbox, not published.
    first = publisher.sync_once()
    assert (first.signed, first.published) == (1, 0)
    with Session(engine) as session:
        row = session.get(ConfigVersion, "truck-1")
        assert row is not None
        assert (row.version, row.published_ms, row.payload is not None) == (1, None, True)

    publisher.start()
    try:
        wait_until(lambda: publisher.counters["published"] >= 1, "the publish")
        # Retained: a device subscribing afterwards still gets it.
        listener = Listener(mosquitto, config_topic("truck-1"))
        try:
            wait_until(lambda: listener.messages, "the retained config")
        finally:
            listener.close()
    finally:
        publisher.stop()
    config = open_config(listener.messages[0], config_topic("truck-1"), KEY.public_key())
    assert (config.version, config.body) == (1, BODY)
    with Session(engine) as session:
        row = session.get(ConfigVersion, "truck-1")
        assert row is not None
        assert row.published_ms == NOW + 1
    assert publisher.counters["signed"] == 1  # nothing was signed twice
