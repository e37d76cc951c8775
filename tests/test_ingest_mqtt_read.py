"""The ingest's MQTT packet reader (collector.ingest.mqtt_read) on a socket pair: framing
across any split of the byte stream, refused payloads skipped unread, ``pending()`` only for
whole packets, nothing too large held. The flood itself, through a real broker, is
tests/security/test_finding4_resources.py."""

from __future__ import annotations

import contextlib
import socket
import struct
from collections.abc import Iterator

import pytest

from collector.ingest.mqtt_read import _PacketSocket, _Unreadable


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        n, digit = divmod(n, 128)
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out)


def publish(topic: str, payload: bytes, *, qos: int = 1, mid: int = 7, props: bytes = b"") -> bytes:
    """An MQTT 5 PUBLISH packet as a broker sends it."""
    body = struct.pack("!H", len(topic)) + topic.encode() + (struct.pack("!H", mid) if qos else b"")
    body += _varint(len(props)) + props + payload
    return bytes([0x30 | qos << 1]) + _varint(len(body)) + body


SUBACK = bytes([0x90, 0x04, 0x00, 0x01, 0x00, 0x01])


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    ours, broker = socket.socketpair()
    ours.setblocking(False)
    yield ours, broker
    ours.close()
    broker.close()


class Screen:
    """Refuses QoS 0 and the topic ``lw/v1/junk/batch``; records what it saw."""

    def __init__(self) -> None:
        self.seen: list[tuple[bytes, int, int, int]] = []

    def __call__(self, topic: bytes, qos: int, mid: int, size: int) -> bool:
        self.seen.append((topic, qos, mid, size))
        return qos == 1 and topic != b"lw/v1/junk/batch"


def read_all(reader: _PacketSocket, screen: Screen) -> list[tuple[int, bytes]]:
    packets = []
    while True:
        try:
            command, body = reader.read_packet(screen)
        except BlockingIOError:
            return packets
        packets.append((command, bytes(body)))


def test_packets_are_cut_right_however_the_stream_is_split(pair: tuple[socket.socket, socket.socket]) -> None:
    ours, broker = pair
    good = publish("lw/v1/car-1/batch", b"\xd2" + b"g" * 300_000, mid=1)
    stream = SUBACK + publish("lw/v1/car-1/batch", b"\x00" * 200, qos=0) + good
    stream += publish("lw/v1/junk/batch", b"\xff" * 200_000, mid=2) + publish("lw/v1/car-2/batch", b"ok", mid=3)
    reader = _PacketSocket(ours, 512 * 1024)
    screen = Screen()
    packets: list[tuple[int, bytes]] = []
    for at in range(0, len(stream), 7919):  # odd-sized pieces: headers and payloads split anywhere
        broker.sendall(stream[at : at + 7919])
        packets += read_all(reader, screen)
    assert [(command, len(body)) for command, body in packets] == [
        (0x90, 4),
        (0x32, len(good) - 4),  # PUBLISH QoS 1: everything after the fixed header (4 bytes here)
        (0x32, 2 + 17 + 2 + 1 + 2),
    ]
    assert packets[1][1].endswith(b"g" * 300_000)
    assert packets[2][1].endswith(b"ok")
    assert [(t, q, m, s) for t, q, m, s in screen.seen] == [
        (b"lw/v1/car-1/batch", 0, 0, 200),
        (b"lw/v1/car-1/batch", 1, 1, 300_001),
        (b"lw/v1/junk/batch", 1, 2, 200_000),
        (b"lw/v1/car-2/batch", 1, 3, 2),
    ]
    assert reader.received == len(stream)
    assert reader.pending() == 0


def test_pending_counts_whole_packets_only(pair: tuple[socket.socket, socket.socket]) -> None:
    ours, broker = pair
    reader = _PacketSocket(ours, 64 * 1024)
    screen = Screen()
    first, second = publish("lw/v1/a/batch", b"1" * 10, mid=1), publish("lw/v1/b/batch", b"2" * 1000, mid=2)
    broker.sendall(first + second[:500])
    assert reader.read_packet(screen)[1].endswith(b"1" * 10)
    assert reader.pending() == 0  # half a packet: paho must wait in select, not spin
    broker.sendall(second[500:] + first)
    assert reader.read_packet(screen)[1].endswith(b"2" * 1000)  # one recv took the rest and the next
    assert reader.pending() == len(first)  # a whole packet buffered: paho must not wait in select
    assert reader.read_packet(screen)[1].endswith(b"1" * 10)
    assert reader.pending() == 0


def test_a_refused_payload_larger_than_the_buffer_is_skipped_unread(pair: tuple[socket.socket, socket.socket]) -> None:
    ours, broker = pair
    reader = _PacketSocket(ours, 64 * 1024)
    screen = Screen()
    junk = publish("lw/v1/junk/batch", b"\xff" * (1 << 20), mid=9)  # 16 x the buffer
    after = publish("lw/v1/car-1/batch", b"fine", mid=10)
    broker.setblocking(False)
    sent = 0
    packets = []
    stream = junk + after
    while sent < len(stream):
        with contextlib.suppress(BlockingIOError):  # our side has not read enough yet
            sent += broker.send(stream[sent : sent + 100_000])
        packets += read_all(reader, screen)
    packets += read_all(reader, screen)
    assert [body[-4:] for _, body in packets] == [b"fine"]
    assert screen.seen[0] == (b"lw/v1/junk/batch", 1, 9, 1 << 20)


def test_an_admitted_packet_larger_than_the_buffer_is_refused_not_held(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    ours, broker = pair
    broker.sendall(publish("lw/v1/car-1/batch", b"x" * 100_000)[:1000])
    with pytest.raises(_Unreadable, match="over the 65536-byte buffer"):
        _PacketSocket(ours, 64 * 1024).read_packet(Screen())  # a screen must refuse what is too large


def test_a_malformed_length_is_unreadable(pair: tuple[socket.socket, socket.socket]) -> None:
    ours, broker = pair
    broker.sendall(bytes([0x90, 0x02, 0x00, 0x01]) + bytes([0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01]))  # a fifth length byte
    reader = _PacketSocket(ours, 64 * 1024)
    assert reader.read_packet(Screen()) == (0x90, bytearray(b"\x00\x01"))
    assert reader.pending() == 6  # paho's loop asks first: no exception there, it calls the reader
    with pytest.raises(_Unreadable, match="remaining length"):
        reader.read_packet(Screen())


def test_the_end_of_the_stream_is_a_lost_connection(pair: tuple[socket.socket, socket.socket]) -> None:
    ours, broker = pair
    reader = _PacketSocket(ours, 64 * 1024)
    broker.sendall(publish("lw/v1/car-1/batch", b"x" * 100)[:50])
    broker.close()
    with pytest.raises(ConnectionError):
        reader.read_packet(Screen())
