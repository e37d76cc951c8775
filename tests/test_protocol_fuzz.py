"""A short fuzz run: random and mutated input must end in a ProtocolError or a valid record.

Bounded (a few hundred examples per test, no deadline) so the whole file takes seconds.
Mutated payloads are re-signed with the device's key so they reach the strict decoder.
"""

from __future__ import annotations

import contextlib
import copy
from typing import Any

import cbor2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import protocol
from protocol import (
    ProtocolError,
    batch_topic,
    config_topic,
    open_batch,
    open_batch_columns,
    open_config,
    open_state,
    state_topic,
)
from protocol.cose import decode_sign1, sign1
from protocol.examples import EXAMPLE_DEVICE, example_key, minute_batch, tiny_batch

TOPIC = batch_topic(EXAMPLE_DEVICE)
KEYS = {EXAMPLE_DEVICE: example_key().public_key()}
VALID_MESSAGE = protocol.seal_batch(tiny_batch(), example_key(), TOPIC)
VALID_PAYLOAD = protocol.encode_batch(tiny_batch())
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def opens_or_refuses(message: bytes, topic: str = TOPIC) -> None:
    """The property: a Batch or a ProtocolError, never any other exception; the column path
    (open_batch_columns) gives the same batch or the same error."""
    error: ProtocolError | None = None
    try:
        batch = open_batch(message, topic, KEYS)
    except ProtocolError as exc:
        error = exc
    else:
        assert batch.device_id == EXAMPLE_DEVICE
        assert open_batch_columns(message, topic, KEYS).to_batch() == batch
    if error is not None:
        assert error.reason in protocol.errors.REASONS
        assert str(error), "every error names what was wrong"
        with pytest.raises(type(error)) as columnar:
            open_batch_columns(message, topic, KEYS)
        assert str(columnar.value) == str(error)


def resigned(payload: bytes) -> bytes:
    return sign1(payload, example_key(), protected={1: -8, 4: EXAMPLE_DEVICE.encode()}, external_aad=TOPIC.encode())


@FUZZ
@given(st.binary(max_size=512))
def test_random_bytes_as_a_message(data: bytes) -> None:
    opens_or_refuses(data)
    opens_or_refuses(b"\xd2" + data)


@FUZZ
@given(st.binary(max_size=512))
def test_random_bytes_as_a_signed_payload(data: bytes) -> None:
    opens_or_refuses(resigned(data))


@FUZZ
@given(st.binary(max_size=256))
def test_random_bytes_as_state(data: bytes) -> None:
    topic = state_topic(EXAMPLE_DEVICE)
    signed = sign1(data, example_key(), protected={1: -8, 4: b"car-0001"}, external_aad=topic.encode())
    for message in (b"\xd2" + data, signed):
        with contextlib.suppress(ProtocolError):
            open_state(message, topic, KEYS)


@FUZZ
@given(st.binary(max_size=256))
def test_random_bytes_as_config(data: bytes) -> None:
    topic = config_topic(EXAMPLE_DEVICE)
    signed = sign1(data, example_key(), protected={1: -8, 4: b"collector"}, external_aad=topic.encode())
    for message in (b"\xd2" + data, signed):
        with contextlib.suppress(ProtocolError):
            open_config(message, topic, example_key().public_key())


mutations = st.lists(
    st.tuples(st.sampled_from(["flip", "set", "insert", "delete"]), st.integers(0, 10_000), st.integers(0, 255)),
    min_size=1,
    max_size=6,
)


def mutate(data: bytes, edits: list[tuple[str, int, int]]) -> bytes:
    out = bytearray(data)
    for op, where, value in edits:
        i = where % (len(out) + 1)
        if op == "insert":
            out.insert(i, value)
        elif out and i < len(out):
            if op == "flip":
                out[i] ^= 1 << (value % 8)
            elif op == "set":
                out[i] = value
            else:
                del out[i]
    return bytes(out)


@FUZZ
@given(mutations, st.integers(0, 400))
def test_mutated_valid_messages(edits: list[tuple[str, int, int]], cut: int) -> None:
    mutated = mutate(VALID_MESSAGE, edits)
    opens_or_refuses(mutated)
    opens_or_refuses(mutated[:cut])


@FUZZ
@given(mutations)
def test_mutated_payloads_resigned(edits: list[tuple[str, int, int]]) -> None:
    opens_or_refuses(resigned(mutate(VALID_PAYLOAD, edits)))


cbor_leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**64), 2**64 - 1),
    st.floats(),
    st.text(max_size=8),
    st.binary(max_size=8),
    st.just(cbor2.undefined),
    st.builds(cbor2.CBORSimpleValue, st.sampled_from([0, 19, 32, 255])),
    st.builds(cbor2.CBORTag, st.sampled_from([0, 1, 2, 18, 24, 28, 35, 258, 55799]), st.integers(0, 3)),
)
cbor_values = st.recursive(
    cbor_leaves,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.integers(-2, 12) | st.text(max_size=3), inner, max_size=4)
    ),
    max_leaves=12,
)


def _containers(node: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [path]
    if isinstance(node, dict):
        for key, value in node.items():
            found += _containers(value, (*path, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found += _containers(value, (*path, index))
    return found


RAW = cbor2.loads(VALID_PAYLOAD)
PATHS = _containers(RAW)[1:]


@FUZZ
@given(st.lists(st.tuples(st.sampled_from(PATHS), cbor_values), min_size=1, max_size=3))
def test_structurally_mutated_payloads_resigned(replacements: list[tuple[tuple[Any, ...], Any]]) -> None:
    raw = copy.deepcopy(RAW)
    for path, value in replacements:
        node = raw
        try:
            for step in path[:-1]:
                node = node[step]
            node[path[-1]] = value
        except (KeyError, IndexError, TypeError):
            continue  # an earlier replacement removed this path
    opens_or_refuses(resigned(cbor2.dumps(raw)))


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutations)
def test_mutated_minute_payload_resigned(edits: list[tuple[str, int, int]]) -> None:
    payload = protocol.encode_batch(minute_batch())
    opens_or_refuses(resigned(mutate(payload, edits)))


@FUZZ
@given(st.binary(max_size=128))
def test_decode_sign1_alone(data: bytes) -> None:
    with contextlib.suppress(ProtocolError):
        decode_sign1(b"\xd2" + data)
