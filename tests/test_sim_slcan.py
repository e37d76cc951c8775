"""Simulator SLCAN adapter: the pure command interpreter and frame encoder."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from firmware_sim import CanFrame, SlcanAdapter, encode_frame

BEL = b"\a"


def opened() -> SlcanAdapter:
    adapter = SlcanAdapter()
    assert adapter.feed(b"O\r").reply == b"\r"
    return adapter


# -- encoding -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("frame", "line"),
    [
        (CanFrame(0x3B0, bytes([1, 0, 1, 0, 0, 0, 0, 0])), b"t3B080100010000000000\r"),
        (CanFrame(0x120, b""), b"t1200\r"),
        (CanFrame(0x7FF, b"\xff"), b"t7FF1FF\r"),
        (CanFrame(0x18FF0A0, b"\x01\x02", extended=True), b"T018FF0A020102\r"),
        (CanFrame(0x1A0, remote=True, dlc=8), b"r1A08\r"),
        (CanFrame(0x1FFFFFFF, remote=True, dlc=0, extended=True), b"R1FFFFFFF0\r"),
        (CanFrame(0x123, bytes(12), fd=True), b"d1239" + b"00" * 12 + b"\r"),
        (CanFrame(0x123, bytes(64), fd=True, bitrate_switch=True, extended=True), b"B00000123F" + b"00" * 64 + b"\r"),
        (CanFrame(0x123, b"\xab", fd=True), b"d1231AB\r"),
    ],
)
def test_frame_encoding_golden(frame: CanFrame, line: bytes) -> None:
    assert encode_frame(frame) == line


def test_timestamp_suffix_is_milliseconds_modulo_a_minute() -> None:
    assert encode_frame(CanFrame(0x100, b"\x01"), timestamp_ms=60_000 + 0x1234) == b"t100101" + b"1234\r"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"arbitration_id": 0x800}, "standard limit"),
        ({"arbitration_id": 0x20000000, "extended": True}, "extended limit"),
        ({"arbitration_id": 1, "data": bytes(9)}, "exceeds 8"),
        ({"arbitration_id": 1, "data": bytes(9), "fd": True}, "not a valid FD length"),
        ({"arbitration_id": 1, "data": b"\x01", "remote": True}, "remote frame"),
        ({"arbitration_id": 1, "remote": True, "dlc": 9}, "dlc 9"),
        ({"arbitration_id": 1, "bitrate_switch": True}, "bitrate_switch"),
    ],
)
def test_frame_validation(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        CanFrame(**kwargs)  # type: ignore[arg-type]


# -- commands -------------------------------------------------------------------------


def test_python_can_open_sequence_is_accepted_even_twice() -> None:
    adapter = SlcanAdapter()
    # what python-can's slcanBus sends for bitrate=500000: C, S6, "", O, then O again
    reply = adapter.feed(b"C\rS6\r\rO\rO\r")
    assert reply.reply == b"\r\r\r\r\r"
    assert reply.errors == ()
    assert adapter.state == "open"
    assert adapter.bitrate_command == "S6"
    assert adapter.counters["repeated"] == 2  # C while closed, O while open


def test_commands_split_across_feeds() -> None:
    adapter = SlcanAdapter()
    assert adapter.feed(b"S").reply == b""
    assert adapter.feed(b"4").reply == b""
    assert adapter.feed(b"\r").reply == b"\r"
    assert adapter.bitrate_command == "S4"


@pytest.mark.parametrize(("command", "answer"), [(b"V\r", b"V1013\r"), (b"N\r", b"NLW01\r"), (b"F\r", b"F00\r")])
def test_information_commands(command: bytes, answer: bytes) -> None:
    assert SlcanAdapter().feed(command).reply == answer
    assert opened().feed(command).reply == answer


def test_status_flags_report_and_clear_an_overrun() -> None:
    adapter = opened()
    adapter.note_overrun()
    assert adapter.feed(b"F\r").reply == b"F08\r"
    assert adapter.feed(b"F\r").reply == b"F00\r"


@pytest.mark.parametrize("command", [b"S0", b"S8", b"s031C", b"Y2", b"Y5", b"Z1", b"Z0", b"M00000000", b"mFFFFFFFF"])
def test_setup_commands_while_closed(command: bytes) -> None:
    adapter = SlcanAdapter()
    assert adapter.feed(command + b"\r").reply == b"\r"


@pytest.mark.parametrize("command", [b"S6", b"s031C", b"Y2", b"Z1", b"M00000000"])
def test_setup_commands_while_open_ring_the_bell(command: bytes) -> None:
    adapter = opened()
    reply = adapter.feed(command + b"\r")
    assert reply.reply == BEL
    assert reply.errors == ("channel_open",)
    assert adapter.counters["error_channel_open"] == 1


@pytest.mark.parametrize(
    ("command", "reason"),
    [
        (b"S9", "unknown_command"),  # 83.3 kbit/s is not in the Lawicel table
        (b"X", "unknown_command"),
        (b"Ofoo", "unknown_command"),
        (b"s03", "unknown_command"),
        (b"s0G1C", "unknown_command"),
        (b"Y3", "unknown_command"),
        (b"Z2", "unknown_command"),
        (b"\xff\xfe", "not_ascii"),
    ],
)
def test_bad_commands_ring_the_bell_with_a_reason(command: bytes, reason: str) -> None:
    adapter = SlcanAdapter()
    reply = adapter.feed(command + b"\r")
    assert reply.reply == BEL
    assert reply.errors == (reason,)
    assert adapter.counters[f"error_{reason}"] == 1


def test_transmit_frames_are_acknowledged_and_decoded() -> None:
    adapter = opened()
    reply = adapter.feed(
        b"t1230\rt12320102\rT1234567830A0B0C\rr1238\rR000001234\rd1239" + b"11" * 12 + b"\rb7FFF" + b"22" * 64 + b"\r"
    )
    assert reply.reply == b"z\rz\rZ\rz\rZ\rz\rz\r"
    assert reply.frames == (
        CanFrame(0x123, b""),
        CanFrame(0x123, b"\x01\x02"),
        CanFrame(0x12345678, b"\x0a\x0b\x0c", extended=True),
        CanFrame(0x123, remote=True, dlc=8),
        CanFrame(0x123, remote=True, dlc=4, extended=True),
        CanFrame(0x123, b"\x11" * 12, fd=True),
        CanFrame(0x7FF, b"\x22" * 64, fd=True, bitrate_switch=True),
    )
    assert adapter.counters["frames_from_host"] == 7


@pytest.mark.parametrize(
    "command",
    [
        b"t12",  # truncated id
        b"t123",  # no dlc
        b"t1232AA",  # dlc 2 but one byte
        b"t1231AAB",  # odd hex
        b"t1239" + b"00" * 9,  # classic dlc 9
        b"t12G1AA",  # non-hex id
        b"T1234567",  # short extended id
        b"r1239",  # remote dlc 9
        b"r12310A",  # remote with data
        b"T2000000000",  # 29-bit overflow
        b"d123F" + b"00" * 63,  # FD length mismatch
    ],
)
def test_malformed_frames_ring_the_bell(command: bytes) -> None:
    adapter = opened()
    reply = adapter.feed(command + b"\r")
    assert reply.reply == BEL
    assert reply.errors == ("bad_frame",)
    assert reply.frames == ()


def test_frames_while_closed_or_listening_are_refused() -> None:
    adapter = SlcanAdapter()
    assert adapter.feed(b"t1230\r").errors == ("channel_closed",)
    assert adapter.feed(b"L\r").reply == b"\r"
    assert adapter.state == "listen"
    assert adapter.feed(b"t1230\r").errors == ("listen_only",)
    assert adapter.feed(b"O\r").errors == ("channel_open",)  # listen -> open needs a close first
    assert adapter.feed(b"C\rO\r").reply == b"\r\r"


def test_oversized_line_is_refused_once_and_the_stream_resyncs() -> None:
    adapter = opened()
    reply = adapter.feed(b"t" + b"A" * 500 + b"\rt1230\r")
    assert reply.reply == BEL + b"z\r"
    assert reply.errors == ("oversized",)
    assert reply.frames == (CanFrame(0x123, b""),)


def test_crlf_and_empty_commands_are_tolerated() -> None:
    adapter = SlcanAdapter()
    assert adapter.feed(b"\r\r\nO\r\n").reply == b"\r\r\r"
    assert adapter.is_open


def test_frames_reach_the_host_only_while_open() -> None:
    adapter = SlcanAdapter()
    frame = CanFrame(0x1A0, b"\x10\x27\x01\x00\x05\x00\x00\x00")
    assert adapter.encode_for_host(frame) is None
    assert adapter.counters["frames_dropped_closed"] == 1
    adapter.feed(b"O\r")
    assert adapter.encode_for_host(frame) == b"t1A0810270100050000" + b"00\r"
    adapter.feed(b"C\rZ1\rO\r")
    assert adapter.encode_for_host(frame, time_ms=1000) == b"t1A081027010005000000" + b"03E8\r"
    assert adapter.counters["frames_to_host"] == 2


_TOKENS = (b"\r", BEL, b"z\r", b"Z\r")


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=40) | st.sampled_from([b"O\r", b"C\r", b"t1230\r", b"\r", b"L\r", b"V\r"])))
def test_any_byte_stream_gets_an_answer_per_command_and_never_raises(chunks: list[bytes]) -> None:
    adapter = SlcanAdapter()
    for chunk in chunks:
        reply = adapter.feed(chunk)
        rest = reply.reply
        # every reply is made of OK / BEL / z / Z / an information answer ending in CR
        while rest:
            for token in _TOKENS:
                if rest.startswith(token):
                    rest = rest[len(token) :]
                    break
            else:
                end = rest.index(b"\r")
                assert rest[:1] in (b"V", b"N", b"F")
                rest = rest[end + 1 :]
        assert len(reply.errors) == reply.reply.count(BEL)
