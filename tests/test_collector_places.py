"""Typed places managed by the collector (#17): storage, migration, API, CLI, and the downlink to the agent.

The end-to-end tests sign the collector's configuration and feed it, in process, through the
agent's own acceptance gate and body applier (edge.uplink.ConfigGate, edge.downlink_apply),
so what the collector pushes is exactly what an agent applies.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy.orm import Session

from collector.cli.commands import main as collector_main
from collector.ingest.registry import DeviceRegistry
from collector.jobs.downlink import ConfigPublisher, build_device_configs, config_body, devices_needing_config
from collector.settings import MqttSettings
from collector.storage.database import create_engine, migrate
from collector.storage.places import (
    PlaceFileError,
    check_place_item,
    delete_place,
    load_place_file,
    place_items,
    places_revision,
    upsert_places,
)
from collector.storage.tables import AuditEntry, PlaceRecord
from edge.agent import Agent
from edge.downlink_apply import DownlinkApplier
from edge.rules import RulesConfig
from edge.uplink import ConfigGate
from protocol import DeviceConfig, config_topic, open_config, seal_config
from protocol.cli import key_files
from protocol.places import PlaceType
from tests.agent_harness import DEVICE, ScriptedEngine, make_config
from tests.fake_devices import FakeDevice
from tests.loan_api_app import NOW, Api, cli_config, open_loan_api
from tests.mqtt_subscriber import wait_until
from tests.secure_broker import SecureBroker

REPO = Path(__file__).parents[1]
PLACES_SAMPLE = REPO / "edge" / "data" / "places.sample.toml"
KEY = Ed25519PrivateKey.from_private_bytes(b"\x07" * 32)
JIADING = {"id": "sh-jiading-ucm", "type": "used_car_market", "name": "Demo used-car market (Shanghai Jiading)",
           "lat": 31.3, "lon": 121.25, "radius_m": 400.0, "datum": "gcj02"}
PAWN = {"id": "sh-minhang-pawn", "type": "pawn_lot", "name": "Demo pawn lot (Shanghai Minhang)", "lat": 31.15,
        "lon": 121.42, "radius_m": 150.0, "datum": "gcj02"}


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[sa.Engine]:
    db = create_engine(f"sqlite:///{tmp_path / 'c.db'}")
    migrate(db)
    yield db
    db.dispose()


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Api]:
    with open_loan_api(tmp_path) as app:
        yield app


class RecordingEngine:
    """The part of the rules engine the downlink applier calls."""

    def __init__(self) -> None:
        self.places: list[tuple[str, str]] | None = None
        self.regions: list[str] | None = None

    def set_markets(self, markets: Any) -> None:
        self.places = [(p.id, p.type.value) for p in markets]

    def set_regions(self, regions: Any) -> None:
        self.regions = [r.id for r in regions]

    def set_config(self, config: Any) -> None:
        pass


def agent_side(tmp_path: Path, device: str) -> tuple[ConfigGate, RecordingEngine, DownlinkApplier]:
    gate = ConfigGate(device, KEY.public_key(), tmp_path / f"{device}.config")
    rules = RecordingEngine()
    return gate, rules, DownlinkApplier(gate, rules, RulesConfig, tmp_path)  # type: ignore[arg-type]


# ------------------------------------------------------------------ storage and migration


def test_the_sample_places_file_loads_typed(tmp_path: Path) -> None:
    assert load_place_file(PLACES_SAMPLE) == [JIADING, PAWN]
    untyped = tmp_path / "ports.json"
    untyped.write_text(json.dumps({"places": [{k: v for k, v in PAWN.items() if k != "type"} | {"id": "p1"}]}))
    assert load_place_file(untyped, default_type=PlaceType.PORT)[0]["type"] == "port"
    assert load_place_file(untyped)[0]["type"] == "used_car_market"  # the agents' default


def test_upsert_delete_and_the_revision(engine: sa.Engine) -> None:
    with Session(engine) as session:
        assert places_revision(session) is None
        assert upsert_places(session, [JIADING, PAWN], now_ms=NOW) == (2, 0)
        assert upsert_places(session, [JIADING, PAWN], now_ms=NOW + 1) == (0, 0)
        assert upsert_places(session, [PAWN | {"type": "auction"}], now_ms=NOW + 2) == (0, 1)
        assert places_revision(session) == NOW + 2
        assert delete_place(session, "sh-minhang-pawn", now_ms=NOW + 3)
        assert not delete_place(session, "sh-minhang-pawn", now_ms=NOW + 4)  # already a tombstone
        assert not delete_place(session, "nope", now_ms=NOW + 4)
        assert places_revision(session) == NOW + 3  # a delete is a change the publisher must sign
        assert place_items(session) == [JIADING]
        assert upsert_places(session, [PAWN], now_ms=NOW + 5) == (1, 0)  # back from the tombstone
        assert place_items(session, [PlaceType.PAWN_LOT]) == [PAWN]


def test_check_place_item_refuses_what_the_agents_refuse() -> None:
    assert check_place_item(PAWN | {"datum": "GCJ02", "radius_m": 150}) == PAWN
    for bad, message in [
        (PAWN | {"type": "casino"}, "type 'casino' must be one of"),
        (PAWN | {"lat": float("nan")}, "lat must be a number"),
        (PAWN | {"id": "a b"}, "id 'a b' must match"),
        (PAWN | {"extra": 1}, "unknown key 'extra'"),
        ({k: v for k, v in PAWN.items() if k != "datum"}, "lacks required key 'datum'"),
        (PAWN | {"name": "x" * 201}, "over the limit of 200"),
    ]:
        with pytest.raises(PlaceFileError, match=message):
            check_place_item(bad)


def test_migration_0014_turns_markets_into_used_car_market_places(tmp_path: Path) -> None:
    db = create_engine(f"sqlite:///{tmp_path / 'old.db'}")
    migrate(db, "0006")
    with db.begin() as conn:
        conn.execute(sa.text("INSERT INTO markets (market_id, name, lat, lon, datum, radius_m, updated_ms) "
                             "VALUES ('m1', 'Old market', 31.3, 121.25, 'gcj02', 400.0, 5)"))
    migrate(db)
    with Session(db) as session:
        assert place_items(session) == [{"id": "m1", "type": "used_car_market", "name": "Old market", "lat": 31.3,
                                         "lon": 121.25, "radius_m": 400.0, "datum": "gcj02"}]
        assert places_revision(session) == 5
    assert "markets" not in sa.inspect(db).get_table_names()
    db.dispose()


# ------------------------------------------------------------------ API


def test_places_api_roles_crud_and_signed_lists(api: Api) -> None:
    body = {k: v for k, v in PAWN.items() if k != "id"}
    assert api.call("PUT", "/v1/places/sh-minhang-pawn", "risk_analyst", json=body).status_code == 403
    assert api.call("GET", "/v1/places", "collections").status_code == 403
    put = api.call("PUT", "/v1/places/sh-minhang-pawn", "admin", json=body)
    assert put.json() == {"place_id": "sh-minhang-pawn", "configs_signed": 5, "published": True}
    again = api.call("PUT", "/v1/places/sh-minhang-pawn", "admin", json=body).json()
    assert again == {"place_id": "sh-minhang-pawn", "unchanged": True, "configs_signed": 0}
    market = {k: v for k, v in JIADING.items() if k not in ("id", "type")}
    assert api.call("PUT", "/v1/markets/sh-jiading-ucm", "admin", json=market).json()["configs_signed"] == 5
    assert api.call("GET", "/v1/places", "risk_analyst").json() == [JIADING, PAWN]
    assert api.call("GET", "/v1/places", "risk_analyst", params={"type": "pawn_lot"}).json() == [PAWN]
    assert api.call("GET", "/v1/places/sh-minhang-pawn", "risk_analyst").json() == PAWN
    assert api.call("GET", "/v1/markets", "risk_analyst").json() == [{k: v for k, v in JIADING.items() if k != "type"}]
    for path, bad in [
        ("/v1/places/bad id", body),
        ("/v1/places/" + "x" * 65, body),
        ("/v1/places/p2", body | {"type": "casino"}),
        ("/v1/places/p2", body | {"datum": "osgb"}),
        ("/v1/places/p2", body | {"lat": 91}),
        ("/v1/places/p2", body | {"radius_m": 0}),
        ("/v1/places/p2", body | {"name": ""}),
    ]:
        assert api.call("PUT", path, "admin", json=bad).status_code == 422, (path, bad)
    assert api.call("GET", "/v1/places", "admin", params={"type": "casino"}).status_code == 422
    assert api.call("DELETE", "/v1/markets/sh-minhang-pawn", "admin").status_code == 404  # not a market
    assert api.call("DELETE", "/v1/places/sh-minhang-pawn", "admin").json()["deleted"] is True
    assert api.call("DELETE", "/v1/places/sh-minhang-pawn", "admin").status_code == 404
    assert api.call("GET", "/v1/places/sh-minhang-pawn", "admin").status_code == 404

    mine = [m for m in api.published if m.device_id == "tbox-0002"]
    assert [m.version for m in mine] == [1, 2, 3]
    bodies = [open_config(m.payload, m.topic, KEY.public_key()).body for m in mine]
    assert bodies[0] == {"places": [PAWN], "markets": []}
    legacy = {k: v for k, v in JIADING.items() if k != "type"}
    assert bodies[1] == {"places": [JIADING, PAWN], "markets": [legacy]}
    assert bodies[2] == {"places": [JIADING], "markets": [legacy]}
    with Session(api.engine) as session:
        actions = session.scalars(sa.select(AuditEntry.action).where(AuditEntry.subject_type == "place")).all()
    assert actions == ["put_place", "put_place", "put_place", "delete_place"]


def test_what_the_api_signs_an_agent_applies_with_types(api: Api, tmp_path: Path) -> None:
    for place in (JIADING, PAWN):
        api.call("PUT", f"/v1/places/{place['id']}", "admin", json={k: v for k, v in place.items() if k != "id"})
    gate, rules, applier = agent_side(tmp_path, "tbox-0002")
    for message in [m for m in api.published if m.device_id == "tbox-0002"]:
        applier.handle(message.topic, message.payload)
    assert gate.version == 2
    assert rules.places == [("sh-jiading-ucm", "used_car_market"), ("sh-minhang-pawn", "pawn_lot")]
    assert gate.counters.get("config_unknown_sections", 0) == 0


# ------------------------------------------------------------------ the agent's side of the downlink


def test_the_agent_ignores_and_counts_unknown_sections_and_prefers_places(tmp_path: Path) -> None:
    gate, rules, applier = agent_side(tmp_path, "car-1")
    topic = config_topic("car-1")
    legacy = {k: v for k, v in JIADING.items() if k != "type"}
    body = {"places": [JIADING, PAWN], "markets": [legacy], "future": {"enabled": False}, "later": {"name": "A"}}
    applier.handle(topic, seal_config(DeviceConfig("car-1", 1, NOW, body), KEY, topic))
    assert gate.version == 1
    assert rules.places == [("sh-jiading-ucm", "used_car_market"), ("sh-minhang-pawn", "pawn_lot")]
    assert gate.counters["config_unknown_sections"] == 2
    # a body with markets only (an older collector) still applies
    applier.handle(topic, seal_config(DeviceConfig("car-1", 2, NOW, {"markets": [legacy]}), KEY, topic))
    assert (gate.version, rules.places) == (2, [("sh-jiading-ucm", "used_car_market")])
    # a bad place in a known section still refuses the whole body
    bad = {"places": [PAWN | {"type": "casino"}], "regions": []}
    applier.handle(topic, seal_config(DeviceConfig("car-1", 3, NOW, bad), KEY, topic))
    assert (gate.version, gate.counters["config_rejected_invalid_body"]) == (2, 1)
    assert rules.places == [("sh-jiading-ucm", "used_car_market")]
    assert rules.regions is None


def test_a_cli_delete_makes_the_publisher_sign_again(engine: sa.Engine) -> None:
    with Session(engine) as session:
        session.execute(sa.text("INSERT INTO devices (device_id, created_ms) VALUES ('car-1', 1)"))
        session.execute(sa.text("INSERT INTO device_keys (device_id, public_key, fingerprint, added_ms) "
                                "VALUES ('car-1', x'00', 'f', 1)"))
        upsert_places(session, [JIADING, PAWN], now_ms=NOW)
        assert devices_needing_config(session) == ["car-1"]
        build_device_configs(session, KEY, ["car-1"], NOW + 1)
        assert devices_needing_config(session) == []
        delete_place(session, "sh-jiading-ucm", now_ms=NOW + 2)
        assert devices_needing_config(session) == ["car-1"]
        assert config_body(session, "car-1") == {"places": [PAWN], "markets": []}


# ------------------------------------------------------------------ CLI


def run(capsys: pytest.CaptureFixture[str], config: Path, *argv: str) -> tuple[int, str, str]:
    code = collector_main([*argv, "--config", str(config)])
    out, err = capsys.readouterr()
    return code, out, err


def test_places_cli_import_list_delete(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    config = cli_config(tmp_path, monkeypatch)
    code, out, _ = run(capsys, config, "places", "import", str(PLACES_SAMPLE))
    assert (code, out) == (0, "places: 2 created, 0 changed, 0 unchanged; no [downlink] signing_key configured: "
                              "devices are not updated\n")
    code, out, _ = run(capsys, config, "places", "list", "--type", "pawn_lot")
    assert [json.loads(line) for line in out.splitlines()] == [PAWN]
    assert run(capsys, config, "places", "delete", "sh-minhang-pawn")[0] == 0
    code, _, err = run(capsys, config, "places", "delete", "sh-minhang-pawn")
    assert (code, err) == (1, "lienwatch collector places delete: no place 'sh-minhang-pawn'\n")
    bad = tmp_path / "bad.toml"
    bad.write_text('[[place]]\nid = "x"\nname = "n"\nlat = 1\nlon = 2\nradius_m = 5\ndatum = "wgs84"\ntype = "zoo"\n')
    code, _, err = run(capsys, config, "places", "import", str(bad))
    assert code == 1
    assert "type 'zoo' must be one of" in err
    assert str(bad) in err
    code, out, _ = run(capsys, config, "places", "list")
    assert [json.loads(line)["id"] for line in out.splitlines()] == ["sh-jiading-ucm"]
    db = create_engine(f"sqlite:///{tmp_path / 'data' / 'collector.db'}")
    with Session(db) as session:
        tombstone = session.get(PlaceRecord, "sh-minhang-pawn")
        assert tombstone is not None
        assert tombstone.deleted_ms is not None
        actions = session.scalars(sa.select(AuditEntry.action).where(AuditEntry.subject_type == "place")).all()
    assert actions == ["import_places", "delete_place"]
    db.dispose()


# ------------------------------------------------------------------ through a real broker to a running agent


class TypedEngine(ScriptedEngine):
    """The agent harness's engine double, recording the place types it is given."""

    def set_markets(self, markets: Any) -> None:
        self.calls.append(("places", [(m.id, m.type.value) for m in markets]))


def test_typed_places_reach_a_running_agent_through_the_broker(
    engine: sa.Engine, mosquitto: SecureBroker, tmp_path: Path
) -> None:
    collector_keys = key_files.generate(tmp_path / "keys", "collector")
    signing_key = key_files.load_private_key(collector_keys.private_path)
    agent_config = make_config(tmp_path, mosquitto.port,
                               extra='[downlink]\ncollector_public_key = "keys/collector.pub"\n',
                               login=mosquitto.login(DEVICE))
    with Session(engine) as session:
        upsert_places(session, [JIADING, PAWN], now_ms=NOW)
        session.commit()
    DeviceRegistry(engine, clock_ms=lambda: NOW).add(DEVICE, FakeDevice(DEVICE).pem)
    login = mosquitto.login()  # the collector's broker account
    mqtt_settings = MqttSettings(port=mosquitto.port, client_id="places-test", username=login.username,
                                 password=login.password)
    publisher = ConfigPublisher(engine, signing_key, mqtt_settings, resync_interval_s=0.2, clock_ms=lambda: NOW + 1)
    rules = TypedEngine()
    agent = Agent(agent_config, engine=rules, sources={})
    thread = threading.Thread(target=agent.run, name="agent-under-test")
    thread.start()
    publisher.start()
    try:
        assert wait_until(lambda: ("places", [("sh-jiading-ucm", "used_car_market"), ("sh-minhang-pawn", "pawn_lot")])
                          in rules.calls, 30)
        with Session(engine) as session:  # a delete from the CLI: the publisher signs and sends again
            delete_place(session, "sh-minhang-pawn", now_ms=NOW + 2)
            session.commit()
        publisher.wake()
        assert wait_until(lambda: ("places", [("sh-jiading-ucm", "used_car_market")]) in rules.calls, 30)
    finally:
        publisher.stop()
        agent.request_stop()
        thread.join(timeout=60)
    assert not thread.is_alive()
    assert agent.gate is not None
    assert agent.gate.version == 2
    assert agent.gate.counters.get("config_rejected", 0) == 0
