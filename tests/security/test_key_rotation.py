"""Key rotation: a device key replaced with an overlap window, and the collector's downlink key
announced under the current one (docs/security.md section 5).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import sqlalchemy as sa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy.orm import Session

from collector.cli.commands import main as collector_main
from collector.errors import DeviceNotFoundError, RegistryError
from collector.ingest.ingestor import Ingestor, Outcome
from collector.ingest.registry import DeviceRegistry
from collector.jobs.downlink import ConfigPublisher, announce_next_key
from collector.settings import Limits, MqttSettings
from collector.storage.places import upsert_places
from collector.storage.tables import ConfigVersion, DownlinkKey
from edge.downlink_apply import DownlinkApplier
from edge.rules import RulesConfig
from edge.uplink import ConfigGate
from protocol import DeviceConfig, config_topic, seal_config
from protocol.downlink_keys import keys_section, raw_public_key
from tests.agent_harness import ScriptedEngine

from .signing_devices import NOW, SigningDevice, register, rows

HOUR_MS = 3_600_000


class Clock:
    def __init__(self, now_ms: int) -> None:
        self.now_ms = now_ms

    def __call__(self) -> int:
        return self.now_ms


def rekeyed(device_id: str) -> SigningDevice:
    """The same device id with a new key (the box was re-provisioned)."""
    device = SigningDevice(device_id)
    device.key = Ed25519PrivateKey.generate()
    return device


# ------------------------------------------------------------------ device keys


def test_both_keys_verify_during_the_overlap_then_only_the_new_one(engine: sa.Engine, car: SigningDevice) -> None:
    register(engine, car)
    clock = Clock(NOW)
    registry = DeviceRegistry(engine, clock_ms=clock)
    ingest = Ingestor(engine, Limits(key_cache_ttl_s=0), clock_ms=clock)
    new = rekeyed(car.device_id)
    assert ingest.handle(car.topic, car.sealed(1)).outcome is Outcome.STORED

    info = registry.rotate(car.device_id, new.pem, overlap_ms=2 * HOUR_MS)
    assert info.active
    assert info.fingerprint is not None
    assert [until for _, until in registry.retiring(car.device_id)] == [NOW + 2 * HOUR_MS]
    # In the window: the old key's batches (still in the outbox) and the new key's both store.
    clock.now_ms = NOW + HOUR_MS
    assert ingest.handle(car.topic, car.sealed(2)).outcome is Outcome.STORED
    assert ingest.handle(new.topic, new.sealed(3)).outcome is Outcome.STORED
    assert ingest.counters["verified_by_retiring_key"] == 1
    # A forgery by a third key is still a bad signature.
    stranger = rekeyed(car.device_id)
    assert ingest.handle(car.topic, stranger.sealed(9)).outcome is Outcome.DEAD_LETTERED
    # After the window the old key is revoked: refused, dead-lettered; the new one verifies.
    clock.now_ms = NOW + 2 * HOUR_MS
    assert ingest.handle(car.topic, car.sealed(4)).outcome is Outcome.DEAD_LETTERED
    assert ingest.handle(new.topic, new.sealed(5)).outcome is Outcome.STORED
    assert registry.retiring(car.device_id) == []
    assert sorted(int(r["seq"]) for r in rows(engine, "batches")) == [1, 2, 3, 5]  # type: ignore[call-overload]
    reasons = [r["reason"] for r in rows(engine, "dead_letters")]
    assert reasons == ["bad_signature", "bad_signature"]


def test_a_second_rotation_ends_the_first_window_and_revoke_ends_every_window(
    engine: sa.Engine, car: SigningDevice
) -> None:
    register(engine, car)
    clock = Clock(NOW)
    registry = DeviceRegistry(engine, clock_ms=clock)
    ingest = Ingestor(engine, Limits(key_cache_ttl_s=0), clock_ms=clock)
    second, third = rekeyed(car.device_id), rekeyed(car.device_id)
    registry.rotate(car.device_id, second.pem, overlap_ms=HOUR_MS)
    registry.rotate(car.device_id, third.pem, overlap_ms=HOUR_MS)
    assert len(registry.retiring(car.device_id)) == 1  # at most two keys verify
    assert ingest.handle(car.topic, car.sealed(1)).outcome is Outcome.DEAD_LETTERED  # the first key: gone
    assert ingest.handle(second.topic, second.sealed(2)).outcome is Outcome.STORED
    registry.revoke(car.device_id)
    assert registry.retiring(car.device_id) == []
    assert ingest.handle(second.topic, second.sealed(3)).outcome is Outcome.DEAD_LETTERED
    assert ingest.handle(third.topic, third.sealed(4)).outcome is Outcome.DEAD_LETTERED


def test_rotation_refuses_what_it_cannot_do(engine: sa.Engine, car: SigningDevice) -> None:
    registry = DeviceRegistry(engine, clock_ms=lambda: NOW)
    with pytest.raises(DeviceNotFoundError):
        registry.rotate(car.device_id, car.pem, overlap_ms=0)  # nothing registered
    register(engine, car)
    with pytest.raises(RegistryError):
        registry.rotate(car.device_id, car.pem, overlap_ms=0)  # the same key
    with pytest.raises(RegistryError):
        registry.rotate(car.device_id, rekeyed(car.device_id).pem, overlap_ms=-1)
    with pytest.raises(RegistryError):
        registry.rotate(car.device_id, b"-----BEGIN PUBLIC KEY-----\nnot a key\n", overlap_ms=0)


# ------------------------------------------------------------------ the CLI, audited


def _cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = collector_main(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_add_rotate_revoke_are_audited(
    engine: sa.Engine, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    toml = tmp_path / "collector.toml"
    toml.write_text(f'database_url = "{engine.url.render_as_string(hide_password=False)}"\n')
    old, new = SigningDevice("car-0007"), rekeyed("car-0007")
    (tmp_path / "old.pub").write_bytes(old.pem)
    (tmp_path / "new.pub").write_bytes(new.pem)
    broker_dir = str(tmp_path / "broker")
    common = ["--config", str(toml)]

    code, out, _ = _cli(["devices", "add", "--device", "car-0007", "--public-key", str(tmp_path / "old.pub"),
                         "--broker-dir", broker_dir, *common], capsys)  # fmt: skip
    assert code == 0
    assert json.loads(out)["mqtt_username"] == "car-0007"
    code, out, _ = _cli(["devices", "rotate", "--device", "car-0007", "--public-key", str(tmp_path / "new.pub"),
                         "--overlap-hours", "24", *common], capsys)  # fmt: skip
    assert code == 0
    rotated = json.loads(out)
    assert rotated["active"]
    assert len(rotated["retiring"]) == 1
    # A refused change (no such device) is not audited as done.
    code, _, err = _cli(["devices", "rotate", "--device", "ghost", "--public-key", str(tmp_path / "new.pub"),
                         *common], capsys)  # fmt: skip
    assert code == 1
    assert "ghost" in err
    code, out, _ = _cli(["devices", "revoke", "car-0007", "--broker-dir", broker_dir, *common], capsys)
    assert code == 0
    assert json.loads(out)["mqtt_account_removed"] is True

    audit = sorted(rows(engine, "audit_log"), key=lambda r: int(r["id"]))  # type: ignore[call-overload]
    assert [(r["action"], r["subject_type"], r["subject_id"], r["role"]) for r in audit] == [
        ("add_device", "device", "car-0007", "admin"),
        ("rotate_device", "device", "car-0007", "admin"),
        ("revoke_device", "device", "car-0007", "admin"),
    ]
    assert all(str(r["actor"]).startswith("cli:") for r in audit)
    add, rotate, revoke = (r["detail"] for r in audit)
    assert add == {"fingerprint": rotated["retiring"][0]["fingerprint"], "mqtt_account": True}  # type: ignore[index]
    assert rotate["fingerprint"] == rotated["fingerprint"]
    assert rotate["overlap_ms"] == 24 * HOUR_MS
    assert revoke == {"mqtt_account_removed": True}
    assert "password" not in json.dumps([r["detail"] for r in audit])


# ------------------------------------------------------------------ the collector's downlink key

MARKET = {"id": "m1", "name": "Jiading UCM", "lat": 31.3, "lon": 121.25, "radius_m": 400.0, "datum": "gcj02"}


class Agent:
    """The agent's downlink side (gate + applier), restartable from its files."""

    def __init__(self, device_id: str, configured: Ed25519PrivateKey, folder: Path) -> None:
        self.device_id = device_id
        self.configured = configured.public_key()
        self.state = folder / "data" / "downlink.cose"
        self.floor = folder / "keys" / f"{device_id}.config-floor"
        self.state.parent.mkdir(parents=True, exist_ok=True)
        self.floor.parent.mkdir(parents=True, exist_ok=True)
        self.engine = ScriptedEngine()
        self.restart()

    def restart(self) -> None:
        self.gate = ConfigGate(self.device_id, self.configured, self.state, self.floor)
        self.applier = DownlinkApplier(self.gate, self.engine, RulesConfig, self.state.parent)

    def deliver(self, payload: bytes) -> int:
        """Hand a configuration message to the agent; returns its version floor afterwards."""
        self.applier.handle(config_topic(self.device_id), payload)
        return self.gate.version

    def trusts(self, key: Ed25519PrivateKey) -> bool:
        return raw_public_key(self.gate.trust.key) == raw_public_key(key.public_key())


def stored_config(engine: sa.Engine, device_id: str) -> bytes:
    with Session(engine) as session:
        row = session.get(ConfigVersion, device_id)
        assert row is not None
        assert row.payload is not None
        return row.payload


def test_downlink_key_announced_under_the_current_key_then_promoted(
    engine: sa.Engine, car: SigningDevice, tmp_path: Path
) -> None:
    old, new, thief = (Ed25519PrivateKey.generate() for _ in range(3))
    register(engine, car)
    with Session(engine) as session:
        upsert_places(session, [{**MARKET, "type": "used_car_market"}], now_ms=NOW)
        session.commit()
    clock = Clock(NOW + 1)
    settings = MqttSettings(client_id="rotation-test")
    collector = ConfigPublisher(engine, old, settings, clock_ms=clock)  # never started: signs, does not publish
    agent = Agent(car.device_id, old, tmp_path / "agent")
    topic = config_topic(car.device_id)

    assert collector.sync_once().signed == 1
    assert agent.deliver(stored_config(engine, car.device_id)) == 1
    assert agent.gate.trust.next_key is None

    # 1. The collector announces its next key: every configuration is signed again, with it inside.
    clock.now_ms += 1
    with Session(engine) as session:
        announce_next_key(session, new.public_key(), now_ms=clock.now_ms)
        session.commit()
    clock.now_ms += 1
    assert collector.sync_once().signed == 1
    announcing = stored_config(engine, car.device_id)
    assert agent.deliver(announcing) == 2
    assert agent.gate.trust.next_key is not None
    assert raw_public_key(agent.gate.trust.next_key) == raw_public_key(new.public_key())
    # A key nobody announced still signs nothing the agent takes.
    assert agent.deliver(seal_config(DeviceConfig(car.device_id, 3, NOW, {}), thief, topic)) == 2
    agent.restart()  # the announcement survives a restart (it is in the stored configuration)
    assert agent.gate.trust.next_key is not None

    # 2. The collector now signs with the new key: its first round promotes it and signs again.
    collector = ConfigPublisher(engine, new, settings, clock_ms=clock)
    clock.now_ms += 1
    assert collector.sync_once().signed == 1
    with Session(engine) as session:
        assert [k.promoted_ms for k in session.query(DownlinkKey)] == [clock.now_ms]
    promoted = stored_config(engine, car.device_id)
    assert agent.deliver(promoted) == 3
    assert agent.trusts(new)
    assert agent.gate.trust.next_key is None
    assert agent.gate.counters["config_key_promoted"] == 1

    # 3. The old key is retired: a configuration it signs (a stolen old key) is refused.
    assert agent.deliver(seal_config(DeviceConfig(car.device_id, 4, NOW, {}), old, topic)) == 3
    assert agent.gate.counters["config_rejected_bad_signature"] == 1  # counted since the restart

    # 4. After a restart, and even after losing downlink.cose, the agent trusts the new key
    #    only: the promotion chain beside the version floor is replayed from agent.toml's key.
    for lose_state in (False, True):
        if lose_state:
            agent.state.unlink()
        agent.restart()
        assert agent.trusts(new)
        version = agent.gate.version
        assert agent.deliver(seal_config(DeviceConfig(car.device_id, version + 1, NOW, {}), old, topic)) == version
        assert agent.deliver(seal_config(DeviceConfig(car.device_id, version + 1, NOW, {}), new, topic)) == version + 1
    assert agent.engine.calls[0] == ("markets", ["m1"])


def test_unknown_sections_are_ignored_and_a_bad_announcement_refuses_the_body(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    agent = Agent("car-1", key, tmp_path)
    topic = config_topic("car-1")

    def signed(version: int, body: dict[str, object], signer: Ed25519PrivateKey = key) -> bytes:
        return seal_config(DeviceConfig("car-1", version, NOW, body), signer, topic)

    # A newer collector's sections (owned by other parts) do not make an old agent refuse the rest.
    future = {"markets": [MARKET], "future": {"enabled": False}, "later": {"x": 1}}
    assert agent.deliver(signed(1, future)) == 1
    assert agent.engine.calls == [("markets", ["m1"])]
    assert agent.gate.counters["config_unknown_sections"] == 2
    # A malformed announcement refuses the whole body (nothing applied, nothing trusted).
    bad_sections = (
        {"next": {"alg": "Ed448", "public_key": "00" * 32}}, {"next": {"alg": "Ed25519", "public_key": "zz"}},
        {"next": "ab"}, ["not", "a", "map"], {"next": {"alg": "Ed25519", "public_key": "00" * 31}},
    )  # fmt: skip
    for bad in bad_sections:
        assert agent.deliver(signed(2, {"keys": bad})) == 1
    assert agent.gate.counters["config_rejected_invalid_body"] == 5
    assert agent.gate.trust.next_key is None
    # An announcement of the key already trusted announces nothing.
    assert agent.deliver(signed(2, {"keys": keys_section(key.public_key())})) == 2
    assert agent.gate.trust.next_key is None


def test_a_forged_or_damaged_promotion_chain_is_not_trusted(tmp_path: Path) -> None:
    key, forged = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    agent = Agent("car-1", key, tmp_path)
    topic = config_topic("car-1")
    chain = agent.floor.with_name(f"{agent.floor.name}.keys")
    # Someone with the disk writes a chain record signed by their own key announcing their key.
    record = seal_config(DeviceConfig("car-1", 1, NOW, {"keys": keys_section(forged.public_key())}), forged, topic)
    for damage in (len(record).to_bytes(4, "big") + record, b"\x00\x00\x10\x00" + record[:10], b"\x00"):
        chain.write_bytes(damage)
        agent.restart()
        assert agent.trusts(key)
        assert agent.gate.counters["config_keys_unreadable"] == 1
        forged_config = seal_config(DeviceConfig("car-1", 7, NOW, {}), forged, topic)
        assert agent.deliver(forged_config) == 0


def test_cli_downlink_key_announce_is_audited_and_listed(
    engine: sa.Engine, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    toml = tmp_path / "collector.toml"
    toml.write_text(f'database_url = "{engine.url.render_as_string(hide_password=False)}"\n')
    pem = tmp_path / "collector-next.pub"
    pem.write_bytes(SigningDevice("next").pem)
    code, out, _ = _cli(["downlink-key", "announce", "--public-key", str(pem), "--config", str(toml)], capsys)
    assert code == 0
    announced = json.loads(out)
    code, out, _ = _cli(["downlink-key", "status", "--config", str(toml)], capsys)
    assert code == 0
    assert [json.loads(line) for line in out.splitlines()] == [{**announced, "promoted_ms": None}]
    (audit,) = rows(engine, "audit_log")
    assert (audit["action"], audit["subject_type"], audit["subject_id"]) == (
        "announce_downlink_key", "downlink_key", announced["fingerprint"],
    )  # fmt: skip
    pem.write_text("-----BEGIN PUBLIC KEY-----\nnot a key\n-----END PUBLIC KEY-----\n")
    code, _, err = _cli(["downlink-key", "announce", "--public-key", str(pem), "--config", str(toml)], capsys)
    assert code == 1
    assert "PEM" in err
    assert len(rows(engine, "audit_log")) == 1
