"""Key rotation: a device key replaced with an overlap window, and the collector's downlink key
announced under the current one (docs/security.md section 5).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import sqlalchemy as sa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from collector.cli.commands import main as collector_main
from collector.errors import DeviceNotFoundError, RegistryError
from collector.ingest.ingestor import Ingestor, Outcome
from collector.ingest.registry import DeviceRegistry
from collector.settings import Limits

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
