"""Signed receipts (``lw/v1/{device}/receipt``): what the collector has durably stored.

A receipt tells a device which of its sequence numbers the collector has committed, so the
device may forget those batches (an MQTT PUBACK is only hop-by-hop: a broker can drop a
message it acknowledged). See docs/protocol.md section 14.

Payload: a map with exactly the keys 0..5::

    {0: device_id, 1: low, 2: high, 3: [[start, end], ...], 4: issued_ms, 5: counter}

Every seq in ``low .. high`` is stored (``high = low - 1`` says "nothing contiguous yet"),
and so is every seq in each listed range. Ranges are above ``high + 1``, ascending, disjoint
and not adjacent, at most :data:`MAX_RECEIPT_RANGES` of them. ``counter`` rises strictly per
device: a device refuses a receipt whose counter is below the newest it accepted.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ._strict_cbor import decode_strict, encode_deterministic
from .cose import ALG, ALG_EDDSA, KID, decode_sign1, sign1
from .errors import DeviceMismatch, InvalidRecord, InvalidValue, LocalProtocolError, SchemaError, TopicError
from .records import MAX_SEQ, check_device_id
from .topics import TopicKind, parse_topic

__all__ = ["MAX_RECEIPT_BYTES", "MAX_RECEIPT_COUNTER", "MAX_RECEIPT_RANGES", "Receipt", "open_receipt", "seal_receipt"]

#: most stored ranges above the contiguous run one receipt lists
MAX_RECEIPT_RANGES = 32
#: a receipt is small: 32 ranges of two 64-bit integers plus the header fit in 1.5 KiB
MAX_RECEIPT_BYTES = 2048
#: largest counter (a signed 64-bit column on the collector side)
MAX_RECEIPT_COUNTER = 2**63 - 1


def _is_int(value: object) -> bool:
    return type(value) is int


@dataclass(frozen=True, slots=True)
class Receipt:
    """The collector's signed statement of which of a device's batches it has stored.

    Attributes:
        device_id: the device.
        low: first seq of the contiguous stored run (the device's first seq the collector saw,
            or lower once an earlier one arrived).
        high: every seq in ``low .. high`` is stored; ``low - 1`` when none is.
        ranges: more stored seqs above ``high + 1``: ascending, disjoint, non-adjacent
            ``(start, end)`` pairs, inclusive, at most 32 (the highest ones when there are more).
        issued_ms: collector clock at signing time (informational).
        counter: strictly increasing per device; replay protection.
    """

    device_id: str
    low: int
    high: int
    ranges: tuple[tuple[int, int], ...]
    issued_ms: int
    counter: int

    def __post_init__(self) -> None:
        check_device_id(self.device_id)
        if not _is_int(self.low) or not 1 <= self.low <= MAX_SEQ:
            raise InvalidRecord(f"receipt low {self.low!r} must be an int in 1..2**64-1")
        if not _is_int(self.high) or not self.low - 1 <= self.high <= MAX_SEQ:
            raise InvalidRecord(f"receipt high {self.high!r} must be an int in low-1..2**64-1")
        if not _is_int(self.issued_ms) or self.issued_ms < 0:
            raise InvalidRecord("receipt issued_ms must be a non-negative int")
        if not _is_int(self.counter) or not 0 < self.counter <= MAX_RECEIPT_COUNTER:
            raise InvalidRecord("receipt counter must be an int in 1..2**63-1")
        if not isinstance(self.ranges, tuple) or len(self.ranges) > MAX_RECEIPT_RANGES:
            raise InvalidRecord(f"receipt ranges must be a tuple of at most {MAX_RECEIPT_RANGES}")
        floor = self.high + 1  # the next range must start above this
        for item in self.ranges:
            if not isinstance(item, tuple) or len(item) != 2 or not all(_is_int(v) for v in item):
                raise InvalidRecord(f"receipt range {item!r:.60} must be a pair of ints")
            start, end = item
            if not floor < start <= end <= MAX_SEQ:
                raise InvalidRecord(f"receipt range {start}..{end} is not ascending, disjoint and above {floor}")
            floor = end + 1

    def covers(self, seq: int) -> bool:
        """True when the collector says ``seq`` is stored."""
        if self.low <= seq <= self.high:
            return True
        return any(start <= seq <= end for start, end in self.ranges)

    def covered(self, seqs: Sequence[int]) -> list[int]:
        """The members of ``seqs`` this receipt covers."""
        return [s for s in seqs if self.covers(s)]


def _topic_device(topic: str) -> str:
    parsed = parse_topic(topic)
    if parsed.kind is not TopicKind.RECEIPT:
        raise TopicError(f"topic {topic!r:.120} is a {parsed.kind.value} topic, expected receipt")
    return parsed.device_id


def seal_receipt(receipt: Receipt, private_key: Ed25519PrivateKey, topic: str, *, kid: str = "collector") -> bytes:
    """Sign ``receipt`` with the collector's key for ``lw/v1/{device}/receipt``."""
    try:
        device_id = _topic_device(topic)
    except TopicError as exc:
        raise LocalProtocolError(str(exc)) from exc
    if device_id != receipt.device_id:
        raise LocalProtocolError(f"topic {topic!r} is not device {receipt.device_id!r}'s receipt topic")
    payload = encode_deterministic(
        {
            0: receipt.device_id,
            1: receipt.low,
            2: receipt.high,
            3: [list(r) for r in receipt.ranges],
            4: receipt.issued_ms,
            5: receipt.counter,
        }
    )
    return sign1(payload, private_key, protected={ALG: ALG_EDDSA, KID: kid.encode()}, external_aad=topic.encode())


def open_receipt(message: bytes, topic: str, public_key: Ed25519PublicKey) -> Receipt:
    """Verify (against the collector's public key) and strictly decode a receipt.

    Checks, in order: topic shape and kind, size (before decoding), envelope, signature
    over the topic as external_aad, payload schema, payload device id = topic device.

    Raises:
        RemoteProtocolError: a typed subclass naming what was wrong (``oversized``,
            ``truncated``, ``bad_signature``, ``schema``, ``invalid_value``,
            ``device_mismatch``, ...).
    """
    device_id = _topic_device(topic)
    sign1_message = decode_sign1(message, max_size=MAX_RECEIPT_BYTES)
    sign1_message.verify(public_key, topic.encode())
    raw = decode_strict(sign1_message.payload, what="receipt payload", max_size=MAX_RECEIPT_BYTES, max_depth=3)
    if not isinstance(raw, dict) or set(raw) != {0, 1, 2, 3, 4, 5}:
        raise SchemaError("receipt payload must be a map with exactly the keys 0..5")
    if not isinstance(raw[0], str) or not all(_is_int(raw[k]) for k in (1, 2, 4, 5)):
        raise SchemaError("receipt device id must be text and low, high, issued_ms, counter integers")
    if not isinstance(raw[3], list) or not all(isinstance(r, list) and len(r) == 2 for r in raw[3]):
        raise SchemaError("receipt ranges (key 3) must be an array of [start, end] pairs")
    try:
        receipt = Receipt(raw[0], raw[1], raw[2], tuple((r[0], r[1]) for r in raw[3]), raw[4], raw[5])
    except InvalidRecord as exc:
        raise InvalidValue(f"receipt: {exc}") from exc
    if receipt.device_id != device_id:
        raise DeviceMismatch(f"receipt device {receipt.device_id!r} does not match topic device {device_id!r}")
    return receipt
