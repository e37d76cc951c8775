"""Devices with known keys that build signed messages, and the collector rows tests read back.

Shared by the ingest, MQTT ingest, API, downlink and risk worker tests. Times are fixed.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import sqlalchemy as sa
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from collector.ingest.registry import DeviceRegistry
from collector.storage.tables import Base
from protocol import Batch, DeviceState, Fix, batch_topic, seal_batch, seal_state, state_topic

T0 = 1_700_000_000_000  # 2023-11-14T22:13:20Z
NOW = T0 + 3_600_000
BOOT_A = bytes(range(16))
BOOT_B = bytes(range(16, 32))


@dataclass
class FakeDevice:
    """A device with a deterministic Ed25519 key that builds signed messages."""

    device_id: str
    key: Ed25519PrivateKey = field(init=False)

    def __post_init__(self) -> None:
        self.key = Ed25519PrivateKey.from_private_bytes(hashlib.sha256(self.device_id.encode()).digest())

    @property
    def pem(self) -> bytes:
        return self.key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    @property
    def topic(self) -> str:
        return batch_topic(self.device_id)

    def batch(self, seq: int, *, t0: int = T0, fixes: int = 3, **extra: object) -> Batch:
        track = tuple(Fix(t0 + i * 1000, 31.2 + i * 1e-4, 121.4 + i * 1e-4, speed_mps=10.0 + i) for i in range(fixes))
        return Batch(self.device_id, BOOT_A, seq, t0 + fixes * 1000, fixes=track, **extra)  # type: ignore[arg-type]

    def sealed(self, seq: int, **kw: object) -> bytes:
        return seal_batch(self.batch(seq, **kw), self.key, self.topic)  # type: ignore[arg-type]

    def state(self, online: bool, time_ms: int, boot_id: bytes = BOOT_A) -> bytes:
        topic = state_topic(self.device_id)
        return seal_state(DeviceState(self.device_id, online, time_ms, boot_id), self.key, topic)


def register(engine: sa.Engine, *devices: FakeDevice) -> None:
    """Add the devices' public keys to the collector's registry."""
    registry = DeviceRegistry(engine, clock_ms=lambda: T0)
    for device in devices:
        registry.add(device.device_id, device.pem)


def count(engine: sa.Engine, table: str, **where: object) -> int:
    """Rows of ``table`` whose columns equal ``where``."""
    t = Base.metadata.tables[table]
    stmt = sa.select(sa.func.count()).select_from(t)
    for key, value in where.items():
        stmt = stmt.where(t.c[key] == value)
    with engine.connect() as conn:
        return int(conn.execute(stmt).scalar_one())


def status_row(engine: sa.Engine, device_id: str) -> dict[str, object]:
    """The device's ``device_status`` row."""
    t = Base.metadata.tables["device_status"]
    with engine.connect() as conn:
        return dict(conn.execute(sa.select(t).where(t.c.device_id == device_id)).mappings().one())


def dead_letters(engine: sa.Engine) -> list[dict[str, object]]:
    """Every dead-lettered message, oldest first."""
    t = Base.metadata.tables["dead_letters"]
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(sa.select(t).order_by(t.c.id)).mappings()]
