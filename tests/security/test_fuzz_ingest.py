"""Hypothesis drives ``Ingestor.handle`` with mutated real messages: only typed refusals.

Two layers of mutation over genuine messages of a registered device (a one-minute batch
with fixes, samples and an alert, a tiny batch, a state message):

* the signed message itself (bit flips, cuts, inserted and repeated bytes, another
  topic): almost all must end as a typed dead letter;
* the payload, re-signed with the device's key so it passes the signature and reaches the
  strict decoder and the collector's own checks (times, sequence identity, storage).

The property: every outcome is stored / duplicate / state / dead-lettered with a known
reason slug; never ``internal_error`` or ``store_failed``, never an exception. The budget
is a few hundred examples (``LIENWATCH_FUZZ_EXAMPLES`` raises it; ``bench/fuzz_bench.py``
runs long campaigns).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from cryptography.hazmat.primitives import serialization
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import protocol
from collector.ingest.ingestor import Ingestor, Outcome
from collector.ingest.registry import DeviceRegistry
from collector.settings import Limits
from collector.storage.database import create_engine, migrate
from protocol import DeviceState, batch_topic, seal_state, state_topic
from protocol.cose import sign1
from protocol.examples import EXAMPLE_DEVICE, example_key, minute_batch, tiny_batch

EXAMPLES = int(os.environ.get("LIENWATCH_FUZZ_EXAMPLES", "300"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
#: every reason the ingest may give besides the protocol's own
COLLECTOR_REASONS = {"time_in_future", "seq_conflict", "bad_topic"}
FORBIDDEN_REASONS = {"internal_error", "store_failed"}
TOPIC = batch_topic(EXAMPLE_DEVICE)
STATE_TOPIC = state_topic(EXAMPLE_DEVICE)


def _genuine() -> list[tuple[str, bytes]]:
    key = example_key()
    state = DeviceState(EXAMPLE_DEVICE, True, 1_735_689_600_000, bytes(16), {"agent": "0.1"}, {"x": 1}, connection=7)
    return [
        (TOPIC, protocol.seal_batch(minute_batch(), key, TOPIC)),
        (TOPIC, protocol.seal_batch(tiny_batch(), key, TOPIC)),
        (STATE_TOPIC, seal_state(state, key, STATE_TOPIC)),
    ]


GENUINE = _genuine()


@pytest.fixture(scope="module")
def ingest() -> Iterator[Ingestor]:
    with tempfile.TemporaryDirectory(prefix="lw-fuzz-") as folder:
        engine = create_engine(f"sqlite:///{folder}/fuzz.db")
        migrate(engine)
        pem = example_key().public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        DeviceRegistry(engine).add(EXAMPLE_DEVICE, pem)
        # Clock just after the examples' times, so the genuine messages are in the past.
        yield Ingestor(engine, Limits(key_cache_ttl_s=60), clock_ms=lambda: 1_735_689_700_000)
        engine.dispose()


def _check(ingest: Ingestor, topic: str, message: bytes) -> None:
    result = ingest.handle(topic, message)  # must not raise
    assert result.outcome in set(Outcome)
    if result.outcome is Outcome.DEAD_LETTERED:
        assert result.reason not in FORBIDDEN_REASONS, result.detail
        assert result.reason in set(protocol.errors.REASONS) | COLLECTOR_REASONS, result.reason
        assert result.detail


@st.composite
def mutated_message(draw: st.DrawFn) -> tuple[str, bytes]:
    topic, message = draw(st.sampled_from(GENUINE))
    data = bytearray(message)
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "cut", "insert", "repeat", "set"]))
        at = draw(st.integers(0, max(0, len(data) - 1)))
        if kind == "flip":
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "cut":
            del data[at : at + draw(st.integers(1, 64))]
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=32))
        elif kind == "repeat":
            data[at:at] = data[at : at + draw(st.integers(1, 256))]
        elif data:
            data[at] = draw(st.sampled_from([0x00, 0xFF, 0x9F, 0xBF, 0x5F, 0x7F, 0xD8, 0xF7, 0x1B]))
    other = draw(st.sampled_from([topic, batch_topic("someone-else"), "lw/v1/x", f"lw/v1/{EXAMPLE_DEVICE}/config"]))
    return other, bytes(data)


@FUZZ
@given(mutated_message())
def test_mutated_signed_messages_end_in_typed_refusals(ingest: Ingestor, case: tuple[str, bytes]) -> None:
    _check(ingest, *case)


def _resigned(payload: bytes, topic: str) -> bytes:
    protected = {1: -8, 4: EXAMPLE_DEVICE.encode()}
    return sign1(payload, example_key(), protected=protected, external_aad=topic.encode())


@st.composite
def resigned_payload(draw: st.DrawFn) -> tuple[str, bytes]:
    topic, message = draw(st.sampled_from(GENUINE))
    from protocol.cose import decode_sign1

    payload = bytearray(decode_sign1(message).payload)
    for _ in range(draw(st.integers(1, 3))):
        at = draw(st.integers(0, max(0, len(payload) - 1)))
        kind = draw(st.sampled_from(["flip", "cut", "insert", "set"]))
        if kind == "flip" and payload:
            payload[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "cut":
            del payload[at : at + draw(st.integers(1, 16))]
        elif kind == "insert":
            payload[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif payload:
            payload[at] = draw(st.integers(0, 255))
    return topic, _resigned(bytes(payload), topic)


@FUZZ
@given(resigned_payload())
def test_resigned_mutated_payloads_end_in_typed_refusals_or_valid_records(
    ingest: Ingestor, case: tuple[str, bytes]
) -> None:
    _check(ingest, *case)


def test_the_genuine_messages_are_stored(ingest: Ingestor) -> None:
    outcomes = [ingest.handle(topic, message).outcome for topic, message in GENUINE]
    assert outcomes[0] in (Outcome.STORED, Outcome.DUPLICATE)
    assert outcomes[2] in (Outcome.STATE_APPLIED, Outcome.STATE_STALE)
    with ingest.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT COUNT(*) FROM batches")).scalar_one() >= 1
