"""Hostile input to open_batch / open_state / open_config: one test per rule, each a typed error.

Payload-level attacks are *signed with the device's real key*, so they get past the
signature and prove that the strict decoder, not the signature, stops them.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import cbor2
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

import protocol
from protocol import (
    DeviceConfig,
    DeviceState,
    batch_topic,
    open_batch,
    open_batch_columns,
    open_config,
    open_state,
    seal_batch,
)
from protocol import errors as e
from protocol.cose import sign1
from protocol.examples import EXAMPLE_DEVICE, example_key, tiny_batch

TOPIC = batch_topic(EXAMPLE_DEVICE)
KEYS: dict[str, Any] = {EXAMPLE_DEVICE: example_key().public_key()}
OTHER = "car-0002"
OTHER_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))


def signed(payload: bytes, *, kid: bytes = EXAMPLE_DEVICE.encode(), topic: str = TOPIC, key: Any = None) -> bytes:
    """A correctly signed envelope around arbitrary payload bytes."""
    return sign1(payload, key or example_key(), protected={1: -8, 4: kid}, external_aad=topic.encode())


def raw_payload() -> dict[Any, Any]:
    raw: dict[Any, Any] = cbor2.loads(protocol.encode_batch(tiny_batch()))
    return raw


def with_payload(mutate: Callable[[dict[Any, Any]], None]) -> bytes:
    raw = copy.deepcopy(raw_payload())
    mutate(raw)
    return signed(cbor2.dumps(raw))


def rejects(
    message: bytes, kind: type[e.ProtocolError], match: str | None = None, *, topic: str = TOPIC
) -> e.ProtocolError:
    with pytest.raises(kind, match=match) as info:
        open_batch(message, topic, KEYS)
    error = info.value
    assert isinstance(error, e.RemoteProtocolError), "the sender is to blame for bad bytes"
    assert error.reason == kind.reason
    with pytest.raises(kind) as columnar:  # the collector's column path refuses it the same way
        open_batch_columns(message, topic, KEYS)
    assert (type(columnar.value), str(columnar.value)) == (type(error), str(error))
    return error


def test_the_valid_message_opens() -> None:
    assert open_batch(with_payload(lambda raw: None), TOPIC, KEYS) == tiny_batch()
    assert open_batch_columns(with_payload(lambda raw: None), TOPIC, KEYS).to_batch() == tiny_batch()


# ------------------------------------------------------------------ size and CBOR well-formedness


def test_oversized_message_is_refused_before_any_decoding() -> None:
    # Garbage that would be MalformedCBOR if it were decoded at all.
    rejects(b"\xd2\xff" * (protocol.cose.MAX_MESSAGE_BYTES // 2 + 1), e.OversizedMessage, "over the 1048576-byte limit")


def test_oversized_payload_is_refused_by_decode_batch_before_decoding() -> None:
    # Through open_batch the envelope limit (same 1 MiB) trips first; decode_batch has its own.
    with pytest.raises(e.OversizedMessage, match="batch payload is 1048577 bytes, over the 1048576-byte limit"):
        protocol.decode_batch(b"\xff" * (protocol.LIMITS.MAX_PAYLOAD_BYTES + 1))


def test_two_gigabyte_declared_length_with_few_bytes_is_truncated() -> None:
    # bstr head declaring 2**31 bytes, followed by 3 bytes: must not allocate 2 GB.
    rejects(signed(b"\x5a\x80\x00\x00\x00abc"), e.TruncatedMessage, "batch payload ends in the middle")
    rejects(b"\xd2\x84\x43\xa1\x01\x27\xa0\x5a\x80\x00\x00\x00abc", e.TruncatedMessage, "COSE_Sign1 body")


def test_two_gigabyte_declared_array_with_few_items_is_truncated() -> None:
    rejects(signed(b"\x9a\x80\x00\x00\x00\x01\x02"), e.TruncatedMessage)
    rejects(signed(b"\x9b\x00\x00\x00\x00\xff\xff\xff\xff\x01"), e.TruncatedMessage)


def test_cbor_depth_bomb_in_the_payload() -> None:
    rejects(signed(b"\x81" * 100_000 + b"\x00"), e.DepthExceeded, "deeper than 10")


def test_cbor_depth_bomb_in_the_unprotected_header() -> None:
    bomb = b"\xd2\x84\x43\xa1\x01\x27" + b"\xa1\x01" * 50_000 + b"\x00" + b"\x40" + b"\x58\x40" + bytes(64)
    rejects(bomb, e.DepthExceeded, "COSE_Sign1 body nests containers deeper than 4")


def test_indefinite_length_array_in_the_payload() -> None:
    rejects(signed(b"\x9f\x01\x02\xff"), e.IndefiniteLength, "indefinite-length")


def test_indefinite_length_string_in_the_payload() -> None:
    rejects(signed(b"\x7f\x61a\x61b\xff"), e.IndefiniteLength)


def test_indefinite_length_envelope() -> None:
    message = signed(protocol.encode_batch(tiny_batch()))
    indefinite = b"\xd2\x9f" + message[2:] + b"\xff"
    rejects(indefinite, e.IndefiniteLength)


def test_duplicate_map_key_in_the_payload() -> None:
    payload = protocol.encode_batch(tiny_batch())
    # Re-encode the top-level map with key 3 (seq) twice: 11 entries, the extra one first.
    duplicated = b"\xab" + b"\x03\x18\x63" + payload[1:]
    rejects(signed(duplicated), e.DuplicateKey, "repeats a map key")


def test_duplicate_map_key_in_the_protected_header() -> None:
    protected = b"\xa3\x01\x27\x04\x48" + EXAMPLE_DEVICE.encode() + b"\x01\x27"
    message = b"\xd2\x84\x58" + bytes([len(protected)]) + protected + b"\xa0\x41\x00\x58\x40" + bytes(64)
    rejects(message, e.DuplicateKey, "protected header")


def test_trailing_bytes_after_the_envelope() -> None:
    rejects(signed(protocol.encode_batch(tiny_batch())) + b"\x00", e.TrailingBytes, "1 bytes after")


def test_trailing_bytes_after_the_payload() -> None:
    rejects(signed(protocol.encode_batch(tiny_batch()) + b"\xf6\xf6"), e.TrailingBytes, "batch payload has 2 bytes")


@pytest.mark.parametrize(
    ("name", "tagged"),
    [
        ("regex (35)", b"\xd8\x23\x61a"),
        ("MIME (36)", b"\xd8\x24\x61a"),
        ("shareable (28)", b"\xd8\x1c\x80"),
        ("shared ref (29)", b"\xd8\x1d\x00"),
        ("positive bignum (2)", b"\xc2\x49\x01" + bytes(8)),
        ("negative bignum (3)", b"\xc3\x49\x01" + bytes(8)),
        ("date/time (0)", b"\xc0\x74" + b"2025-01-01T00:00:00Z"),
        ("epoch time (1)", b"\xc1\x00"),
        ("decimal fraction (4)", b"\xc4\x82\x21\x19\x6a\xb3"),
        ("set (258)", b"\xd9\x01\x02\x80"),
        ("self-describe (55799)", b"\xd9\xd9\xf7\xa0"),
        ("unassigned (1000000)", b"\xda\x00\x0f\x42\x40\x00"),
        ("COSE_Sign1 (18) nested", b"\xd2\x80"),
    ],
)
def test_forbidden_tag_in_the_payload(name: str, tagged: bytes) -> None:
    rejects(signed(b"\xa1\x00" + tagged), e.ForbiddenTag, "contains a CBOR tag")


def test_forbidden_tag_inside_alert_evidence() -> None:
    def mutate(raw: dict[Any, Any]) -> None:
        raw[8][0][5] = {"pattern": cbor2.CBORTag(35, "^a+$")}

    rejects(with_payload(mutate), e.ForbiddenTag)


@pytest.mark.parametrize(
    ("name", "payload"),
    [
        ("reserved additional info", b"\x1c"),
        ("break outside indefinite item", b"\xff"),
        ("invalid UTF-8 text", b"\x62\xff\xfe"),
    ],
)
def test_malformed_cbor(name: str, payload: bytes) -> None:
    rejects(signed(payload), e.MalformedCBOR, "not well-formed CBOR")


def test_empty_payload_is_truncated() -> None:
    rejects(signed(b""), e.TruncatedMessage, "batch payload is empty")


def test_cut_off_message_is_truncated() -> None:
    message = signed(protocol.encode_batch(tiny_batch()))
    for cut in (2, 10, len(message) // 2, len(message) - 1):
        rejects(message[:cut], e.TruncatedMessage)


# ------------------------------------------------------------------ envelope profile and signature


def test_forged_signature() -> None:
    message = bytearray(seal_batch(tiny_batch(), example_key(), TOPIC))
    message[-1] ^= 0x01
    rejects(bytes(message), e.BadSignature, "does not verify")


def test_signed_by_another_key_claiming_this_device() -> None:
    rejects(signed(protocol.encode_batch(tiny_batch()), key=OTHER_KEY), e.BadSignature)


def test_payload_swapped_under_a_valid_signature() -> None:
    protected, unprotected, _, signature = cbor2.loads(seal_batch(tiny_batch(), example_key(), TOPIC)).value
    later = protocol.encode_batch(protocol.Batch(EXAMPLE_DEVICE, bytes(16), 8, tiny_batch().created_ms))
    rejects(b"\xd2" + cbor2.dumps([protected, unprotected, later, signature]), e.BadSignature)


def test_replay_onto_another_devices_topic() -> None:
    message = seal_batch(tiny_batch(), example_key(), TOPIC)
    keys = {**KEYS, OTHER: OTHER_KEY.public_key()}
    with pytest.raises(e.DeviceMismatch, match="does not match topic device 'car-0002'"):
        open_batch(message, batch_topic(OTHER), keys)


def test_replay_with_kid_rewritten_to_the_other_device_fails_the_signature() -> None:
    message = seal_batch(tiny_batch(), example_key(), TOPIC)
    rewritten = message.replace(b"\x48" + EXAMPLE_DEVICE.encode(), b"\x48" + OTHER.encode(), 1)
    keys = {**KEYS, OTHER: OTHER_KEY.public_key()}
    with pytest.raises(e.BadSignature):
        open_batch(rewritten, batch_topic(OTHER), keys)


def test_other_device_resigning_this_devices_payload() -> None:
    # car-0002 signs car-0001's payload with its own key and publishes on its own topic.
    payload = protocol.encode_batch(tiny_batch())
    message = signed(payload, kid=OTHER.encode(), topic=batch_topic(OTHER), key=OTHER_KEY)
    with pytest.raises(e.DeviceMismatch, match="payload device 'car-0001' does not match topic device 'car-0002'"):
        open_batch(message, batch_topic(OTHER), {OTHER: OTHER_KEY.public_key()})


def test_replay_of_a_batch_onto_the_state_topic() -> None:
    message = seal_batch(tiny_batch(), example_key(), TOPIC)
    with pytest.raises(e.BadSignature):
        open_state(message, protocol.state_topic(EXAMPLE_DEVICE), KEYS)


def test_replay_on_the_same_topic_yields_the_same_device_and_seq() -> None:
    # Under QoS 1 a duplicate is normal: the protocol cannot tell, the collector dedups on (device, seq).
    message = seal_batch(tiny_batch(), example_key(), TOPIC)
    first, second = open_batch(message, TOPIC, KEYS), open_batch(message, TOPIC, KEYS)
    assert (first.device_id, first.seq) == (second.device_id, second.seq) == (EXAMPLE_DEVICE, 7)


def test_wrong_alg() -> None:
    message = sign1(b"x", example_key(), protected={1: -8, 4: b"car-0001"})
    es256 = message.replace(b"\xa2\x01\x27", b"\xa2\x01\x26", 1)  # alg -7 (ES256)
    rejects(es256, e.UnsupportedAlgorithm, "alg -7 is not EdDSA")


def test_alg_as_text_is_unsupported() -> None:
    protected = cbor2.dumps({1: "EdDSA", 4: b"car-0001"})
    rejects(b"\xd2" + cbor2.dumps([protected, {}, b"x", bytes(64)]), e.UnsupportedAlgorithm)


def test_alg_in_the_unprotected_header() -> None:
    message = b"\xd2" + cbor2.dumps([cbor2.dumps({4: b"car-0001"}), {1: -8}, b"x", bytes(64)])
    rejects(message, e.MisplacedHeader, "unprotected")


def test_detached_payload() -> None:
    message = b"\xd2" + cbor2.dumps([cbor2.dumps({1: -8, 4: b"car-0001"}), {}, None, bytes(64)])
    rejects(message, e.DetachedPayload, "detached")


def test_kid_mismatch() -> None:
    rejects(signed(protocol.encode_batch(tiny_batch()), kid=b"car-9999"), e.DeviceMismatch, "kid 'car-9999'")


def test_kid_missing_from_the_protected_header() -> None:
    message = sign1(
        protocol.encode_batch(tiny_batch()),
        example_key(),
        protected={1: -8},
        unprotected={4: b"car-0001"},
        external_aad=TOPIC.encode(),
    )
    rejects(message, e.InvalidEnvelope, "kid")


def test_kid_as_text_is_invalid_envelope() -> None:
    message = sign1(b"x", example_key(), protected={1: -8, 4: "car-0001"}, external_aad=TOPIC.encode())
    rejects(message, e.InvalidEnvelope, "kid")


def test_unknown_device() -> None:
    with pytest.raises(e.UnknownDevice, match="no active key for device 'car-0001'"):
        open_batch(seal_batch(tiny_batch(), example_key(), TOPIC), TOPIC, {})


def test_revoked_device_key_is_unknown_device() -> None:
    with pytest.raises(e.UnknownDevice):
        open_batch(seal_batch(tiny_batch(), example_key(), TOPIC), TOPIC, {EXAMPLE_DEVICE: None})  # type: ignore[dict-item]


@pytest.mark.parametrize(
    "topic",
    [
        "lw/v1/car-0001",
        "lw/v2/car-0001/batch",
        "lw/v1/car 0001/batch",
        "lw/v1//batch",
        "lw/v1/+/batch",
        "lw/v1/car-0001/batch/x",
        "lw/v1/car-0001/alerts",
        "lw/v1/" + "a" * 65 + "/batch",
        "",
    ],
)
def test_bad_topics(topic: str) -> None:
    rejects(seal_batch(tiny_batch(), example_key(), TOPIC), e.TopicError, topic=topic)


def test_state_topic_given_to_open_batch() -> None:
    rejects(
        seal_batch(tiny_batch(), example_key(), TOPIC),
        e.TopicError,
        "expected batch",
        topic=protocol.state_topic(EXAMPLE_DEVICE),
    )


# ------------------------------------------------------------------ payload schema (signed correctly)


def test_payload_not_a_map() -> None:
    rejects(signed(cbor2.dumps([1, 2, 3])), e.SchemaError, "batch payload must be a map")


def test_payload_unknown_key() -> None:
    rejects(with_payload(lambda raw: raw.__setitem__(11, 0)), e.SchemaError, r"unknown keys \[11\]")


def test_payload_text_key() -> None:
    rejects(with_payload(lambda raw: raw.__setitem__("seq", 0)), e.SchemaError, "keys must be integers")


def test_payload_missing_required_key() -> None:
    rejects(with_payload(lambda raw: raw.pop(3)), e.SchemaError, r"lacks required keys \[3\]")


def test_unsupported_schema_version() -> None:
    rejects(with_payload(lambda raw: raw.__setitem__(0, 2)), e.UnsupportedVersion, "version 2 is not 1")


def test_schema_version_as_bool() -> None:
    rejects(with_payload(lambda raw: raw.__setitem__(0, True)), e.UnsupportedVersion)


def test_payload_device_id_differs_from_the_topic() -> None:
    rejects(with_payload(lambda raw: raw.__setitem__(1, "car-0003")), e.DeviceMismatch, "payload device 'car-0003'")


def test_payload_device_id_not_an_id() -> None:
    rejects(with_payload(lambda raw: raw.__setitem__(1, "car/0001")), e.InvalidValue, "device id")


@pytest.mark.parametrize(
    ("key", "value", "kind", "match"),
    [
        (2, b"short", e.InvalidValue, "boot_id must be 16 bytes"),
        (3, 0, e.InvalidValue, r"seq=0 must be an int in \[1, 18446744073709551615\]"),
        (3, "7", e.SchemaError, "batch key 3 must be an integer"),
        (4, 5, e.InvalidValue, "created_ms=5 is outside 2000-01-01"),
        (5, -1, e.InvalidValue, "catalog"),
        (10, {"Bad-Name": 1}, e.InvalidValue, "counter name"),
        (10, {"dropped": -1}, e.InvalidValue, "counter dropped"),
        (10, [1], e.SchemaError, "counters must be a small map"),
        (8, {"not": "a list"}, e.SchemaError, "alerts must be an array"),
    ],
)
def test_payload_header_values(key: int, value: object, kind: type[e.ProtocolError], match: str) -> None:
    rejects(with_payload(lambda raw: raw.__setitem__(key, value)), kind, match)


def test_fix_columns_of_different_lengths() -> None:
    rejects(with_payload(lambda raw: raw[6][1].pop()), e.ColumnLengthMismatch, "fix column lat has 1 items, expected 2")


def test_optional_fix_column_of_different_length() -> None:
    rejects(with_payload(lambda raw: raw[6][7].append(90)), e.ColumnLengthMismatch, "hdop has 3 items")


def test_sample_columns_of_different_lengths() -> None:
    rejects(with_payload(lambda raw: raw[7][3].pop()), e.ColumnLengthMismatch, "sample values has 1 items")
    rejects(with_payload(lambda raw: raw[7][2].append(1)), e.ColumnLengthMismatch, "sample times has 3 items")


def test_fix_column_missing_a_required_column() -> None:
    rejects(with_payload(lambda raw: raw[6].pop(6)), e.SchemaError, r"fixes lacks required keys \[6\]")


def test_fix_column_holding_a_float() -> None:
    rejects(
        with_payload(lambda raw: raw[6][1].__setitem__(1, 1.5)), e.SchemaError, "fix column lat must hold only integers"
    )


def test_fix_column_holding_a_bool() -> None:
    rejects(
        with_payload(lambda raw: raw[6][8].__setitem__(1, True)), e.SchemaError, "sats_used must hold only integers"
    )


def test_null_in_a_required_fix_column() -> None:
    rejects(with_payload(lambda raw: raw[6][6].__setitem__(1, None)), e.SchemaError, "mode must hold only integers")


def test_latitude_out_of_range() -> None:
    rejects(
        with_payload(lambda raw: raw[6][1].__setitem__(0, 910_000_000)),
        e.InvalidValue,
        r"lat=91.0 is outside \[-90.0, 90.0\]",
    )


def test_longitude_out_of_range_through_deltas() -> None:
    rejects(with_payload(lambda raw: raw[6][2].__setitem__(1, 600_000_000)), e.InvalidValue, "lon=181")


def test_fix_times_going_backwards() -> None:
    rejects(with_payload(lambda raw: raw[6][0].__setitem__(1, -1)), e.InvalidValue, "must not go backwards")


def test_delta_entry_over_the_overflow_bound() -> None:
    rejects(with_payload(lambda raw: raw[6][1].__setitem__(1, 2**62)), e.InvalidValue, "delta-coding limit")


def test_integer_outside_64_bits_in_a_delta_column() -> None:
    rejects(with_payload(lambda raw: raw[6][0].__setitem__(1, 2**64 - 1)), e.InvalidValue, "outside 64 bits")


def test_fix_mode_no_fix() -> None:
    rejects(with_payload(lambda raw: raw[6][6].__setitem__(0, 1)), e.InvalidValue, "fix mode 1 is not 2")


def test_speed_out_of_range() -> None:
    rejects(with_payload(lambda raw: raw[6][4].__setitem__(0, -5)), e.InvalidValue, "speed_mps=-0.05")


def test_fix_count_over_the_limit() -> None:
    n = protocol.LIMITS.MAX_FIXES + 1

    def mutate(raw: dict[Any, Any]) -> None:
        raw[6] = {0: [raw[4]] + [0] * (n - 1), 1: [0] * n, 2: [0] * n, 6: [3] * n}

    rejects(with_payload(mutate), e.SchemaError, "fixes count 36001 is outside 1..36000")


def test_empty_fix_table() -> None:
    rejects(with_payload(lambda raw: raw.__setitem__(6, {0: [], 1: [], 2: [], 6: []})), e.SchemaError, "fixes count 0")


def test_sample_value_nan() -> None:
    rejects(with_payload(lambda raw: raw[7][3].__setitem__(0, float("nan"))), e.InvalidValue, "not finite")


def test_sample_value_infinity() -> None:
    rejects(with_payload(lambda raw: raw[7][3].__setitem__(0, float("-inf"))), e.InvalidValue, "not finite")


def test_sample_value_bytes() -> None:
    rejects(with_payload(lambda raw: raw[7][3].__setitem__(0, b"\x00")), e.SchemaError, "bool, int, float or text")


def test_sample_value_integer_outside_64_bits() -> None:
    rejects(with_payload(lambda raw: raw[7][3].__setitem__(0, 2**64 - 1)), e.InvalidValue, "does not fit in 64 bits")


def test_sample_name_index_out_of_range() -> None:
    rejects(with_payload(lambda raw: raw[7][1].__setitem__(1, 2)), e.SchemaError, "index out of range")


def test_duplicate_sample_names() -> None:
    rejects(with_payload(lambda raw: raw[7][0].__setitem__(1, "Vehicle.Speed")), e.SchemaError, "must be unique")


def test_sample_name_not_a_vss_path() -> None:
    rejects(with_payload(lambda raw: raw[7][0].__setitem__(0, "speed!")), e.InvalidValue, "not a dotted VSS-style path")


def test_alert_unknown_severity() -> None:
    rejects(with_payload(lambda raw: raw[8][0].__setitem__(1, 9)), e.InvalidValue, "severity 9 is not a known value")


def test_alert_missing_evidence() -> None:
    rejects(with_payload(lambda raw: raw[8][0].pop(5)), e.SchemaError, r"alert\[0\] lacks required keys \[5\]")


def test_alert_evidence_with_an_integer_key() -> None:
    rejects(with_payload(lambda raw: raw[8][0].__setitem__(5, {1: 2})), e.InvalidValue, "evidence key 1")


def test_alert_evidence_with_cbor_undefined() -> None:
    rejects(with_payload(lambda raw: raw[8][0].__setitem__(5, {"x": cbor2.undefined})), e.InvalidValue, "not allowed")


def test_alert_evidence_with_a_simple_value() -> None:
    rejects(with_payload(lambda raw: raw[8][0].__setitem__(5, {"x": cbor2.CBORSimpleValue(99)})), e.InvalidValue)


def test_alert_evidence_nested_too_deep() -> None:
    rejects(with_payload(lambda raw: raw[8][0].__setitem__(5, {"a": [[[[1]]]]})), e.InvalidValue, "deeper than 4")


def test_too_many_alerts() -> None:
    rejects(
        with_payload(lambda raw: raw.__setitem__(8, raw[8] * 257)), e.SchemaError, "257 items, over the limit of 256"
    )


def test_stats_with_nan_distance() -> None:
    def mutate(raw: dict[Any, Any]) -> None:
        raw[9] = [{0: "2025-01-01", 1: raw[4], 2: float("nan"), 3: 0.0, 4: 0, 5: 0, 7: False}]

    rejects(with_payload(mutate), e.InvalidValue, "distance_m=nan")


def test_stats_with_a_bad_day() -> None:
    def mutate(raw: dict[Any, Any]) -> None:
        raw[9] = [{0: "2025-1-1", 1: raw[4], 2: 1.0, 3: 0.0, 4: 0, 5: 0, 7: False}]

    rejects(with_payload(mutate), e.InvalidValue, "YYYY-MM-DD")


# ------------------------------------------------------------------ state and config messages


def state() -> DeviceState:
    return DeviceState(EXAMPLE_DEVICE, True, tiny_batch().created_ms, bytes(16), {"agent": "0.1.0"}, {"sent": 3})


def test_state_round_trip_and_golden_payload_keys() -> None:
    topic = protocol.state_topic(EXAMPLE_DEVICE)
    message = protocol.seal_state(state(), example_key(), topic)
    assert open_state(message, topic, KEYS) == state()
    payload = protocol.cose.decode_sign1(message).payload
    assert cbor2.loads(payload) == {
        0: EXAMPLE_DEVICE,
        1: True,
        2: 1735689601000,
        3: bytes(16),
        4: {"agent": "0.1.0"},
        5: {"sent": 3},
    }


def test_state_with_a_missing_key() -> None:
    topic = protocol.state_topic(EXAMPLE_DEVICE)
    message = signed(cbor2.dumps({0: EXAMPLE_DEVICE, 1: True}), topic=topic)
    with pytest.raises(e.SchemaError, match=r"keys 0\.\.5"):
        open_state(message, topic, KEYS)


def test_state_with_a_wrong_type() -> None:
    topic = protocol.state_topic(EXAMPLE_DEVICE)
    message = signed(cbor2.dumps({0: EXAMPLE_DEVICE, 1: "yes", 2: 1, 3: bytes(16), 4: {}, 5: {}}), topic=topic)
    with pytest.raises(e.InvalidValue, match="online must be a bool"):
        open_state(message, topic, KEYS)


def test_oversized_state_message() -> None:
    with pytest.raises(e.OversizedMessage, match="16384"):
        open_state(b"\xd2" + bytes(20_000), protocol.state_topic(EXAMPLE_DEVICE), KEYS)


COLLECTOR_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(1, 33)))


def config() -> DeviceConfig:
    return DeviceConfig(EXAMPLE_DEVICE, 3, tiny_batch().created_ms, {"markets": [{"id": "m1", "lat": 31.3}]})


def test_config_round_trip() -> None:
    topic = protocol.config_topic(EXAMPLE_DEVICE)
    message = protocol.seal_config(config(), COLLECTOR_KEY, topic)
    assert protocol.cose.decode_sign1(message).protected == {1: -8, 4: b"collector"}
    assert open_config(message, topic, COLLECTOR_KEY.public_key()) == config()


def test_config_replayed_onto_another_devices_topic() -> None:
    message = protocol.seal_config(config(), COLLECTOR_KEY, protocol.config_topic(EXAMPLE_DEVICE))
    with pytest.raises(e.BadSignature):
        open_config(message, protocol.config_topic(OTHER), COLLECTOR_KEY.public_key())


def test_config_signed_by_a_device_key() -> None:
    message = protocol.seal_config(config(), example_key(), protocol.config_topic(EXAMPLE_DEVICE))
    with pytest.raises(e.BadSignature):
        open_config(message, protocol.config_topic(EXAMPLE_DEVICE), COLLECTOR_KEY.public_key())


def test_config_for_another_device_signed_for_this_topic() -> None:
    topic = protocol.config_topic(EXAMPLE_DEVICE)
    payload = cbor2.dumps({0: OTHER, 1: 1, 2: 1735689601000, 3: {}})
    message = sign1(payload, COLLECTOR_KEY, protected={1: -8, 4: b"collector"}, external_aad=topic.encode())
    with pytest.raises(e.DeviceMismatch, match="config device 'car-0002'"):
        open_config(message, topic, COLLECTOR_KEY.public_key())


def test_config_with_version_zero() -> None:
    topic = protocol.config_topic(EXAMPLE_DEVICE)
    payload = cbor2.dumps({0: EXAMPLE_DEVICE, 1: 0, 2: 1735689601000, 3: {}})
    message = sign1(payload, COLLECTOR_KEY, protected={1: -8, 4: b"collector"}, external_aad=topic.encode())
    with pytest.raises(e.InvalidValue, match="positive 63-bit"):
        open_config(message, topic, COLLECTOR_KEY.public_key())


# ------------------------------------------------------------------ the error tree itself


def test_every_reason_slug_is_distinct_and_listed() -> None:
    classes = [getattr(e, name) for name in e.__all__ if isinstance(getattr(e, name), type)]
    reasons = [c.reason for c in classes]
    assert len(reasons) == len(set(reasons))
    assert set(reasons) == set(e.REASONS)
    assert all(issubclass(c, e.ProtocolError) for c in classes)


def test_remote_errors_are_not_local_errors() -> None:
    remote = [c for c in vars(e).values() if isinstance(c, type) and issubclass(c, e.RemoteProtocolError)]
    assert len(remote) >= 20
    assert not any(issubclass(c, e.LocalProtocolError) for c in remote)
