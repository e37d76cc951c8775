"""Strict CBOR decoding of hostile bytes.

cbor2 is lenient by default: it ignores trailing bytes, decodes regex/MIME/shared-reference
tags and bignums, and accepts indefinite lengths. Here the size is checked before any
decoding, every semantic tag is refused (the COSE tag 18 is stripped by the caller), and each
cbor2 failure is translated into one typed error of :mod:`protocol.errors`.

Two cbor2 lines are supported. cbor2 6 (a Rust extension) enforces every rule itself
(``semantic_decoders``, ``allow_indefinite``, ``allow_duplicate_keys``, ``max_depth``).
cbor2 5.6+ (the only line with a pure-Python wheel, so the one on 32-bit ARM boxes) has none
of these options: there the bytes are first walked by :func:`_check_well_formed`, a
head-by-head scan that enforces the same rules without building any object, and only bytes
that pass are handed to cbor2. Both paths raise the same typed errors.
"""

from __future__ import annotations

import functools
import io
from dataclasses import dataclass
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


@functools.cache
def _refuse_all() -> dict[int, Any]:
    """The ``semantic_decoders`` table that refuses every tag cbor2 6 knows.

    cbor2 decodes well-known tags itself (tag_hook sees only unknown ones), so every tag
    number it might know is overridden with a refusal. Built on first use: the table holds
    65,537 entries (about 5 MiB), which an agent that never decodes never pays for.
    """
    table: dict[int, Any] = dict.fromkeys(range(65536), _refuse)
    table[55799] = _refuse
    return table


def _native_strictness_available() -> bool:
    """Whether this cbor2 enforces the strict options itself (cbor2 6 does, 5.x does not)."""
    try:
        cbor2.CBORDecoder(
            io.BytesIO(b"\x00"),
            semantic_decoders={},
            allow_indefinite=False,
            allow_duplicate_keys=False,
            max_depth=1,
        )
    except TypeError:
        return False
    return True


#: True on cbor2 6; False on cbor2 5.x, where :func:`_check_well_formed` runs first.
NATIVE_STRICTNESS = _native_strictness_available()


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
    if NATIVE_STRICTNESS:
        decoder = cbor2.CBORDecoder(
            fp,
            tag_hook=_refuse,
            semantic_decoders=_refuse_all(),
            allow_indefinite=False,
            allow_duplicate_keys=False,
            max_depth=max_depth,
        )
    else:
        end, simple_values = _check_well_formed(bytes(data), what, max_depth)
        if end != len(data):
            raise TrailingBytes(f"{what} has {len(data) - end} bytes after its CBOR item")
        decoder = cbor2.CBORDecoder(fp, tag_hook=_refuse)
    try:
        value = decoder.decode()
        if not NATIVE_STRICTNESS and simple_values:
            value = _opaque_simple_values(value)
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


# ---------------------------------------------------------------- the scan for cbor2 5.x

_MAJOR_BYTES, _MAJOR_TEXT, _MAJOR_ARRAY, _MAJOR_MAP, _MAJOR_TAG, _MAJOR_SIMPLE = 2, 3, 4, 5, 6, 7


class _Container:
    """One open array, map or tag during the scan (private, mutable)."""

    __slots__ = ("is_tag", "key", "keys", "left")

    def __init__(self, items: int, major: int) -> None:
        self.left = items  # items still to come; in a map, an even count means a key is next
        self.is_tag = major == _MAJOR_TAG
        self.keys: set[object] | None = set() if major == _MAJOR_MAP else None
        self.key: bytes | None = None  # the encoded key whose value is being read


@dataclass(frozen=True, slots=True)
class SimpleValue:
    """An unassigned CBOR simple value (RFC 8949 section 3.3) as the cbor2 5.x path returns it.

    cbor2 5.x returns these as a one-item tuple, which a schema would take for an array;
    this type is a leaf that every schema refuses, as cbor2 6's ``CBORSimpleValue`` is.
    """

    value: int


def _opaque_simple_values(value: Any) -> Any:
    """``value`` with each cbor2 5.x simple value (a tuple subclass) replaced by :class:`SimpleValue`."""
    if isinstance(value, cbor2.CBORSimpleValue):
        return SimpleValue(int(value.value))
    if isinstance(value, list):
        return [_opaque_simple_values(v) for v in value]
    if isinstance(value, dict):
        return {_opaque_simple_values(k): _opaque_simple_values(v) for k, v in value.items()}
    return value


def _check_well_formed(data: bytes, what: str, max_depth: int) -> tuple[int, bool]:
    """Walk the first CBOR item in ``data`` head by head; return where it ends, and whether
    it holds an unassigned simple value.

    Enforces what cbor2 6 enforces with the strict options, and reports the first fault in
    the order cbor2 6 meets it: definite lengths only; at most ``max_depth`` nested
    containers (a tag counts as one); no tag (refused once its content is read); no repeated
    map key (keys compared as decoded values, when the key's value is complete); valid UTF-8
    text; no reserved or stray heads. Declared lengths are only compared with the bytes
    present, never allocated.

    Raises:
        RemoteProtocolError: the typed error cbor2 6 gives for the same bytes.
    """
    size = len(data)
    pos = 0
    simple_values = False
    stack: list[_Container] = []
    while True:
        if pos >= size:
            raise TruncatedMessage(f"{what} ends in the middle of a CBOR item")
        start = pos
        head = data[pos]
        major, info = head >> 5, head & 0x1F
        pos += 1
        if info < 24:
            arg = info
        elif info <= 27:
            width = 1 << (info - 24)
            if pos + width > size:
                raise TruncatedMessage(f"{what} ends in the middle of a CBOR item")
            arg = int.from_bytes(data[pos : pos + width], "big")
            pos += width
        elif info == 31 and major != _MAJOR_SIMPLE:
            raise IndefiniteLength(f"{what} uses an indefinite-length item")
        else:  # reserved additional information 28..30, or a break outside an indefinite item
            raise MalformedCBOR(f"{what} is not well-formed CBOR: invalid head byte 0x{head:02x} at offset {start}")
        if major in (_MAJOR_BYTES, _MAJOR_TEXT):
            if pos + arg > size:
                raise TruncatedMessage(f"{what} ends in the middle of a CBOR item")
            if major == _MAJOR_TEXT:
                try:
                    data[pos : pos + arg].decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise MalformedCBOR(f"{what} is not well-formed CBOR: text is not UTF-8 ({exc})") from exc
            pos += arg
        elif major in (_MAJOR_ARRAY, _MAJOR_MAP, _MAJOR_TAG):
            if len(stack) >= max_depth:
                raise DepthExceeded(f"{what} nests containers deeper than {max_depth}")
            items = 1 if major == _MAJOR_TAG else arg * 2 if major == _MAJOR_MAP else arg
            if items:
                stack.append(_Container(items, major))
                continue
        elif major == _MAJOR_SIMPLE and info == 24 and arg < 32:
            raise MalformedCBOR(f"{what} is not well-formed CBOR: simple value {arg} in a two-byte head")
        elif major == _MAJOR_SIMPLE and (info < 20 or info == 24):
            simple_values = True
        # One item is complete, data[start:pos] (start < 0: a container that just closed).
        while stack:
            top = stack[-1]
            if top.keys is not None:
                if top.left % 2 == 0:
                    top.key = data[start:pos] if start >= 0 else None
                elif top.key is not None:
                    _add_key(top.keys, top.key, what)
            top.left -= 1
            if top.left:
                break
            if top.is_tag:
                raise ForbiddenTag(f"{what} contains a CBOR tag; this schema allows none there")
            stack.pop()
            start = -1
        else:
            return pos, simple_values


def _add_key(keys: set[object], encoded: bytes, what: str) -> None:
    """Record one scalar map key; a key equal to an earlier one of the same map is an error."""
    key: object = cbor2.loads(encoded)
    try:
        seen = key in keys
    except TypeError:  # an empty array or map as key: not hashable, the schema rejects it
        return
    if seen:
        raise DuplicateKey(f"{what} repeats a map key")
    keys.add(key)
