"""COSE_Sign1 (RFC 9052, section 4.2) with EdDSA over Ed25519 (alg -8, RFC 9053).

Wire form: ``18([protected: bstr, unprotected: map, payload: bstr, signature: bstr])``.
The signature covers the Sig_structure
``["Signature1", protected, external_aad, payload]`` encoded as CBOR. The algorithm is
taken from the *protected* header only, and only EdDSA is accepted, so a forged
unprotected header cannot downgrade verification.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ._strict_cbor import decode_strict, encode
from .errors import (
    BadSignature,
    DetachedPayload,
    InvalidEnvelope,
    LocalProtocolError,
    MisplacedHeader,
    OversizedMessage,
    UnsupportedAlgorithm,
)

__all__ = [
    "ALG",
    "ALG_EDDSA",
    "COSE_SIGN1_TAG",
    "KID",
    "MAX_MESSAGE_BYTES",
    "Sign1Message",
    "decode_sign1",
    "sig_structure",
    "sign1",
    "verify1",
]

COSE_SIGN1_TAG = 18
ALG = 1  # header label: algorithm
CONTENT_TYPE = 3
KID = 4  # header label: key identifier
ALG_EDDSA = -8
MAX_MESSAGE_BYTES = 1 << 20
_SIGN1_PREFIX = b"\xd2"  # tag 18, one-byte head
_MAX_HEADER_BYTES = 4096


def sig_structure(protected: bytes, payload: bytes, external_aad: bytes = b"") -> bytes:
    """Return the CBOR-encoded Sig_structure that a COSE_Sign1 signature covers."""
    return encode(["Signature1", protected, external_aad, payload])


def _encode_protected(protected: Mapping[Any, Any]) -> bytes:
    # RFC 9052 section 3: an empty protected map is sent as a zero-length bstr.
    return encode(dict(protected)) if protected else b""


def sign1(
    payload: bytes,
    private_key: Ed25519PrivateKey,
    *,
    protected: dict[Any, Any],
    unprotected: dict[Any, Any] | None = None,
    external_aad: bytes = b"",
) -> bytes:
    """Sign ``payload`` and return a tagged COSE_Sign1 message.

    Args:
        payload: the bytes to carry (attached, not detached).
        private_key: an Ed25519 private key.
        protected: protected header map; must contain ``{1: -8}`` (alg EdDSA).
        unprotected: unprotected header map.
        external_aad: application data bound into the signature but not sent.

    Raises:
        LocalProtocolError: on a wrong key type or a protected header without alg -8.
    """
    if not isinstance(private_key, Ed25519PrivateKey):
        raise LocalProtocolError(f"sign1 needs an Ed25519PrivateKey, got {type(private_key).__name__}")
    if protected.get(ALG) != ALG_EDDSA:
        raise LocalProtocolError("the protected header must carry alg (1) = EdDSA (-8)")
    if not isinstance(payload, bytes) or not isinstance(external_aad, bytes):
        raise LocalProtocolError("payload and external_aad must be bytes")
    body_protected = _encode_protected(protected)
    signature = private_key.sign(sig_structure(body_protected, payload, external_aad))
    return _SIGN1_PREFIX + encode([body_protected, dict(unprotected or {}), payload, signature])


class Sign1Message:
    """A decoded, not yet verified COSE_Sign1 message."""

    __slots__ = ("payload", "protected", "protected_bytes", "signature", "unprotected")

    def __init__(
        self,
        protected_bytes: bytes,
        protected: dict[Any, Any],
        unprotected: dict[Any, Any],
        payload: bytes,
        signature: bytes,
    ) -> None:
        self.protected_bytes = protected_bytes
        self.protected = protected
        self.unprotected = unprotected
        self.payload = payload
        self.signature = signature

    @property
    def kid(self) -> bytes | None:
        """The key id from the protected header (preferred) or the unprotected one."""
        kid = self.protected.get(KID, self.unprotected.get(KID))
        return kid if isinstance(kid, bytes) else None

    def verify(self, public_key: Ed25519PublicKey, external_aad: bytes = b"") -> bytes:
        """Check the signature; return the payload or raise :class:`BadSignature`."""
        if not isinstance(public_key, Ed25519PublicKey):
            raise LocalProtocolError(f"verify needs an Ed25519PublicKey, got {type(public_key).__name__}")
        try:
            public_key.verify(self.signature, sig_structure(self.protected_bytes, self.payload, external_aad))
        except InvalidSignature:
            raise BadSignature("COSE_Sign1 signature does not verify") from None
        return self.payload


# radon grade D by design: RFC 9052's structure checked step by step in wire order (tag,
# array, buckets, alg placement, payload, signature), each refusal typed and named; the
# order is the reading guide, so it stays one function.
def decode_sign1(message: bytes, *, max_size: int = MAX_MESSAGE_BYTES) -> Sign1Message:
    """Strictly decode a tagged COSE_Sign1 message without verifying it.

    Raises:
        RemoteProtocolError: a typed subclass for each way the bytes can be wrong.
    """
    if isinstance(message, (bytearray, memoryview)):
        message = bytes(message)
    if not isinstance(message, bytes):
        raise InvalidEnvelope(f"message must be bytes, got {type(message).__name__}")
    if len(message) > max_size:
        raise OversizedMessage(f"message is {len(message)} bytes, over the {max_size}-byte limit")
    if not message.startswith(_SIGN1_PREFIX):
        raise InvalidEnvelope("message does not start with COSE_Sign1 tag 18 (0xD2)")
    body = decode_strict(message[1:], what="COSE_Sign1 body", max_size=max_size, max_depth=4)
    if not isinstance(body, list) or len(body) != 4:
        raise InvalidEnvelope("COSE_Sign1 must be an array of 4 items")
    protected_bytes, unprotected, payload, signature = body
    if not isinstance(protected_bytes, bytes) or len(protected_bytes) > _MAX_HEADER_BYTES:
        raise InvalidEnvelope("protected header must be a bstr of at most 4096 bytes")
    if not isinstance(unprotected, dict):
        raise InvalidEnvelope("unprotected header must be a map")
    if payload is None:
        raise DetachedPayload("COSE_Sign1 payload is nil (detached); this profile requires it attached")
    if not isinstance(payload, bytes):
        raise InvalidEnvelope("payload must be a bstr")
    if not isinstance(signature, bytes) or len(signature) != 64:
        raise InvalidEnvelope("an Ed25519 signature must be a 64-byte bstr")
    if protected_bytes:
        protected = decode_strict(protected_bytes, what="protected header", max_size=_MAX_HEADER_BYTES, max_depth=2)
        if not isinstance(protected, dict) or not protected:
            raise InvalidEnvelope("protected header must encode a non-empty map")
    else:
        protected = {}
    if set(protected) & set(unprotected):
        raise MisplacedHeader("a header label appears in both protected and unprotected buckets")
    if ALG in unprotected:
        raise MisplacedHeader("alg (1) must be in the protected header, found it in the unprotected one")
    alg = protected.get(ALG)
    if alg != ALG_EDDSA or isinstance(alg, bool):
        raise UnsupportedAlgorithm(f"alg {alg!r:.40} is not EdDSA (-8)")
    return Sign1Message(protected_bytes, protected, unprotected, payload, signature)


def verify1(message: bytes, public_key: Ed25519PublicKey, *, external_aad: bytes = b"") -> bytes:
    """Verify a tagged COSE_Sign1 message and return its payload.

    Raises:
        RemoteProtocolError: malformed envelope, wrong algorithm or bad signature.
    """
    return decode_sign1(message).verify(public_key, external_aad)
