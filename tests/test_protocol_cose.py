"""The generic COSE_Sign1 layer: the COSE WG Ed25519 example, Sig_structure, profile checks."""

from __future__ import annotations

import cbor2
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from protocol import cose
from protocol.errors import (
    BadSignature,
    DetachedPayload,
    InvalidEnvelope,
    LocalProtocolError,
    MisplacedHeader,
    OversizedMessage,
    UnsupportedAlgorithm,
)

# cose-wg/Examples eddsa-examples/eddsa-sig-01.json (RFC 8032 test 1 key).
WG_SEED = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
WG_PUBLIC = bytes.fromhex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")
WG_PAYLOAD = b"This is the content."
WG_MESSAGE = bytes.fromhex(
    "D28445A201270300A10442313154546869732069732074686520636F6E74656E742E5840"
    "7142FD2FF96D56DB85BEE905A76BA1D0B7321A95C8C4D3607C5781932B7AFB87"
    "11497DFA751BF40B58B3BCC32300B1487F3DB34085EEF013BF08F4A44D6FEF0D"
)
# The example's ToBeSigned: ["Signature1", h'A201270300', h'', h'5468...2E'].
WG_TO_BE_SIGNED = bytes.fromhex("846A5369676E61747572653145A2012703004054546869732069732074686520636F6E74656E742E")


def wg_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(WG_SEED)


def test_sign1_reproduces_the_cose_wg_ed25519_example_byte_for_byte() -> None:
    message = cose.sign1(WG_PAYLOAD, wg_key(), protected={1: -8, 3: 0}, unprotected={4: b"11"})
    assert message == WG_MESSAGE


def test_verify1_accepts_the_cose_wg_example_and_returns_its_payload() -> None:
    assert cose.verify1(WG_MESSAGE, wg_key().public_key()) == WG_PAYLOAD


def test_example_public_key_is_the_rfc8032_one() -> None:
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    assert wg_key().public_key().public_bytes(Encoding.Raw, PublicFormat.Raw) == WG_PUBLIC


def test_sig_structure_matches_rfc9052_tobesigned() -> None:
    assert cose.sig_structure(bytes.fromhex("A201270300"), WG_PAYLOAD) == WG_TO_BE_SIGNED


def test_sig_structure_carries_external_aad_as_third_item() -> None:
    encoded = cose.sig_structure(b"\xa1\x01\x27", b"p", b"lw/v1/a/batch")
    assert cbor2.loads(encoded) == ["Signature1", b"\xa1\x01\x27", b"lw/v1/a/batch", b"p"]
    assert encoded.hex() == "846a5369676e617475726531" + "43a10127" + "4d" + b"lw/v1/a/batch".hex() + "4170"


def test_decode_sign1_exposes_headers_without_verifying() -> None:
    decoded = cose.decode_sign1(WG_MESSAGE)
    assert decoded.protected == {1: -8, 3: 0}
    assert decoded.protected_bytes == bytes.fromhex("A201270300")
    assert decoded.unprotected == {4: b"11"}
    assert decoded.kid == b"11"
    assert decoded.payload == WG_PAYLOAD


def test_verify1_with_other_key_is_bad_signature() -> None:
    with pytest.raises(BadSignature, match="does not verify"):
        cose.verify1(WG_MESSAGE, Ed25519PrivateKey.from_private_bytes(bytes(32)).public_key())


def test_verify1_with_other_external_aad_is_bad_signature() -> None:
    message = cose.sign1(b"x", wg_key(), protected={1: -8}, external_aad=b"lw/v1/a/batch")
    assert cose.verify1(message, wg_key().public_key(), external_aad=b"lw/v1/a/batch") == b"x"
    with pytest.raises(BadSignature):
        cose.verify1(message, wg_key().public_key(), external_aad=b"lw/v1/b/batch")


def test_flipping_any_signature_bit_is_bad_signature() -> None:
    for bit in (0, 7, 200, 511):
        forged = bytearray(WG_MESSAGE)
        forged[-64 + bit // 8] ^= 1 << (bit % 8)
        with pytest.raises(BadSignature):
            cose.verify1(bytes(forged), wg_key().public_key())


def test_changed_payload_is_bad_signature() -> None:
    forged = WG_MESSAGE.replace(b"This is", b"That is")
    with pytest.raises(BadSignature):
        cose.verify1(forged, wg_key().public_key())


def _envelope(protected: bytes, unprotected: dict[int, object], payload: object, signature: bytes = bytes(64)) -> bytes:
    return b"\xd2" + cbor2.dumps([protected, unprotected, payload, signature])


def test_wrong_alg_in_protected_header_is_unsupported_algorithm() -> None:
    es256 = cbor2.dumps({1: -7})
    with pytest.raises(UnsupportedAlgorithm, match="-7"):
        cose.verify1(_envelope(es256, {}, b"p"), wg_key().public_key())


def test_missing_alg_is_unsupported_algorithm() -> None:
    with pytest.raises(UnsupportedAlgorithm):
        cose.verify1(_envelope(b"", {}, b"p"), wg_key().public_key())


def test_alg_only_in_unprotected_header_is_misplaced_header() -> None:
    with pytest.raises(MisplacedHeader, match="protected"):
        cose.verify1(_envelope(b"", {1: -8}, b"p"), wg_key().public_key())


def test_label_in_both_buckets_is_misplaced_header() -> None:
    with pytest.raises(MisplacedHeader, match="both"):
        cose.verify1(_envelope(cbor2.dumps({1: -8, 4: b"a"}), {4: b"b"}, b"p"), wg_key().public_key())


def test_detached_payload_is_refused() -> None:
    with pytest.raises(DetachedPayload, match="detached"):
        cose.verify1(_envelope(cbor2.dumps({1: -8}), {}, None), wg_key().public_key())


def test_untagged_sign1_is_invalid_envelope() -> None:
    with pytest.raises(InvalidEnvelope, match="tag 18"):
        cose.verify1(WG_MESSAGE[1:], wg_key().public_key())


def test_cose_sign_tag_98_is_invalid_envelope() -> None:
    with pytest.raises(InvalidEnvelope, match="tag 18"):
        cose.verify1(b"\xd8\x62" + WG_MESSAGE[1:], wg_key().public_key())


@pytest.mark.parametrize(
    ("body", "match"),
    [
        (cbor2.dumps([b"", {}, b"p"]), "array of 4"),
        (cbor2.dumps({1: 2}), "array of 4"),
        (cbor2.dumps(["a1", {}, b"p", bytes(64)]), "protected header must be a bstr"),
        (cbor2.dumps([b"", [], b"p", bytes(64)]), "unprotected header must be a map"),
        (cbor2.dumps([cbor2.dumps({1: -8}), {}, "text", bytes(64)]), "payload must be a bstr"),
        (cbor2.dumps([cbor2.dumps({1: -8}), {}, b"p", bytes(63)]), "64-byte"),
        (cbor2.dumps([cbor2.dumps([1, -8]), {}, b"p", bytes(64)]), "non-empty map"),
        (cbor2.dumps([cbor2.dumps({}), {}, b"p", bytes(64)]), "non-empty map"),
    ],
)
def test_malformed_envelopes_are_invalid_envelope(body: bytes, match: str) -> None:
    with pytest.raises(InvalidEnvelope, match=match):
        cose.decode_sign1(b"\xd2" + body)


def test_oversized_message_is_refused_before_decoding() -> None:
    with pytest.raises(OversizedMessage, match="over the 1048576-byte limit"):
        cose.decode_sign1(b"\xd2" + b"\x00" * cose.MAX_MESSAGE_BYTES)


def test_non_bytes_message_is_invalid_envelope() -> None:
    with pytest.raises(InvalidEnvelope, match="must be bytes"):
        cose.decode_sign1("D284")  # type: ignore[arg-type]


def test_sign1_refuses_a_protected_header_without_eddsa() -> None:
    with pytest.raises(LocalProtocolError, match="EdDSA"):
        cose.sign1(b"p", wg_key(), protected={1: -7})


def test_sign1_refuses_a_non_ed25519_key() -> None:
    with pytest.raises(LocalProtocolError, match="Ed25519PrivateKey"):
        cose.sign1(b"p", object(), protected={1: -8})  # type: ignore[arg-type]


def test_verify_refuses_a_non_ed25519_key() -> None:
    with pytest.raises(LocalProtocolError, match="Ed25519PublicKey"):
        cose.verify1(WG_MESSAGE, object())  # type: ignore[arg-type]
