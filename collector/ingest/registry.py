"""Device registry: which device may sign batches with which Ed25519 key.

How revocation reaches the ingest: every change (add, revoke) bumps the single row of
``registry_version`` in the same transaction. :class:`KeyCache` keeps the active keys in
memory and re-reads them only when that version changed; it checks the version at most
every ``key_cache_ttl_s`` seconds (``limits.key_cache_ttl_s``, default 1 s, 0 = before every
message) and at once when a message names a device it does not know. So a revoke takes
effect in every collector process within ``key_cache_ttl_s``, and a newly added device is
accepted from its first message.

Key rotation with an overlap window (:meth:`DeviceRegistry.rotate`): the new key becomes the
device's active key at once, and the old one stays valid until ``now + overlap``; its
``revoked_ms`` is set to that future time. During the window a batch signed with either key
verifies (the old key is tried only when the active one does not verify, see
:attr:`KeyCache.retiring`); from ``revoked_ms`` on only the new key does. A device whose box
was re-keyed therefore loses nothing it signed, and sent, before the new key was installed.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass

import sqlalchemy as sa
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy.engine import Connection, Engine

from protocol import check_device_id
from protocol.errors import InvalidRecord

from ..clock import ClockMs, wall_clock_ms
from ..errors import DeviceExistsError, DeviceNotFoundError, InvalidPublicKeyError, RegistryError
from ..storage.tables import Base

__all__ = [
    "DeviceInfo",
    "DeviceRegistry",
    "KeyCache",
    "load_public_key_pem",
]

_devices = Base.metadata.tables["devices"]
_keys = Base.metadata.tables["device_keys"]
_version = Base.metadata.tables["registry_version"]
MAX_PEM_BYTES = 4096


def load_public_key_pem(pem: bytes | str) -> Ed25519PublicKey:
    """Parse a PEM SubjectPublicKeyInfo that must hold an Ed25519 key.

    Raises:
        InvalidPublicKeyError: not PEM, not SubjectPublicKeyInfo, or not Ed25519.
    """
    data = pem.encode() if isinstance(pem, str) else pem
    if len(data) > MAX_PEM_BYTES:
        raise InvalidPublicKeyError(f"public key PEM is {len(data)} bytes, over {MAX_PEM_BYTES}")
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as exc:
        raise InvalidPublicKeyError(f"public key is not a PEM SubjectPublicKeyInfo: {exc}") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise InvalidPublicKeyError(f"public key is {type(key).__name__}, expected Ed25519")
    return key


def _raw(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def fingerprint(raw_key: bytes) -> str:
    """SHA-256 hex of the raw 32-byte public key."""
    return hashlib.sha256(raw_key).hexdigest()


@dataclass(frozen=True, slots=True)
class DeviceInfo:
    """A device and its current (or last) key as listed by the registry.

    Attributes:
        device_id: the device.
        created_ms: when it was first registered.
        fingerprint: SHA-256 hex of its newest key.
        key_added_ms: when that key was added.
        revoked_ms: when that key was revoked, ``None`` while active.
        label: the free text given at registration (``devices add --label``).
    """

    device_id: str
    created_ms: int
    fingerprint: str | None
    key_added_ms: int | None
    revoked_ms: int | None
    label: str | None = None

    @property
    def active(self) -> bool:
        """True when the device has a key that is not revoked."""
        return self.fingerprint is not None and self.revoked_ms is None

    def as_dict(self) -> dict[str, object]:
        """JSON-ready form (API and CLI)."""
        return {
            "device_id": self.device_id,
            "label": self.label,
            "created_ms": self.created_ms,
            "fingerprint": self.fingerprint,
            "key_added_ms": self.key_added_ms,
            "revoked_ms": self.revoked_ms,
            "active": self.active,
        }


def _bump_version(conn: Connection) -> None:
    conn.execute(_version.update().where(_version.c.id == 1).values(version=_version.c.version + 1))


class DeviceRegistry:
    """Add, list and revoke device keys in the database.

    Args:
        engine: the collector database (migrated).
        clock_ms: wall clock in epoch milliseconds (injected in tests).
    """

    def __init__(self, engine: Engine, clock_ms: ClockMs = wall_clock_ms) -> None:
        self._engine = engine
        self._clock_ms = clock_ms

    def add(self, device_id: str, public_key_pem: bytes | str, *, label: str | None = None) -> DeviceInfo:
        """Register ``device_id`` with a PEM Ed25519 public key.

        A device whose key was revoked can be given a new key; a device with an active
        key cannot (revoke first).

        Raises:
            RegistryError: bad device id; InvalidPublicKeyError, DeviceExistsError.
        """
        try:
            check_device_id(device_id)
        except InvalidRecord as exc:
            raise RegistryError(str(exc)) from exc
        raw = _raw(load_public_key_pem(public_key_pem))
        now = self._clock_ms()
        with self._engine.begin() as conn:
            exists = conn.execute(sa.select(_devices.c.device_id).where(_devices.c.device_id == device_id)).first()
            if exists is None:
                conn.execute(_devices.insert().values(device_id=device_id, created_ms=now, label=label))
            active = conn.execute(
                sa.select(_keys.c.id).where(_keys.c.device_id == device_id, _keys.c.revoked_ms.is_(None))
            ).first()
            if active is not None:
                raise DeviceExistsError(f"device {device_id!r} already has an active key; revoke it first")
            try:
                conn.execute(
                    _keys.insert().values(
                        device_id=device_id, public_key=raw, fingerprint=fingerprint(raw), added_ms=now
                    )
                )
            except sa.exc.IntegrityError as exc:  # a concurrent add won the race
                raise DeviceExistsError(f"device {device_id!r} already has an active key; revoke it first") from exc
            _bump_version(conn)
        return self.get(device_id)

    def rotate(self, device_id: str, public_key_pem: bytes | str, *, overlap_ms: int) -> DeviceInfo:
        """Replace the active key of ``device_id``; the old key still verifies for ``overlap_ms``.

        A key still in the overlap window of an earlier rotation is revoked now (at most two
        keys verify at any time).

        Raises:
            InvalidPublicKeyError: not an Ed25519 PEM. DeviceNotFoundError: no active key to
            replace. RegistryError: ``overlap_ms`` negative, or the new key is the active one.
        """
        if overlap_ms < 0:
            raise RegistryError(f"overlap must not be negative, got {overlap_ms} ms")
        raw = _raw(load_public_key_pem(public_key_pem))
        now = self._clock_ms()
        with self._engine.begin() as conn:
            active = conn.execute(
                sa.select(_keys.c.id, _keys.c.public_key).where(
                    _keys.c.device_id == device_id, _keys.c.revoked_ms.is_(None)
                )
            ).first()
            if active is None:
                raise DeviceNotFoundError(f"device {device_id!r} has no active key to rotate")
            if bytes(active.public_key) == raw:
                raise RegistryError(f"the new key of {device_id!r} is its active key")
            conn.execute(
                _keys.update().where(_keys.c.device_id == device_id, _keys.c.revoked_ms > now).values(revoked_ms=now)
            )
            conn.execute(_keys.update().where(_keys.c.id == active.id).values(revoked_ms=now + overlap_ms))
            conn.execute(
                _keys.insert().values(device_id=device_id, public_key=raw, fingerprint=fingerprint(raw), added_ms=now)
            )
            _bump_version(conn)
        return self.get(device_id)

    def retiring(self, device_id: str) -> list[tuple[str, int]]:
        """Fingerprint and end of window of each old key of ``device_id`` that still verifies."""
        now = self._clock_ms()
        with self._engine.connect() as conn:
            rows = conn.execute(
                sa.select(_keys.c.fingerprint, _keys.c.revoked_ms)
                .where(_keys.c.device_id == device_id, _keys.c.revoked_ms > now)
                .order_by(_keys.c.id)
            )
            return [(str(fp), int(until)) for fp, until in rows]

    def revoke(self, device_id: str) -> DeviceInfo:
        """Revoke the active key of ``device_id`` (its batches are refused from then on).

        Raises:
            DeviceNotFoundError: the device is not registered.
        """
        now = self._clock_ms()
        with self._engine.begin() as conn:
            if conn.execute(sa.select(_devices.c.device_id).where(_devices.c.device_id == device_id)).first() is None:
                raise DeviceNotFoundError(f"device {device_id!r} is not registered")
            conn.execute(
                _keys.update()
                .where(
                    _keys.c.device_id == device_id,
                    sa.or_(_keys.c.revoked_ms.is_(None), _keys.c.revoked_ms > now),  # an overlap window ends too
                )
                .values(revoked_ms=now)
            )
            _bump_version(conn)
        return self.get(device_id)

    def list_devices(self) -> list[DeviceInfo]:
        """Every registered device with its newest key, ordered by device id."""
        with self._engine.connect() as conn:
            return self._query(conn, None)

    def get(self, device_id: str) -> DeviceInfo:
        """One device.

        Raises:
            DeviceNotFoundError: the device is not registered.
        """
        with self._engine.connect() as conn:
            found = self._query(conn, device_id)
        if not found:
            raise DeviceNotFoundError(f"device {device_id!r} is not registered")
        return found[0]

    @staticmethod
    def _query(conn: Connection, device_id: str | None) -> list[DeviceInfo]:
        newest = (
            sa.select(_keys.c.device_id, sa.func.max(_keys.c.id).label("key_id")).group_by(_keys.c.device_id).subquery()
        )
        stmt = (
            sa.select(
                _devices.c.device_id,
                _devices.c.created_ms,
                _keys.c.fingerprint,
                _keys.c.added_ms,
                _keys.c.revoked_ms,
                _devices.c.label,
            )
            .select_from(_devices)
            .outerjoin(newest, newest.c.device_id == _devices.c.device_id)
            .outerjoin(_keys, _keys.c.id == newest.c.key_id)
            .order_by(_devices.c.device_id)
        )
        if device_id is not None:
            stmt = stmt.where(_devices.c.device_id == device_id)
        return [DeviceInfo(*row) for row in conn.execute(stmt)]


class KeyCache:
    """The active device keys, as the mapping ``protocol.open_batch`` takes.

    Args:
        ttl_s: check the registry version at most this often (0 = every call to refresh).
        clock: monotonic clock (injected in tests).
        wall_ms: collector clock, epoch ms (which overlap windows are still open at a reload).
    """

    def __init__(
        self, ttl_s: float = 1.0, clock: Callable[[], float] = time.monotonic, wall_ms: ClockMs = wall_clock_ms
    ) -> None:
        self.ttl_s = ttl_s
        self._clock = clock
        self._wall_ms = wall_ms
        self.keys: dict[str, Ed25519PublicKey] = {}
        #: device id -> (old key, revoked_ms): keys in a rotation's overlap window, which
        #: verify until ``revoked_ms`` (collector clock) when the active key does not
        self.retiring: dict[str, tuple[Ed25519PublicKey, int]] = {}
        self.version: int | None = None
        self._checked_at: float | None = None
        self.reloads = 0

    def stale(self) -> bool:
        """True when the registry version is due for a check."""
        return self._checked_at is None or self._clock() - self._checked_at >= self.ttl_s

    def refresh(self, conn: Connection, *, force: bool = False) -> bool:
        """Re-read the keys if the registry changed; return True if they were reloaded.

        Without ``force`` the version is only checked when ``ttl_s`` has passed.
        """
        if not force and not self.stale():
            return False
        self._checked_at = self._clock()
        version = conn.execute(sa.select(_version.c.version).where(_version.c.id == 1)).scalar_one()
        if version == self.version:
            return False
        rows = conn.execute(sa.select(_keys.c.device_id, _keys.c.public_key).where(_keys.c.revoked_ms.is_(None)))
        self.keys = {device_id: Ed25519PublicKey.from_public_bytes(raw) for device_id, raw in rows}
        # A revoke time in the future is a rotation's overlap window (the cache compares it to
        # the message's receive time, so the window closes without a registry change).
        old = conn.execute(
            sa.select(_keys.c.device_id, _keys.c.public_key, _keys.c.revoked_ms)
            .where(_keys.c.revoked_ms > self._wall_ms())
            .order_by(_keys.c.id)
        )
        self.retiring = {}
        for device_id, raw, until in old:
            if device_id in self.keys and (device_id not in self.retiring or self.retiring[device_id][1] < until):
                self.retiring[device_id] = (Ed25519PublicKey.from_public_bytes(raw), int(until))
        self.version = version
        self.reloads += 1
        return True

    def revoked_at(self, conn: Connection, device_id: str) -> int | None:
        """When the newest key of ``device_id`` was revoked (for dead-letter details), if it was."""
        return conn.execute(
            sa.select(_keys.c.revoked_ms).where(_keys.c.device_id == device_id).order_by(_keys.c.id.desc()).limit(1)
        ).scalar()
