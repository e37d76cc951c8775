"""SignalDecoder: golden decodes of the sample DBC, map options, and hostile frames."""

from __future__ import annotations

import struct
from collections.abc import Sequence

import can
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.canbus import (
    SAMPLE_DBC,
    SAMPLE_MAP,
    SignalDecoder,
    load_dbc,
    load_signal_map,
    parse_dbc,
    parse_signal_map,
)
from protocol import SignalSample
from protocol.records import SampleValue

T0 = 1_714_550_400.0  # 2024-05-01T08:00:00Z
T0_MS = 1_714_550_400_000


def frame(arb_id: int, data: bytes, t: float = T0, **flags: bool) -> can.Message:
    return can.Message(arbitration_id=arb_id, data=data, timestamp=t, is_extended_id=flags.pop("ext", False), **flags)


_SAMPLE_DBC = load_dbc(SAMPLE_DBC)
_SAMPLE_MAP = load_signal_map(SAMPLE_MAP)


def sample_decoder() -> SignalDecoder:
    return SignalDecoder([_SAMPLE_DBC], _SAMPLE_MAP)


def test_from_files_equals_the_layered_loaders() -> None:
    decoder = SignalDecoder.from_files([SAMPLE_DBC], SAMPLE_MAP)
    assert decoder.can_filters == sample_decoder().can_filters
    assert decoder.signal_map == _SAMPLE_MAP


def decoder_for(map_text: str, dbc_text: str | None = None) -> SignalDecoder:
    dbc = _SAMPLE_DBC if dbc_text is None else parse_dbc(dbc_text, "test.dbc")
    return SignalDecoder([dbc], parse_signal_map(map_text, "test_map.toml"))


# --- golden decodes of every mapped sample message -------------------------------------

GOLDEN = [
    (0x120, "0208050000000000", [("Vehicle.LowVoltageSystemState", "ON")]),
    (0x1A0, "C409010700000000", [("Vehicle.Speed", 25.0)]),
    (
        0x3B0,
        "1101010000000000",
        [
            ("Vehicle.Cabin.Door.Row1.DriverSide.IsOpen", True),
            ("Vehicle.Cabin.Door.Row1.PassengerSide.IsOpen", False),
            ("Vehicle.Cabin.Door.Row2.DriverSide.IsOpen", False),
            ("Vehicle.Cabin.Door.Row2.PassengerSide.IsOpen", False),
            ("Vehicle.Body.Trunk.Rear.IsOpen", True),
        ],
    ),
    (0x3C0, "3031000000000000", [("Vehicle.LowVoltageBattery.CurrentVoltage", 12.592)]),
    (0x3D0, "40E2010000000000", [("Vehicle.TraveledDistance", 12345.6)]),
    (
        0x3E0,
        "96100EB985FF0200",
        [
            ("Vehicle.Powertrain.TractionBattery.StateOfCharge.Displayed", 75.0),
            ("Vehicle.Powertrain.TractionBattery.StateOfHealth", 92.5),
            ("Vehicle.Powertrain.TractionBattery.CurrentVoltage", 360.0),
            ("Vehicle.Powertrain.TractionBattery.CurrentCurrent", -12.3),
            ("Vehicle.Powertrain.TractionBattery.Charging.IsCharging", False),
            ("Vehicle.Powertrain.TractionBattery.IsPowerConnected", True),
        ],
    ),
]


@pytest.mark.parametrize(("arb_id", "hex_data", "expected"), GOLDEN, ids=[hex(g[0]) for g in GOLDEN])
def test_golden_decode_of_each_sample_message(
    arb_id: int, hex_data: str, expected: list[tuple[str, SampleValue]]
) -> None:
    decoder = sample_decoder()
    samples = decoder.decode(frame(arb_id, bytes.fromhex(hex_data)))
    assert samples == [SignalSample(name=n, time_ms=T0_MS, value=v) for n, v in expected]
    assert [type(s.value) for s in samples] == [type(v) for _, v in expected]
    assert decoder.counters.frames_decoded == 1
    assert decoder.counters.samples_emitted == len(expected)


def test_every_ignition_state_maps_to_its_contract_value() -> None:
    decoder = sample_decoder()
    values = [decoder.decode(frame(0x120, bytes([raw, 0, 0, 0, 0, 0, 0, 0]), T0 + raw))[0].value for raw in range(5)]
    assert values == ["OFF", "ACC", "ON", "START", "LOCK"]


def test_undefined_ignition_code_is_counted_as_unmapped_not_emitted() -> None:
    decoder = sample_decoder()
    assert decoder.decode(frame(0x120, bytes([7, 0, 0, 0, 0, 0, 0, 0]))) == []
    assert decoder.counters.unmapped_values == 1
    assert decoder.counters.samples_emitted == 0


def test_filters_list_exactly_the_mapped_standard_ids() -> None:
    decoder = sample_decoder()
    assert decoder.can_filters == [
        {"can_id": arb_id, "can_mask": 0x7FF, "extended": False}
        for arb_id in (0x120, 0x1A0, 0x3B0, 0x3C0, 0x3D0, 0x3E0)
    ]


def test_time_override_and_frame_timestamp() -> None:
    decoder = sample_decoder()
    assert decoder.decode(frame(0x3E0, bytes([100] + [0] * 7), T0 + 1.2346))[0].time_ms == T0_MS + 1235
    assert decoder.decode(frame(0x3E0, bytes([120] + [0] * 7), T0), time_ms=T0_MS + 99_000)[0].time_ms == T0_MS + 99_000


@pytest.mark.parametrize("stamp", [0.0, float("nan"), float("inf"), 5e12])
def test_implausible_frame_time_is_counted(stamp: float) -> None:
    decoder = sample_decoder()
    assert decoder.decode(frame(0x120, bytes(8), stamp)) == []
    assert decoder.counters.bad_timestamps == 1


@pytest.mark.parametrize("time_ms", [0, -1, True, 1.5e12])
def test_implausible_caller_time_is_counted(time_ms: object) -> None:
    decoder = sample_decoder()
    assert decoder.decode(frame(0x120, bytes(8)), time_ms=time_ms) == []  # type: ignore[arg-type]
    assert decoder.counters.bad_timestamps == 1


# --- hostile and odd frames -----------------------------------------------------------


def test_unknown_remote_and_error_frames_are_counted_and_dropped() -> None:
    decoder = sample_decoder()
    assert decoder.decode(frame(0x0C0, bytes(8))) == []  # ENGINE_DATA: in the DBC, not mapped
    assert decoder.decode(frame(0x7FF, bytes(8))) == []
    assert decoder.decode(frame(0x120, bytes(8), ext=True)) == []  # same number, extended id
    assert decoder.decode(frame(0x120, b"", is_remote_frame=True)) == []
    assert decoder.decode(can.Message(arbitration_id=0x20000080, is_error_frame=True, timestamp=T0)) == []
    counts = decoder.counters.as_dict()
    assert (counts["unknown_id"], counts["remote_frames"], counts["error_frames"]) == (3, 1, 1)
    assert counts["frames_received"] == 5
    assert counts["frames_decoded"] == 0


def test_short_frame_decodes_the_signals_it_fully_contains() -> None:
    decoder = sample_decoder()
    samples = decoder.decode(frame(0x3B0, bytes([0x01])))  # doors live in byte 0
    assert [s.value for s in samples] == [True, False, False, False, False]
    assert decoder.counters.short_frames == 1
    assert decoder.counters.signals_missing == 0


def test_short_frame_missing_a_mapped_signal_is_counted() -> None:
    decoder = sample_decoder()
    assert decoder.decode(frame(0x3C0, bytes([0x30]))) == []  # voltage needs bytes 0..1
    assert decoder.decode(frame(0x3C0, b"")) == []
    counts = decoder.counters
    assert (counts.short_frames, counts.signals_missing, counts.frames_decoded) == (2, 2, 2)


def test_long_frame_is_counted_and_decoded() -> None:
    decoder = sample_decoder()
    samples = decoder.decode(frame(0x3E0, bytes([200]) + bytes(63), is_fd=True))
    soc = "Vehicle.Powertrain.TractionBattery.StateOfCharge.Displayed"
    assert [s.value for s in samples if s.name == soc] == [100.0]
    assert decoder.counters.long_frames == 1


MUX_DBC = """VERSION ""
BS_:
BU_: A
BO_ 1280 MUXED: 8 A
 SG_ MUX M : 0|8@1+ (1,0) [0|255] "" A
 SG_ TEMP_A m1 : 8|16@1+ (0.1,0) [0|6553] "" A
 SG_ TEMP_B m2 : 8|16@1+ (0.1,0) [0|6553] "" A
BO_ 1281 FLOATY: 8 A
 SG_ F32 : 0|32@1- (1,0) [0|0] "" A
BO_ 2566914049 EXT_MSG: 8 A
 SG_ X : 0|8@1+ (1,0) [0|255] "" A
SIG_VALTYPE_ 1281 F32 : 1;
"""

MUX_MAP = """
[[signal]]
name = "Test.TempA"
dbc_message = "MUXED"
dbc_signal = "TEMP_A"
[[signal]]
name = "Test.Float"
dbc_message = "FLOATY"
dbc_signal = "F32"
[[signal]]
name = "Test.Ext"
dbc_message = "EXT_MSG"
dbc_signal = "X"
type = "int"
"""


def test_multiplexed_signal_only_from_its_group_and_bad_mux_is_a_decode_error() -> None:
    decoder = decoder_for(MUX_MAP, MUX_DBC)
    assert decoder.decode(frame(1280, bytes([1, 0xE8, 0x03, 0, 0, 0, 0, 0]))) == [
        SignalSample("Test.TempA", T0_MS, 100.0)
    ]
    assert decoder.decode(frame(1280, bytes([2, 0xE8, 0x03, 0, 0, 0, 0, 0]))) == []  # TEMP_B's group
    assert decoder.decode(frame(1280, bytes([3, 0, 0, 0, 0, 0, 0, 0]))) == []  # no such group
    assert decoder.counters.decode_errors == 1
    assert decoder.counters.frames_decoded == 2


def test_nan_float_signal_is_an_invalid_value() -> None:
    decoder = decoder_for(MUX_MAP, MUX_DBC)
    assert decoder.decode(frame(1281, struct.pack("<f", float("nan")) + bytes(4))) == []
    assert decoder.counters.invalid_values == 1
    assert decoder.decode(frame(1281, struct.pack("<f", -2.5) + bytes(4))) == [SignalSample("Test.Float", T0_MS, -2.5)]


def test_extended_ids_are_filtered_and_decoded_as_extended() -> None:
    decoder = decoder_for(MUX_MAP, MUX_DBC)
    assert {"can_id": 0x19000001, "can_mask": 0x1FFFFFFF, "extended": True} in decoder.can_filters
    assert decoder.decode(frame(0x19000001, bytes([7] + [0] * 7), ext=True)) == [SignalSample("Test.Ext", T0_MS, 7)]
    assert decoder.decode(frame(0x19000001 & 0x7FF, bytes(8))) == []
    assert decoder.counters.unknown_id == 1


@settings(max_examples=300, deadline=None)
@given(
    arb_id=st.sampled_from([0x120, 0x1A0, 0x3B0, 0x3C0, 0x3D0, 0x3E0, 0x0C0, 0x7FF, 0x123]),
    data=st.binary(max_size=64),
    extended=st.booleans(),
    remote=st.booleans(),
    error=st.booleans(),
    stamp=st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.just(T0)),
)
def test_any_frame_is_counted_never_raises(
    arb_id: int, data: bytes, extended: bool, remote: bool, error: bool, stamp: float
) -> None:
    decoder = sample_decoder()
    msg = can.Message(
        arbitration_id=arb_id, data=data, is_extended_id=extended, is_remote_frame=remote and not error,
        is_error_frame=error, timestamp=stamp, is_fd=len(data) > 8, check=False,
    )
    samples = decoder.decode(msg)
    c = decoder.counters
    assert c.frames_received == 1
    # every frame lands in exactly one bucket
    assert c.error_frames + c.remote_frames + c.unknown_id + c.bad_timestamps + c.decode_errors + c.frames_decoded == 1
    assert c.samples_emitted == len(samples)


# --- map options: values, scale, on_change, min_interval, heartbeat, deadband -----------


def feed(decoder: SignalDecoder, arb_id: int, payloads: Sequence[tuple[float, bytes]]) -> list[tuple[int, object]]:
    out: list[tuple[int, object]] = []
    for t, data in payloads:
        out += [(s.time_ms - T0_MS, s.value) for s in decoder.decode(frame(arb_id, data, T0 + t))]
    return out


def speed(kph: float) -> bytes:
    return struct.pack("<H", round(kph * 100)) + bytes(6)


def volts(v: float) -> bytes:
    return struct.pack("<H", round(v * 1000)) + bytes(6)


def test_values_by_enum_name_and_raw_integer_to_bool() -> None:
    decoder = decoder_for(
        """
[[signal]]
name = "Test.IgnitionOn"
dbc_message = "POWER_STATE"
dbc_signal = "IGNITION_STATE"
type = "bool"
values = { OFF = false, ACC = false, "2" = true, START = true }
on_change = false
"""
    )
    got = feed(decoder, 0x120, [(i, bytes([raw]) + bytes(7)) for i, raw in enumerate([0, 1, 2, 3, 4])])
    assert got == [(0, False), (1000, False), (2000, True), (3000, True)]
    assert decoder.counters.unmapped_values == 1  # LOCK has no entry


def test_values_on_a_plain_numeric_signal_use_raw_integers() -> None:
    decoder = decoder_for(
        """
[[signal]]
name = "Test.Running"
dbc_message = "POWER_STATE"
dbc_signal = "ENGINE_RUNNING"
values = { "0" = "stopped", "1" = "running" }
"""
    )
    assert feed(decoder, 0x120, [(0, bytes([0x08]) + bytes(7)), (1, bytes(8))]) == [(0, "running"), (1000, "stopped")]


def test_string_type_without_values_emits_enum_names() -> None:
    decoder = decoder_for(
        """
[[signal]]
name = "Test.Lock"
dbc_message = "SEATS_DOORS"
dbc_signal = "LOCK_STATE"
type = "string"
"""
    )
    assert feed(decoder, 0x3B0, [(0, bytes([0, 0, 2]) + bytes(5))]) == [(0, "DOUBLE_LOCKED")]


def test_scale_offset_and_int_rounding() -> None:
    decoder = decoder_for(
        """
[[signal]]
name = "Test.SpeedMph"
dbc_message = "VEHICLE_SPEED"
dbc_signal = "SPEED_KPH"
type = "int"
scale = 0.621371
offset = 1
"""
    )
    assert feed(decoder, 0x1A0, [(0, speed(12.34)), (1, speed(100.0))]) == [(0, 9), (1000, 63)]


def test_on_change_suppresses_repeats_and_counts_them() -> None:
    decoder = sample_decoder()  # doors: on_change, no interval
    closed, open_fl = bytes(8), bytes([1]) + bytes(7)
    samples = []
    for t, data in [(0, closed), (0.1, closed), (0.2, open_fl), (0.3, open_fl), (0.4, closed)]:
        samples += decoder.decode(frame(0x3B0, data, T0 + t))
    assert [(s.time_ms - T0_MS, s.name.split(".")[3:5], s.value) for s in samples[5:]] == [
        (200, ["Row1", "DriverSide"], True),
        (400, ["Row1", "DriverSide"], False),
    ]
    assert decoder.counters.samples_emitted == 7
    assert decoder.counters.samples_suppressed == 5 * 5 - 7


def test_on_change_false_emits_every_frame() -> None:
    decoder = decoder_for(
        """
[[signal]]
name = "Test.Soc"
dbc_message = "EV_BATTERY"
dbc_signal = "SOC_DISPLAYED"
on_change = false
"""
    )
    got = feed(decoder, 0x3E0, [(t, bytes([100]) + bytes(7)) for t in (0, 1, 2)])
    assert got == [(0, 50.0), (1000, 50.0), (2000, 50.0)]


def test_min_interval_and_deadband_on_speed() -> None:
    decoder = sample_decoder()  # Vehicle.Speed: min_interval_ms 1000, deadband 0.5
    got = feed(
        decoder,
        0x1A0,
        [(0, speed(10)), (0.5, speed(30)), (1.0, speed(30)), (2.0, speed(30.4)), (3.0, speed(30.5)), (3.5, speed(50))],
    )
    assert got == [(0, 10.0), (1000, 30.0), (3000, 30.5)]
    assert decoder.counters.samples_suppressed == 3


def test_heartbeat_and_deadband_on_battery_voltage() -> None:
    decoder = sample_decoder()  # deadband 0.2 V, heartbeat 30 s
    got = feed(
        decoder,
        0x3C0,
        [(t, volts(v)) for t, v in [(0, 12.5), (10, 12.6), (20, 12.69), (30, 12.7), (59, 12.7), (60, 12.7)]],
    )
    assert got == [(0, 12.5), (30_000, 12.7), (60_000, 12.7)]


def test_time_going_backwards_restarts_the_gate_and_is_counted() -> None:
    decoder = sample_decoder()
    got = feed(decoder, 0x1A0, [(100, speed(10)), (0, speed(20)), (0.5, speed(40))])
    assert got == [(100_000, 10.0), (0, 20.0)]
    assert decoder.counters.time_went_backwards == 1


def test_reset_forgets_last_values() -> None:
    decoder = sample_decoder()
    assert len(decoder.decode(frame(0x120, bytes(8)))) == 1
    assert decoder.decode(frame(0x120, bytes(8), T0 + 1)) == []
    decoder.reset()
    assert len(decoder.decode(frame(0x120, bytes(8), T0 + 2))) == 1
