"""Strict CBOR decoding of hostile bytes.

cbor2 is lenient by default: it ignores trailing bytes, decodes regex/MIME/shared-reference
tags and bignums, and accepts indefinite lengths. Here the size is checked before any
decoding, every semantic tag is refused (the COSE tag 18 is stripped by the caller), and each
cbor2 failure is translated into one typed error of :mod:`protocol.errors`.
"""

from __future__ import annotations

import io
from typing import Any

import cbor2

from .errors import (
    DepthExceeded,
    DuplicateKey,
    ForbiddenTag,
    IndefiniteLength,
    MalformedCBOR,
    OversizedMessage,
    TrailingBytes,
    TruncatedMessage,
)

__all__ = ["MAX_DEPTH", "decode_strict", "encode", "encode_deterministic"]

MAX_DEPTH = 8


class _TagRefusedError(Exception):
    """Raised inside cbor2 by the tag hooks; translated to ForbiddenTag."""


def _refuse(decoder: object, *_: object) -> object:
    raise _TagRefusedError("CBOR tags are not allowed here")


# cbor2 decodes well-known tags itself (tag_hook sees only unknown ones), so every
# tag number it might know is overridden with a refusal.
_REFUSE_ALL = dict.fromkeys(range(65536), _refuse)
_REFUSE_ALL[55799] = _refuse


def encode(value: Any) -> bytes:
    """Encode with definite lengths and map keys in insertion order."""
    return cbor2.dumps(value)


def encode_deterministic(value: Any) -> bytes:
    """Encode a message payload in CBOR deterministic form (RFC 8949 section 4.2.1).

    Shortest heads, map keys sorted by their encoded bytes, and every float in the
    shortest of half/single/double precision that keeps its value exactly (50.5 takes
    3 bytes, 12.6 still 9). Decoders must accept every float width anyway.
    """
    return cbor2.dumps(value, canonical=True)


def decode_strict(data: bytes, *, what: str, max_size: int, max_depth: int = MAX_DEPTH) -> Any:
    """Decode exactly one CBOR item from ``data`` or raise a typed RemoteProtocolError.

    Args:
        data: the bytes to decode.
        what: name of the input for error messages (``"batch payload"``).
        max_size: limit checked before decoding.
        max_depth: maximum container nesting.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise MalformedCBOR(f"{what} must be bytes, got {type(data).__name__}")
    if len(data) > max_size:
        raise OversizedMessage(f"{what} is {len(data)} bytes, over the {max_size}-byte limit")
    if len(data) == 0:
        raise TruncatedMessage(f"{what} is empty")
    fp = io.BytesIO(data)
    decoder = cbor2.CBORDecoder(
        fp,
        tag_hook=_refuse,
        semantic_decoders=_REFUSE_ALL,
        allow_indefinite=False,
        allow_duplicate_keys=False,
        max_depth=max_depth,
    )
    try:
        value = decoder.decode()
    except cbor2.CBORDecodeEOF as exc:
        raise TruncatedMessage(f"{what} ends in the middle of a CBOR item") from exc
    except (cbor2.CBORDecodeError, RecursionError, MemoryError, OverflowError, ValueError) as exc:
        raise _translate(exc, what, max_depth) from exc
    if fp.tell() != len(data):
        raise TrailingBytes(f"{what} has {len(data) - fp.tell()} bytes after its CBOR item")
    return value


def _translate(exc: BaseException, what: str, max_depth: int) -> Exception:
    chain: list[BaseException] = []
    cur: BaseException | None = exc
    while cur is not None and len(chain) < 8:
        chain.append(cur)
        cur = cur.__cause__ or cur.__context__
    if any(isinstance(e, _TagRefusedError) for e in chain):
        return ForbiddenTag(f"{what} contains a CBOR tag; this schema allows none there")
    text = " ".join(str(e) for e in chain).lower()
    if "indefinite" in text:
        return IndefiniteLength(f"{what} uses an indefinite-length item")
    if "duplicate" in text:
        return DuplicateKey(f"{what} repeats a map key")
    if "depth" in text or isinstance(exc, RecursionError):
        return DepthExceeded(f"{what} nests containers deeper than {max_depth}")
    if "premature end" in text or "eof" in text or "truncated" in text or "end of stream" in text:
        return TruncatedMessage(f"{what} ends in the middle of a CBOR item")
    return MalformedCBOR(f"{what} is not well-formed CBOR: {exc}")
