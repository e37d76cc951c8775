"""Independent verification: "any third-party COSE library must verify it".

One check uses pycose; the other rebuilds the RFC 9052 Sig_structure by hand with cbor2
and verifies with cryptography, sharing no code with protocol/cose.py. Both also go the
other way: a message pycose signs opens with protocol.open_batch.
"""

from __future__ import annotations

import cbor2
import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from pycose.algorithms import EdDSA
from pycose.headers import KID, Algorithm
from pycose.keys.curves import Ed25519
from pycose.keys.okp import OKPKey
from pycose.messages.sign1message import Sign1Message

import protocol
from protocol import batch_topic, open_batch, seal_batch
from protocol.examples import EXAMPLE_DEVICE, EXAMPLE_KEY_SEED, example_key, minute_batch, tiny_batch

TOPIC = batch_topic(EXAMPLE_DEVICE)
PUBLIC_RAW = example_key().public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def pycose_decode(message: bytes) -> Sign1Message:
    """Sign1Message.decode, minus its list check that cbor2 6 breaks.

    pycose 1.1 tests ``isinstance(value, list)`` (and ``type(uhdr) is dict``) but cbor2 6
    hands tag contents over as a tuple with frozendict maps, so ``Sign1Message.decode``
    refuses every message, the COSE WG examples included (TimothyClaeys/pycose#141, open).
    Only the container types are converted; pycose does the COSE work unchanged.
    """
    item = cbor2.loads(message)
    assert item.tag == Sign1Message.cbor_tag == 18
    protected, unprotected, payload, signature = item.value
    decoded = Sign1Message.from_cose_obj([protected, dict(unprotected), payload, signature], True)
    assert isinstance(decoded, Sign1Message)
    return decoded


def test_pycose_decode_workaround_is_still_needed() -> None:
    # When this fails, pycose has fixed #141: drop pycose_decode and call Sign1Message.decode.
    with pytest.raises(TypeError, match="cannot be decoded"):
        Sign1Message.decode(seal_batch(tiny_batch(), example_key(), TOPIC))


def pycose_verify(message: bytes, topic: str) -> bytes:
    decoded = pycose_decode(message)
    decoded.key = OKPKey(crv=Ed25519, x=PUBLIC_RAW)
    decoded.external_aad = topic.encode()  # type: ignore[misc]  # pycose has a setter; its stub does not
    assert decoded.verify_signature()
    assert decoded.phdr[Algorithm] is EdDSA
    assert decoded.phdr[KID] == EXAMPLE_DEVICE.encode()
    assert decoded.payload is not None
    return bytes(decoded.payload)


@pytest.mark.parametrize("batch", [tiny_batch(), minute_batch()], ids=["tiny", "minute"])
def test_pycose_verifies_a_sealed_batch(batch: protocol.Batch) -> None:
    message = seal_batch(batch, example_key(), TOPIC)
    assert pycose_verify(message, TOPIC) == protocol.encode_batch(batch)


def test_pycose_rejects_the_batch_under_another_topic() -> None:
    message = seal_batch(tiny_batch(), example_key(), TOPIC)
    decoded = pycose_decode(message)
    decoded.key = OKPKey(crv=Ed25519, x=PUBLIC_RAW)
    decoded.external_aad = batch_topic("car-0002").encode()  # type: ignore[misc]
    assert not decoded.verify_signature()


def test_a_batch_signed_by_pycose_opens_with_open_batch() -> None:
    message = Sign1Message(
        phdr={Algorithm: EdDSA, KID: EXAMPLE_DEVICE.encode()},
        payload=protocol.encode_batch(tiny_batch()),
        external_aad=TOPIC.encode(),
    )
    message.key = OKPKey(crv=Ed25519, d=EXAMPLE_KEY_SEED, x=PUBLIC_RAW)
    encoded = message.encode(tag=True)
    assert open_batch(encoded, TOPIC, {EXAMPLE_DEVICE: example_key().public_key()}) == tiny_batch()


def hand_verify(message: bytes, public_key: Ed25519PublicKey, topic: str) -> bytes:
    """RFC 9052 section 4.4, written out with nothing but cbor2 and cryptography."""
    item = cbor2.loads(message)
    assert isinstance(item, cbor2.CBORTag)
    assert item.tag == 18
    protected, unprotected, payload, signature = item.value
    headers = cbor2.loads(protected)
    assert headers[1] == -8
    assert 1 not in unprotected
    to_be_signed = cbor2.dumps(["Signature1", protected, topic.encode("utf-8"), payload])
    public_key.verify(signature, to_be_signed)
    return payload  # type: ignore[no-any-return]


def test_hand_written_cbor2_cryptography_check_verifies_a_sealed_batch() -> None:
    message = seal_batch(minute_batch(), example_key(), TOPIC)
    payload = hand_verify(message, example_key().public_key(), TOPIC)
    assert payload == protocol.encode_batch(minute_batch())
    decoded = cbor2.loads(payload)
    assert decoded[1] == EXAMPLE_DEVICE
    assert len(decoded[6][0]) == 600


def test_hand_written_check_rejects_a_topic_replay() -> None:
    message = seal_batch(tiny_batch(), example_key(), TOPIC)
    with pytest.raises(InvalidSignature):
        hand_verify(message, example_key().public_key(), batch_topic("car-0002"))
