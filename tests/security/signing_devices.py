"""Devices with deterministic keys that sign what their agent would send, and table reads.

Helpers of the attack tests in tests/security (no tests in here).
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

__all__ = ["BOOT", "NOW", "T0", "SigningDevice", "register", "rows"]

T0 = 1_700_000_000_000  # 2023-11-14T22:13:20Z
NOW = T0 + 3 * 86_400_000
BOOT = bytes(range(16))


@dataclass
class SigningDevice:
    """A device with a deterministic Ed25519 key that builds the messages its agent sends."""

    device_id: str
    key: Ed25519PrivateKey = field(init=False)

    def __post_init__(self) -> None:
        self.key = Ed25519PrivateKey.from_private_bytes(hashlib.sha256(b"sec:" + self.device_id.encode()).digest())

    @property
    def pem(self) -> bytes:
        return self.key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    @property
    def topic(self) -> str:
        return batch_topic(self.device_id)

    @property
    def state_topic(self) -> str:
        return state_topic(self.device_id)

    def batch(self, seq: int, *, t0: int = T0, fixes: int = 3, lat: float = 31.2) -> Batch:
        track = tuple(Fix(t0 + i * 1000, lat + i * 1e-4, 121.4 + i * 1e-4, speed_mps=10.0) for i in range(fixes))
        return Batch(self.device_id, BOOT, seq, t0 + fixes * 1000, fixes=track)

    def sealed(self, seq: int, **kw: object) -> bytes:
        return seal_batch(self.batch(seq, **kw), self.key, self.topic)  # type: ignore[arg-type]

    def state(self, online: bool, time_ms: int, connection: int | None) -> bytes:
        state = DeviceState(self.device_id, online, time_ms, BOOT, connection=connection)
        return seal_state(state, self.key, self.state_topic)


def register(engine: sa.Engine, *devices: SigningDevice) -> None:
    registry = DeviceRegistry(engine, clock_ms=lambda: T0)
    for device in devices:
        registry.add(device.device_id, device.pem)


def rows(engine: sa.Engine, table: str, **where: object) -> list[dict[str, object]]:
    t = Base.metadata.tables[table]
    stmt = sa.select(t)
    for key, value in where.items():
        stmt = stmt.where(t.c[key] == value)
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(stmt).mappings()]
