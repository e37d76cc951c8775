"""The batch payload and its envelope: golden bytes, round trips, quantisation, the docs' example."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import cbor2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import protocol
from protocol import (
    Alert,
    AlertState,
    Batch,
    DailyStats,
    Fix,
    FixColumns,
    FixMode,
    Severity,
    SignalSample,
    batch_topic,
    decode_batch,
    encode_batch,
    open_batch,
    open_batch_columns,
    seal_batch,
)
from protocol.errors import InvalidRecord, LocalProtocolError
from protocol.examples import EXAMPLE_DEVICE, example_key, minute_batch, tiny_batch

DOCS = Path(__file__).resolve().parent.parent / "docs" / "protocol.md"
TOPIC = batch_topic(EXAMPLE_DEVICE)
KEYS = {EXAMPLE_DEVICE: example_key().public_key()}

# The worked example of docs/protocol.md, sealed with the RFC 8032 test-1 key.
TINY_PAYLOAD_HEX = (
    "aa000101686361722d303030310250000102030405060708090a0b0c0d0e0f0307041b000001941f297fe8050106a800"
    "821b000001941f297c00186401821a129d61801903e802821a48676a683903e70382182d182d048200187d0682030307"
    "82185a185a0882090907a400826d56656869636c652e5370656564782956656869636c652e436162696e2e446f6f722e"
    "526f77312e447269766572536964652e49734f70656e0182000102821b000001941f297c0018320382f94480f50881a6"
    "0072646f6f725f6f70656e5f61745f6e696768740101021b000001941f297c3203626531040005a165636f756e74030a"
    "a16f64726f707065645f73616d706c657300"
)
TINY_MESSAGE_HEX = (
    "d2844da2012704486361722d30303031a0590102" + TINY_PAYLOAD_HEX + "5840"
    "5b399049eeed36bec7aec2d13c882491942208eb17a244766df9b731066530e6"
    "22585fc3ad2a16c7a854dc15f804916b7940293f8b5ade2f1b16f125fef9bb0f"
)


def test_tiny_batch_payload_golden_bytes() -> None:
    assert encode_batch(tiny_batch()).hex() == TINY_PAYLOAD_HEX


def test_tiny_batch_sealed_golden_bytes() -> None:
    assert seal_batch(tiny_batch(), example_key(), TOPIC).hex() == TINY_MESSAGE_HEX


def test_tiny_batch_opens_to_the_same_batch() -> None:
    assert open_batch(bytes.fromhex(TINY_MESSAGE_HEX), TOPIC, KEYS) == tiny_batch()


def test_tiny_payload_structure_uses_documented_keys() -> None:
    raw = cbor2.loads(bytes.fromhex(TINY_PAYLOAD_HEX))
    assert raw[0] == 1
    assert raw[1] == "car-0001"
    assert raw[3] == 7
    assert raw[6] == {
        0: [1735689600000, 100],
        1: [312304000, 1000],
        2: [1214737000, -1000],
        3: [45, 45],
        4: [0, 125],
        6: [3, 3],
        7: [90, 90],
        8: [9, 9],
    }
    assert raw[7] == {
        0: ["Vehicle.Speed", "Vehicle.Cabin.Door.Row1.DriverSide.IsOpen"],
        1: [0, 1],
        2: [1735689600000, 50],
        3: [4.5, True],
    }
    assert raw[8] == [{0: "door_open_at_night", 1: 1, 2: 1735689600050, 3: "e1", 4: 0, 5: {"count": 3}}]
    assert raw[10] == {"dropped_samples": 0}


def test_protected_header_is_alg_eddsa_and_kid_device_id() -> None:
    message = bytes.fromhex(TINY_MESSAGE_HEX)
    decoded = protocol.cose.decode_sign1(message)
    assert decoded.protected == {1: -8, 4: b"car-0001"}
    assert decoded.protected_bytes.hex() == "a2012704486361722d30303031"
    assert decoded.unprotected == {}


# ------------------------------------------------------------------ docs/protocol.md stays true


def _doc_block(title: str) -> str:
    text = DOCS.read_text(encoding="utf-8")
    match = re.search(rf"<!-- {title} -->\s*```[a-z]*\n(.*?)```", text, re.S)
    assert match, f"docs/protocol.md lacks the block marked <!-- {title} -->"
    return match.group(1)


def test_docs_worked_example_hex_is_what_the_code_produces() -> None:
    hex_text = "".join(_doc_block("example-message-hex").split())
    assert hex_text == TINY_MESSAGE_HEX


def _diag(value: object) -> str:
    """CBOR diagnostic notation (RFC 8949 section 8) for the types the schema uses."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, bytes):
        return f"h'{value.hex()}'"
    if isinstance(value, str):
        return '"' + value + '"'
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, (list, tuple)):  # cbor2 6 hands tag contents over as tuples
        return "[" + ", ".join(_diag(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{_diag(k)}: {_diag(v)}" for k, v in value.items()) + "}"
    if isinstance(value, cbor2.CBORTag):
        return f"{value.tag}({_diag(value.value)})"
    raise TypeError(value)


def _without_comments(text: str) -> str:
    return re.sub(r"\s+", "", re.sub(r"/[^/]*/", "", text))


def test_docs_worked_example_diagnostic_notation_matches_the_bytes() -> None:
    payload = cbor2.loads(bytes.fromhex(TINY_PAYLOAD_HEX))
    assert _without_comments(_doc_block("example-payload-diag")) == re.sub(r"\s+", "", _diag(payload))


def test_docs_worked_example_envelope_notation_matches_the_bytes() -> None:
    envelope = cbor2.loads(bytes.fromhex(TINY_MESSAGE_HEX))
    protected, unprotected, _, signature = envelope.value
    expected = f"{envelope.tag}([{_diag(protected)}, {_diag(unprotected)}, <<payload>>, {_diag(signature)}])"
    assert _without_comments(_doc_block("example-envelope-diag")) == re.sub(r"\s+", "", expected)


# ------------------------------------------------------------------ round trips under hypothesis

T0 = 1_735_689_600_000
finite: dict[str, Any] = {"allow_nan": False, "allow_infinity": False}
signal_names = st.sampled_from(
    [
        "Vehicle.Speed",
        "Vehicle.LowVoltageSystemState",
        "Vehicle.Cabin.Door.Row1.DriverSide.IsOpen",
        "Vehicle.TraveledDistance",
    ]
)
sample_values = st.one_of(
    st.booleans(),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(**finite),
    st.text(max_size=20),
)
json_leaf = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1), st.floats(**finite), st.text(max_size=10)
)
evidence = st.dictionaries(
    st.text(min_size=1, max_size=8),
    st.one_of(
        json_leaf,
        st.lists(json_leaf, max_size=3),
        st.dictionaries(st.text(min_size=1, max_size=4), json_leaf, max_size=2),
    ),
    max_size=4,
)


def optional_float(lo: float, hi: float) -> st.SearchStrategy[float | None]:
    return st.none() | st.floats(lo, hi, **finite)


@st.composite
def fixes(draw: st.DrawFn) -> tuple[Fix, ...]:
    count = draw(st.integers(0, 8))
    steps = draw(st.lists(st.integers(0, 10_000_000), min_size=count, max_size=count))
    start = draw(st.integers(T0 - 10**11, T0 + 10**11))
    times, now = [], start
    for step in steps:
        now += step
        times.append(now)
    # Optional columns are either all present or all absent in real data, but mixed is legal.
    return tuple(
        Fix(
            t,
            draw(st.floats(-90, 90, **finite)),
            draw(st.floats(-180, 180, **finite)),
            alt_m=draw(optional_float(-1000, 100_000)),
            speed_mps=draw(optional_float(0, 1000)),
            course_deg=draw(optional_float(0, 360)),
            mode=draw(st.sampled_from([FixMode.TWO_D, FixMode.THREE_D])),
            hdop=draw(optional_float(0, 100)),
            sats_used=draw(st.none() | st.integers(0, 255)),
            mean_snr=draw(optional_float(0, 99)),
        )
        for t in times
    )


times_ms = st.integers(T0 - 10**11, T0 + 10**11)
batches = st.builds(
    Batch,
    device_id=st.from_regex(r"[A-Za-z0-9_-]{1,64}", fullmatch=True),
    boot_id=st.binary(min_size=16, max_size=16),
    seq=st.integers(1, 2**64 - 1),
    created_ms=times_ms,
    catalog=st.integers(0, 2**32 - 1),
    fixes=fixes(),
    samples=st.lists(st.builds(SignalSample, signal_names, times_ms, sample_values), max_size=8).map(tuple),
    alerts=st.lists(
        st.builds(
            Alert,
            st.from_regex(r"[a-z][a-z0-9_]{0,20}", fullmatch=True),
            st.sampled_from(list(Severity)),
            times_ms,
            st.text(min_size=1, max_size=12),
            st.sampled_from(list(AlertState)),
            evidence,
        ),
        max_size=3,
    ).map(tuple),
    stats=st.lists(
        st.builds(
            DailyStats,
            st.dates().map(lambda d: f"{d.year:04d}-{d.month:02d}-{d.day:02d}"),
            times_ms,
            st.floats(0, 1e8, **finite),
            st.floats(0, 172_800, **finite),
            st.integers(0, 2**31),
            st.integers(0, 2**31),
            optional_float(0, 1e8),
            st.booleans(),
        ),
        max_size=2,
    ).map(tuple),
    counters=st.dictionaries(
        st.from_regex(r"[a-z][a-z0-9_]{0,10}", fullmatch=True), st.integers(0, 2**63 - 1), max_size=3
    ),
)

QUANTUM = {"lat": 1e-7, "lon": 1e-7, "alt_m": 0.1, "speed_mps": 0.01, "course_deg": 0.01, "hdop": 0.01, "mean_snr": 0.1}


def assert_within_quantisation(original: Batch, decoded: Batch) -> None:
    assert len(decoded.fixes) == len(original.fixes)
    for before, after in zip(original.fixes, decoded.fixes, strict=True):
        assert after.time_ms == before.time_ms
        assert after.mode is before.mode
        assert after.sats_used == before.sats_used
        for name, quantum in QUANTUM.items():
            a, b = getattr(before, name), getattr(after, name)
            if a is None:
                assert b is None
            else:
                assert math.isclose(a, b, rel_tol=0, abs_tol=quantum / 2 + 1e-9), (name, a, b)
    same = ("device_id", "boot_id", "seq", "created_ms", "catalog", "samples", "alerts", "stats", "counters")
    for name in same:
        assert getattr(decoded, name) == getattr(original, name), name


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batches)
def test_round_trip_is_stable_and_within_quantisation(batch: Batch) -> None:
    encoded = encode_batch(batch)
    decoded = decode_batch(encoded)
    assert_within_quantisation(batch, decoded)
    assert encode_batch(decoded) == encoded


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batches)
def test_seal_then_open_round_trip(batch: Batch) -> None:
    topic = batch_topic(batch.device_id)
    opened = open_batch(seal_batch(batch, example_key(), topic), topic, {batch.device_id: example_key().public_key()})
    assert_within_quantisation(batch, opened)


def test_minute_batch_round_trip_and_size() -> None:
    batch = minute_batch()
    message = seal_batch(batch, example_key(), TOPIC)
    opened = open_batch(message, TOPIC, KEYS)
    assert_within_quantisation(batch, opened)
    # 600 fixes + 600 samples + 2 alerts: column-wise deltas keep a minute well under 20 kB.
    assert len(message) == 17_400


def test_float_samples_use_the_shortest_exact_width() -> None:
    def encoded_value_column(value: float) -> str:
        batch = Batch(EXAMPLE_DEVICE, bytes(16), 1, T0, samples=(SignalSample("Vehicle.Speed", T0, value),))
        payload = encode_batch(batch)
        assert decode_batch(payload).samples[0].value == value
        # The sample table is the payload's last item and its value column (key 3) its last entry.
        return payload.hex().rsplit("0381", 1)[1]

    assert encoded_value_column(50.5) == "f95250"  # half precision
    assert encoded_value_column(100_000.5) == "fa47c35040"  # single precision
    assert encoded_value_column(12.6) == "fb4029333333333333"  # needs double


def test_absent_optional_fix_columns_are_left_out() -> None:
    batch = Batch(EXAMPLE_DEVICE, bytes(16), 1, T0, fixes=(Fix(T0, 1.0, 2.0), Fix(T0 + 1, 1.0, 2.0)))
    assert set(cbor2.loads(encode_batch(batch))[6]) == {0, 1, 2, 6}


def test_partly_missing_optional_values_travel_as_null() -> None:
    batch = Batch(EXAMPLE_DEVICE, bytes(16), 1, T0, fixes=(Fix(T0, 1.0, 2.0, hdop=1.5), Fix(T0 + 1, 1.0, 2.0)))
    assert cbor2.loads(encode_batch(batch))[6][7] == [150, None]
    assert decode_batch(encode_batch(batch)).fixes[1].hdop is None


def test_empty_batch_is_just_the_header() -> None:
    batch = Batch(EXAMPLE_DEVICE, bytes(16), 1, T0)
    assert cbor2.loads(encode_batch(batch)) == {0: 1, 1: EXAMPLE_DEVICE, 2: bytes(16), 3: 1, 4: T0, 5: 1}
    assert decode_batch(encode_batch(batch)) == batch


# ------------------------------------------------------------------ encoder-side limits and records


def test_encode_refuses_more_fixes_than_the_limit() -> None:
    too_many = tuple(Fix(T0 + i, 0.0, 0.0) for i in range(protocol.LIMITS.MAX_FIXES + 1))
    with pytest.raises(LocalProtocolError, match="36001 fixes, over the limit of 36000"):
        encode_batch(Batch(EXAMPLE_DEVICE, bytes(16), 1, T0, fixes=too_many))


def test_encode_refuses_a_non_batch() -> None:
    with pytest.raises(LocalProtocolError, match="needs a Batch"):
        encode_batch({"device": "x"})  # type: ignore[arg-type]


def test_seal_refuses_a_batch_whose_signed_message_is_over_1_mib() -> None:
    """A payload may be up to 1 MiB and so may the signed message (what the collector and the
    broker's max_packet_size accept): 95,318 samples encode to 1,048,567 bytes, under the
    payload limit, and the envelope takes the message over."""
    samples = tuple(SignalSample("rpm", T0 + i * 7, float(i) * 1.000001) for i in range(95_318))
    batch = Batch(EXAMPLE_DEVICE, bytes(16), 1, T0 + 1_000_000, samples=samples)
    assert len(encode_batch(batch)) == 1_048_567
    with pytest.raises(LocalProtocolError, match=r"sealed batch is \d+ bytes, over the 1048576-byte limit"):
        seal_batch(batch, example_key(), batch_topic(EXAMPLE_DEVICE))


def test_seal_refuses_another_devices_topic() -> None:
    with pytest.raises(LocalProtocolError, match="not device 'car-0001'"):
        seal_batch(tiny_batch(), example_key(), batch_topic("car-0002"))


def test_seal_refuses_a_state_topic() -> None:
    with pytest.raises(LocalProtocolError, match="expected batch"):
        seal_batch(tiny_batch(), example_key(), protocol.state_topic(EXAMPLE_DEVICE))


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("time_ms", 12, "outside 2000-01-01"),
        ("time_ms", True, "must be an int"),
        ("lat", 90.0000001, r"lat=90.0000001 is outside \[-90.0, 90.0\]"),
        ("lat", float("nan"), "lat=nan"),
        ("lon", -180.5, "lon=-180.5"),
        ("lon", "1.0", "lon must be a number"),
        ("alt_m", float("inf"), "alt_m=inf"),
        ("speed_mps", -0.1, "speed_mps"),
        ("course_deg", 360.01, "course_deg"),
        ("mode", FixMode.NONE, "fix mode"),
        ("mode", 3, "fix mode"),
        ("hdop", 100.5, "hdop"),
        ("sats_used", 256, "sats_used"),
        ("sats_used", True, "sats_used"),
        ("mean_snr", 99.5, "mean_snr"),
    ],
)
def test_fix_refuses_impossible_values(field: str, value: object, match: str) -> None:
    fields: dict[str, object] = {"time_ms": T0, "lat": 1.0, "lon": 2.0, field: value}
    with pytest.raises(InvalidRecord, match=match):
        Fix(**fields)  # type: ignore[arg-type]


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(st.integers(T0 - 10, T0 + 10), st.integers(), st.booleans(), st.floats()),
    st.one_of(st.floats(), st.integers(-100, 100), st.booleans()),
    st.one_of(st.floats(), st.integers(-200, 200)),
    st.one_of(st.none(), st.floats(), st.integers(-2000, 2000), st.booleans()),
    st.one_of(st.none(), st.integers(-1, 300), st.booleans(), st.floats(0, 300)),
    st.sampled_from([FixMode.TWO_D, FixMode.THREE_D, FixMode.NONE, 3, 2]),
)
def test_fix_fast_path_agrees_with_the_full_checks(
    time_ms: object, lat: object, lon: object, optional: object, sats: object, mode: object
) -> None:
    """Fix.__post_init__ accepts the common case in one expression; it must never accept more."""
    kwargs = {
        "time_ms": time_ms,
        "lat": lat,
        "lon": lon,
        "alt_m": optional,
        "speed_mps": optional,
        "course_deg": optional,
        "hdop": optional,
        "mean_snr": optional,
        "sats_used": sats,
        "mode": mode,
    }
    try:
        fix = Fix(**kwargs)  # type: ignore[arg-type]
    except InvalidRecord:
        accepted = False
    else:
        accepted = True
        fix._check_fields()  # the full checks must agree with the fast path's acceptance
    if not accepted:
        probe = object.__new__(Fix)
        for name, value in kwargs.items():
            object.__setattr__(probe, name, value)
        with pytest.raises(InvalidRecord):
            probe._check_fields()


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(signal_names, st.text(max_size=12), st.integers()),
    st.one_of(st.integers(T0 - 10, T0 + 10), st.integers(), st.booleans()),
    st.one_of(
        sample_values, st.floats(), st.integers(), st.none(), st.binary(max_size=3), st.text(min_size=250, max_size=260)
    ),
)
def test_sample_fast_path_agrees_with_the_full_checks(name: object, time_ms: object, value: object) -> None:
    probe = object.__new__(SignalSample)
    for field, item in (("name", name), ("time_ms", time_ms), ("value", value)):
        object.__setattr__(probe, field, item)
    try:
        probe._check_fields()
    except InvalidRecord:
        with pytest.raises(InvalidRecord):
            SignalSample(name, time_ms, value)  # type: ignore[arg-type]
    else:
        SignalSample(name, time_ms, value)  # type: ignore[arg-type]


# ------------------------------------------------------------------ fixes column by column


def _columns(fixes: tuple[Fix, ...], **replaced: tuple[object, ...]) -> FixColumns:
    columns = FixColumns.of(fixes)
    return FixColumns(**{name: replaced.get(name, getattr(columns, name)) for name in FixColumns.__slots__})


def test_fix_columns_hold_the_same_fixes_and_refuse_what_fix_refuses() -> None:
    fixes = minute_batch().fixes
    columns = FixColumns.of(fixes)
    assert columns.records() == fixes
    assert (len(columns), columns[-1], list(columns)) == (len(fixes), fixes[-1], list(fixes))
    assert _columns(fixes, lat=(31, *columns.lat[1:])).records()[0].lat == 31  # an int: Fix accepts it too
    for name, value, message in (
        ("lat", float("nan"), "lat=nan is outside"),
        ("lon", 180.5, r"lon=180.5 is outside \[-180.0, 180.0\]"),
        ("hdop", float("inf"), "hdop=inf is outside"),
        ("sats_used", 256, r"sats_used=256 must be an int in \[0, 255\]"),
        ("time_ms", 5, "fix time_ms=5 is outside"),
        ("mode", FixMode.NONE, "fix mode must be"),
    ):
        with pytest.raises(InvalidRecord, match=message):
            _columns(fixes, **{name: (*getattr(columns, name)[:-1], value)})
    with pytest.raises(InvalidRecord, match="fixes must be in time order"):
        _columns(fixes, time_ms=(*columns.time_ms[1:2], *columns.time_ms[:1], *columns.time_ms[2:]))
    with pytest.raises(InvalidRecord, match="tuples of one length"):
        _columns(fixes, lat=columns.lat[1:])


def test_open_batch_columns_is_open_batch_with_columns() -> None:
    batch = minute_batch()
    message = seal_batch(batch, example_key(), TOPIC)
    opened, reference = open_batch_columns(message, TOPIC, KEYS), open_batch(message, TOPIC, KEYS)
    assert opened.to_batch() == reference  # the wire's values (quantised), as open_batch gives them
    assert (opened.device_id, opened.seq, opened.counters, opened.fixes) == (
        batch.device_id, batch.seq, batch.counters, FixColumns.of(reference.fixes))  # fmt: skip
    header_only = seal_batch(replace(batch, fixes=()), example_key(), TOPIC)
    assert len(open_batch_columns(header_only, TOPIC, KEYS).fixes) == 0
