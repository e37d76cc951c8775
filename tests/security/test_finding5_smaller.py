"""Finding 5: the smaller gaps, one test each, reproduced as the issue describes them."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
import sqlalchemy as sa
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy.orm import Session

from collector.settings import MqttSettings, hash_api_key, load_settings
from collector.storage.tables import AlertRecord, WebhookDelivery
from edge.cli import agent as agent_cli
from edge.uplink import ConfigGate, DownlinkRejectedError
from protocol import DeviceConfig, config_topic, seal_config
from protocol.cli import key_files as keys
from tests.loan_api_app import NOW, Api, audit_actions

DOCS = Path(__file__).resolve().parents[2] / "docs"
MINIMAL = """
[device]
id = "car-7"
key_file = "k/car-7.key"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(text)
    return path


def test_device_and_dead_letter_reads_and_changes_are_audited(api: Api) -> None:
    public = Ed25519PrivateKey.from_private_bytes(b"\x05" * 32).public_key()
    pem = public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    body = {"device_id": "car-9", "public_key_pem": pem}
    assert api.call("POST", "/v1/devices", "admin", json=body).status_code == 201
    assert api.call("GET", "/v1/devices/tbox-0002", "admin").status_code == 200  # returns the last position
    assert api.call("GET", "/v1/devices", "admin").status_code == 200
    assert api.call("POST", "/v1/devices/car-9/revoke", "admin").status_code == 200
    assert api.call("GET", "/v1/dead-letters", "admin", params={"reason": "bad_signature"}).status_code == 200
    actions = [(action, subject) for role, action, subject in audit_actions(api) if role == "admin"]
    assert actions == [("add_device", "car-9"), ("read_device", "tbox-0002"), ("list_devices", "*"),
                       ("revoke_device", "car-9"), ("read_dead_letters", "bad_signature")]  # fmt: skip


def test_collections_learn_no_market_name_or_distance(api: Api) -> None:
    with Session(api.engine) as session:
        alert = session.scalars(sa.select(AlertRecord)).one()
        alert.evidence = {"market_id": "sh-jiading-ucm", "market_name": "Jiading used-car market",
                          "distance_to_market_m": 120.5, "centre_lat": 31.302, "centre_lon": 121.2456}  # fmt: skip
        session.commit()
    api.call("POST", "/v1/loans/L-1002/assess", "admin")
    shown = str(api.call("GET", "/v1/loans/L-1002/alerts", "collections").json())
    shown += str(api.call("GET", "/v1/loans/L-1002", "collections").json())
    shown += str(api.call("GET", "/v1/loans/L-1002/risk-events", "collections").json())
    for secret in ("Jiading used-car market", "distance_to_market_m", "120.5", "31.302"):
        assert secret not in shown
    assert "Jiading used-car market" in str(api.call("GET", "/v1/loans/L-1002/alerts", "risk_analyst").json())


def test_webhook_bodies_carry_no_precise_centre(api: Api) -> None:
    assert api.call("POST", "/v1/loans/L-1002/assess", "admin").json()["level"] == "critical"  # v2
    with Session(api.engine) as session:
        bodies = [bytes(d.body) for d in session.scalars(sa.select(WebhookDelivery))]
    assert bodies
    for body in bodies:
        assert b"centre_lat" not in body
        assert b"31.302" not in body
        assert b"sh-jiading-ucm" in body  # the reason stays readable


@pytest.mark.parametrize(
    ("path", "params"),
    [
        ("/v1/loans", {"offset": str(2**63)}),
        ("/v1/loans/L-1002/track", {"from_ms": "100000000000000000000000", "to_ms": str(NOW)}),
        ("/v1/loans/L-1002/track", {"from_ms": "1e23", "to_ms": str(NOW)}),
        ("/v1/audit", {"since_ms": str(2**64)}),
        ("/v1/risk/stream", {"after_id": "1e23", "follow": "false"}),
        ("/v1/risk/stream", {"after_id": str(2**63), "follow": "false"}),
    ],
)
def test_out_of_range_integers_are_422_not_500(api: Api, path: str, params: dict[str, str]) -> None:
    assert api.call("GET", path, "admin", params=params).status_code == 422


def test_risk_stream_last_event_id_beyond_any_id_is_422(api: Api) -> None:
    response = api.client.get("/v1/risk/stream", params={"follow": "false"},
                              headers={"Authorization": "Bearer k-admin", "Last-Event-ID": "9" * 20})  # fmt: skip
    assert response.status_code == 422


def test_downlink_rollback_after_losing_downlink_cose_is_refused(tmp_path: Path) -> None:
    collector_key = Ed25519PrivateKey.from_private_bytes(b"\x09" * 32)
    topic = config_topic("car-1")

    def signed(version: int) -> bytes:
        return seal_config(DeviceConfig("car-1", version, NOW, {"markets": []}), collector_key, topic)

    state, floor = tmp_path / "data" / "downlink.cose", tmp_path / "keys" / "car-1.config-floor"
    state.parent.mkdir()
    floor.parent.mkdir()
    gate = ConfigGate("car-1", collector_key.public_key(), state, floor)
    for version in (3, 5):
        config = gate.check(topic, signed(version))
        assert config is not None
        gate.commit(config, signed(version))
    state.unlink()  # downlink.cose is lost
    after = ConfigGate("car-1", collector_key.public_key(), state, floor)
    with pytest.raises(DownlinkRejectedError) as refused:
        after.check(topic, signed(3))  # the attacker replays an older genuine configuration
    assert refused.value.reason == "stale_version"
    assert after.check(topic, signed(5)) is not None  # the retained current one is taken again
    assert after.check(topic, signed(6)) is not None


def test_agent_check_refuses_what_agent_run_refuses(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, MINIMAL)
    assert agent_cli.main(["check", "--config", str(path)]) == 2  # no key file at all
    assert "key file" in capsys.readouterr().err
    generated = keys.generate(tmp_path / "k", "car-7")
    os.chmod(generated.private_path, 0o644)  # world-readable private key
    assert agent_cli.main(["check", "--config", str(path)]) == 2
    os.chmod(generated.private_path, 0o600)
    assert agent_cli.main(["check", "--config", str(path)]) == 0


def test_shipped_collector_toml_has_no_guessable_key() -> None:
    settings = load_settings(DOCS / "collector.toml", environ={})
    guessable = ["password", "admin", "123456", "changeme", "secret", "auditor", "letmein", "lienwatch"]
    assert not {hash_api_key(word) for word in guessable} & set(settings.api_keys)
    assert hashlib.sha256(b"password").hexdigest() not in (DOCS / "collector.toml").read_text()


def test_mqtt_settings_repr_hides_the_broker_password() -> None:
    settings = MqttSettings(username="lw-collector", password="hunter2-very-secret")
    assert "hunter2-very-secret" not in repr(settings)
    assert "hunter2-very-secret" not in str(settings)
