"""Signed messages on device topics: batches (uplink), device state (uplink) and
device configuration (downlink).

Every message is a tagged COSE_Sign1 whose ``external_aad`` is the UTF-8 topic, so a
message replayed onto another topic (another device, another kind) fails verification.
``kid`` is the device id for uplink messages and the collector's key id for downlink.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ._batch_codec import LIMITS, decode_batch, decode_batch_columns, encode_batch
from ._strict_cbor import decode_strict, encode_deterministic
from .cose import ALG, ALG_EDDSA, KID, MAX_MESSAGE_BYTES, Sign1Message, decode_sign1, sign1
from .errors import (
    DeviceMismatch,
    InvalidEnvelope,
    InvalidRecord,
    InvalidValue,
    LocalProtocolError,
    SchemaError,
    TopicError,
    UnknownDevice,
)
from .records import Batch, ColumnarBatch, _check_evidence, check_device_id
from .topics import Topic, TopicKind, parse_topic

__all__ = [
    "DeviceConfig",
    "DeviceState",
    "open_batch",
    "open_batch_columns",
    "open_config",
    "open_state",
    "seal_batch",
    "seal_config",
    "seal_state",
]

MAX_CONFIG_BYTES = 256 * 1024
MAX_STATE_BYTES = 16 * 1024
#: largest state connection counter (a signed 64-bit column on the collector side)
MAX_STATE_CONNECTION = 2**63 - 1


def _topic_of(topic: str, kind: TopicKind) -> Topic:
    parsed = parse_topic(topic)
    if parsed.kind is not kind:
        raise TopicError(f"topic {topic!r:.120} is a {parsed.kind.value} topic, expected {kind.value}")
    return parsed


def _local_topic(topic: str, device_id: str, kind: TopicKind) -> None:
    try:
        parsed = _topic_of(topic, kind)
    except TopicError as exc:
        raise LocalProtocolError(str(exc)) from exc
    if parsed.device_id != device_id:
        raise LocalProtocolError(f"topic {topic!r} is not device {device_id!r}'s {kind.value} topic")


def _seal(payload: bytes, key: Ed25519PrivateKey, kid: str, topic: str) -> bytes:
    return sign1(payload, key, protected={ALG: ALG_EDDSA, KID: kid.encode()}, external_aad=topic.encode())


def _kid_text(message: Sign1Message) -> str:
    kid = message.protected.get(KID)
    if not isinstance(kid, bytes):
        raise InvalidEnvelope("the protected header must carry kid (4) as a bstr")
    try:
        return kid.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidEnvelope("kid is not UTF-8") from None


def _device_public_key(keys: Mapping[str, Ed25519PublicKey], device_id: str) -> Ed25519PublicKey:
    try:
        key = keys[device_id]
    except KeyError:
        raise UnknownDevice(f"no active key for device {device_id!r}") from None
    if key is None:
        raise UnknownDevice(f"no active key for device {device_id!r}")
    return key


# ------------------------------------------------------------------ batches


def seal_batch(batch: Batch, private_key: Ed25519PrivateKey, topic: str) -> bytes:
    """Encode and sign ``batch`` for publication on ``topic`` (its device's batch topic)."""
    _local_topic(topic, batch.device_id, TopicKind.BATCH)
    message = _seal(encode_batch(batch), private_key, batch.device_id, topic)
    if len(message) > MAX_MESSAGE_BYTES:  # the payload may be up to 1 MiB, the signed message too
        raise LocalProtocolError(f"sealed batch is {len(message)} bytes, over the {MAX_MESSAGE_BYTES}-byte limit")
    return message


def open_batch(message: bytes, topic: str, keys: Mapping[str, Ed25519PublicKey]) -> Batch:
    """Verify and decode a batch received on ``topic``.

    Checks, in order: topic shape, envelope (size, tag, structure, alg), kid = topic device,
    key lookup in ``keys``, signature over the topic as external_aad, strict payload
    decoding, payload device id = topic device.

    Raises:
        RemoteProtocolError: a typed subclass naming what was wrong.
    """
    device_id, payload = _verified_batch_payload(message, topic, keys)
    return _same_device(decode_batch(payload), device_id)


def open_batch_columns(message: bytes, topic: str, keys: Mapping[str, Ed25519PublicKey]) -> ColumnarBatch:
    """:func:`open_batch` returning the fixes column by column (:class:`~protocol.records.ColumnarBatch`):
    the same checks, in the same order, with the same errors; for a store that writes columns."""
    device_id, payload = _verified_batch_payload(message, topic, keys)
    return _same_device(decode_batch_columns(payload), device_id)


def _verified_batch_payload(message: bytes, topic: str, keys: Mapping[str, Ed25519PublicKey]) -> tuple[str, bytes]:
    """The topic's device id and the payload whose signature verified."""
    parsed = _topic_of(topic, TopicKind.BATCH)
    sign1_message = decode_sign1(message)
    kid = _kid_text(sign1_message)
    if kid != parsed.device_id:
        raise DeviceMismatch(f"kid {kid!r:.80} does not match topic device {parsed.device_id!r}")
    sign1_message.verify(_device_public_key(keys, kid), topic.encode())
    return parsed.device_id, sign1_message.payload


_B = TypeVar("_B", Batch, ColumnarBatch)


def _same_device(batch: _B, device_id: str) -> _B:
    if batch.device_id != device_id:
        raise DeviceMismatch(f"payload device {batch.device_id!r} does not match topic device {device_id!r}")
    return batch


# ------------------------------------------------------------------ device state


@dataclass(frozen=True, slots=True)
class DeviceState:
    """Birth message (online) and Last Will (offline) on ``lw/v1/{device}/state``.

    Attributes:
        device_id: the device.
        online: True in the birth message, False in the Last Will and on clean shutdown.
        time_ms: device clock when the message was made.
        boot_id: the agent run this message belongs to.
        versions: software versions (``{"agent": "0.1.0", ...}``).
        counters: agent counters at the time of the message.
        connection: the device's connection counter (payload key 6): strictly increasing per
            device across boots, one value per MQTT connection, shared by that connection's
            birth message, Last Will and clean-shutdown state. ``None`` in a legacy state
            message (keys 0..5 only). See docs/protocol.md section 5.
    """

    device_id: str
    online: bool
    time_ms: int
    boot_id: bytes
    versions: Mapping[str, str] = field(default_factory=dict)
    counters: Mapping[str, int] = field(default_factory=dict)
    connection: int | None = None

    def __post_init__(self) -> None:
        check_device_id(self.device_id)
        if not isinstance(self.online, bool):
            raise InvalidRecord("online must be a bool")
        if not isinstance(self.time_ms, int) or self.time_ms < 0:
            raise InvalidRecord("time_ms must be a non-negative int")
        if not isinstance(self.boot_id, bytes) or len(self.boot_id) != 16:
            raise InvalidRecord("boot_id must be 16 bytes")
        if not all(isinstance(k, str) and isinstance(v, str) and len(v) <= 64 for k, v in self.versions.items()):
            raise InvalidRecord("versions must map text to text")
        if not all(type(k) is str and type(v) is int for k, v in self.counters.items()):
            raise InvalidRecord("counters must map text to int")
        if len(self.versions) > 32 or len(self.counters) > LIMITS.MAX_STATE_COUNTERS:
            raise InvalidRecord("too many versions or counters")
        if self.connection is not None and (
            type(self.connection) is not int or not 0 < self.connection <= MAX_STATE_CONNECTION
        ):
            raise InvalidRecord("connection must be an int in 1..2**63-1")


def seal_state(state: DeviceState, private_key: Ed25519PrivateKey, topic: str) -> bytes:
    """Sign a device state message for ``lw/v1/{device}/state``."""
    _local_topic(topic, state.device_id, TopicKind.STATE)
    fields: dict[int, Any] = {
        0: state.device_id,
        1: state.online,
        2: state.time_ms,
        3: state.boot_id,
        4: dict(state.versions),
        5: dict(state.counters),
    }
    if state.connection is not None:
        fields[6] = state.connection
    return _seal(encode_deterministic(fields), private_key, state.device_id, topic)


def open_state(message: bytes, topic: str, keys: Mapping[str, Ed25519PublicKey]) -> DeviceState:
    """Verify and decode a device state message received on ``topic``."""
    parsed = _topic_of(topic, TopicKind.STATE)
    sign1_message = decode_sign1(message, max_size=MAX_STATE_BYTES)
    kid = _kid_text(sign1_message)
    if kid != parsed.device_id:
        raise DeviceMismatch(f"kid {kid!r:.80} does not match topic device {parsed.device_id!r}")
    sign1_message.verify(_device_public_key(keys, kid), topic.encode())
    raw = decode_strict(sign1_message.payload, what="state payload", max_size=MAX_STATE_BYTES, max_depth=3)
    if not isinstance(raw, dict) or set(raw) not in ({0, 1, 2, 3, 4, 5}, {0, 1, 2, 3, 4, 5, 6}):
        raise SchemaError("state payload must be a map with keys 0..5 (legacy) or 0..6")
    if not isinstance(raw[4], dict) or not isinstance(raw[5], dict):
        raise SchemaError("state versions and counters must be maps")
    if 6 in raw and type(raw[6]) is not int:
        raise SchemaError("state connection (key 6) must be an integer")
    try:
        state = DeviceState(raw[0], raw[1], raw[2], raw[3], raw[4], raw[5], raw.get(6))
    except (InvalidRecord, TypeError, AttributeError) as exc:
        raise InvalidValue(f"state: {exc}") from exc
    if state.device_id != parsed.device_id:
        raise DeviceMismatch(f"state device {state.device_id!r} does not match topic device {parsed.device_id!r}")
    return state


# ------------------------------------------------------------------ downlink configuration


@dataclass(frozen=True, slots=True)
class DeviceConfig:
    """A configuration pushed by the collector on ``lw/v1/{device}/config``.

    Attributes:
        device_id: the device this configuration is for.
        version: strictly increasing per device; the agent refuses anything not newer.
        issued_ms: collector clock at signing time.
        body: JSON-like map; known sections are ``markets``, ``regions`` and ``rules``
            (see docs/protocol.md); the agent validates each section it applies.
    """

    device_id: str
    version: int
    issued_ms: int
    body: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_device_id(self.device_id)
        if not isinstance(self.version, int) or isinstance(self.version, bool) or not 0 < self.version < 2**63:
            raise InvalidRecord("config version must be a positive 63-bit int")
        if not isinstance(self.issued_ms, int) or self.issued_ms < 0:
            raise InvalidRecord("issued_ms must be a non-negative int")
        if not isinstance(self.body, Mapping):
            raise InvalidRecord("config body must be a map")
        # Market lists can be long: allow many items but keep the depth bound.
        _check_evidence(self.body, 0, "config body", [200_000])


def seal_config(config: DeviceConfig, private_key: Ed25519PrivateKey, topic: str, *, kid: str = "collector") -> bytes:
    """Sign a device configuration with the collector's key."""
    _local_topic(topic, config.device_id, TopicKind.CONFIG)
    payload = encode_deterministic({0: config.device_id, 1: config.version, 2: config.issued_ms, 3: dict(config.body)})
    if len(payload) > MAX_CONFIG_BYTES:
        raise LocalProtocolError(f"config is {len(payload)} bytes, over {MAX_CONFIG_BYTES}")
    return _seal(payload, private_key, kid, topic)


def open_config(message: bytes, topic: str, public_key: Ed25519PublicKey) -> DeviceConfig:
    """Verify (against the collector's public key) and decode a configuration message."""
    parsed = _topic_of(topic, TopicKind.CONFIG)
    sign1_message = decode_sign1(message, max_size=MAX_CONFIG_BYTES)
    sign1_message.verify(public_key, topic.encode())
    raw = decode_strict(sign1_message.payload, what="config payload", max_size=MAX_CONFIG_BYTES, max_depth=8)
    if not isinstance(raw, dict) or set(raw) != {0, 1, 2, 3} or not isinstance(raw[3], dict):
        raise SchemaError("config payload must be a map with keys 0..3 and a map body")
    try:
        config = DeviceConfig(raw[0], raw[1], raw[2], raw[3])
    except InvalidRecord as exc:
        raise InvalidValue(f"config: {exc}") from exc
    if config.device_id != parsed.device_id:
        raise DeviceMismatch(f"config device {config.device_id!r} does not match topic device {parsed.device_id!r}")
    return config
