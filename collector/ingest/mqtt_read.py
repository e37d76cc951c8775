"""The ingest's MQTT client: paho-mqtt with a read path that keeps up with a flood.

How this works. The broker delivers one session's messages in order, so whatever a
flooding device gets into the collector's session sits in front of every other device's
batch until this process has read it. paho reads each packet with at least three
``recv`` calls (the type byte, the length byte by byte, then the rest), builds an
``MQTTMessage`` (copying the payload three times) and goes back to ``select`` after every
packet: about 30,000 small packets or a few hundred MB a second here, slower than
Mosquitto writes a 50,000-message QoS 0 + 600 x 1 MiB flood, so another device's batch
waited 1-2 s behind it (docs/security.md section 4). :class:`IngestClient` keeps paho for
everything else (connect, subscribe, acks, keepalive, reconnect, TLS) and replaces its
packet reader:

* the socket is read in large chunks (``recv_into`` one buffer); every whole packet in
  the buffer is handled before paho goes back to ``select`` (``loop_read``), and the
  socket wrapper's ``pending()`` (the hook paho already has for TLS) tells paho when whole
  packets are still buffered, so none waits for the next ``select``;
* a PUBLISH is shown to ``screen(topic, qos, payload_bytes)`` as soon as its variable
  header is in, before its payload is read. A refused one is skipped as its bytes arrive
  (never copied, never an ``MQTTMessage``) and, at QoS 1, acknowledged at once; the screen
  counts it. Only admitted packets go to paho's own handler and ``on_message``;
* nothing larger than ``max_payload_bytes`` (plus the largest header) is ever held: a
  bigger PUBLISH must be refused by the screen, any other packet that big is a protocol
  error (paho drops the connection and reconnects).

It overrides two private methods of paho 2.x (``_packet_read``, ``_create_socket``);
``tests/test_ingest_mqtt_read.py`` checks them against a real broker.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.exception import MalformedPacket

__all__ = ["PUBLISH_HEADER_MAX_BYTES", "READ_BUDGET_PACKETS", "IngestClient", "Screen"]

#: ``screen(topic, qos, payload_bytes) -> admit?``, called on paho's thread for every
#: PUBLISH before its payload is read; it counts what it refuses.
Screen = Callable[[bytes, int, int], bool]

#: room for a PUBLISH's headers beyond its payload: fixed header (5), topic (2 + up to
#: 65,535), packet id (2), properties (length + what a broker adds)
PUBLISH_HEADER_MAX_BYTES = 96 * 1024
#: packets handled per ``loop_read`` before paho gets to send (acks) and check keepalive
READ_BUDGET_PACKETS = 1000
_PUBLISH = 0x30
_SKIPPED = (0, bytearray())  # a refused PUBLISH was skipped: read on


class _Unreadable(Exception):  # noqa: N818 (paho's protocol error, never leaves this module)
    """A malformed length, or a packet other than a refused PUBLISH too large for the buffer."""


class _PacketSocket:
    """paho's socket, read in large chunks and cut into MQTT packets.

    paho calls ``fileno``, ``setblocking``, ``send``, ``close``, ``pending`` and ``recv``;
    :class:`IngestClient` reads packets with :meth:`read_packet`.
    """

    def __init__(self, sock: socket.socket, capacity: int) -> None:
        self.sock = sock
        self.capacity = capacity
        self._buf = bytearray(capacity)
        self._start = 0  # first unread byte
        self._end = 0  # end of the bytes received
        self._skip = 0  # bytes of a refused payload still to discard
        self._admitted = False  # the PUBLISH at the front was screened and admitted
        self.received = 0  # bytes read from the socket (a refused payload's included)

    # ------------------------------------------------------------ what paho calls

    def fileno(self) -> int:
        return self.sock.fileno()

    def setblocking(self, flag: bool) -> None:
        self.sock.setblocking(flag)

    def send(self, data: bytes | bytearray) -> int:
        return self.sock.send(data)

    def close(self) -> None:
        self.sock.close()

    def pending(self) -> int:
        """Non-zero while there is work without reading the socket: a whole packet (or bytes
        of a refused payload) buffered, or bytes TLS already decrypted."""
        buffered = self._end - self._start
        try:
            if buffered and (self._skip or self._whole_packet_buffered()):
                return buffered
        except _Unreadable:
            return buffered  # called from paho's loop: let read_packet raise it where it is handled
        return self.sock.pending() if isinstance(self.sock, ssl.SSLSocket) else 0

    def recv(self, size: int) -> bytes:
        """paho's generic read (not used by :class:`IngestClient`): the buffer first."""
        if self._start < self._end:
            data = bytes(self._buf[self._start : min(self._end, self._start + size)])
            self._start += len(data)
            return data
        return self.sock.recv(size)

    # ------------------------------------------------------------ the packet reader

    def read_packet(self, screen: Callable[[bytes, int, int, int], bool]) -> tuple[int, bytearray]:
        """The next admitted packet: (its first byte, everything after the fixed header).

        ``screen(topic, qos, mid, payload_bytes)`` sees every PUBLISH first; refused ones
        are skipped. Raises ``BlockingIOError`` (or TLS want-read / want-write) when the
        socket has nothing more yet (the state is kept for the next call),
        ``ConnectionError`` at the end of the stream, :class:`_Unreadable` for a packet
        that cannot be held.
        """
        while True:
            if self._skip:
                if self._start == self._end:
                    self._fill()
                taken = min(self._skip, self._end - self._start)
                self._skip -= taken
                self._start += taken
                continue
            packet = self._next(screen)
            if packet is None:
                self._fill()
            elif packet is not _SKIPPED:
                return packet

    def _fill(self) -> None:
        if self._start == self._end:
            self._start = self._end = 0
        elif self._start:
            # the partial packet goes to the front: a whole one then always fits
            self._buf[: self._end - self._start] = self._buf[self._start : self._end]
            self._end -= self._start
            self._start = 0
        with memoryview(self._buf) as view:
            count = self.sock.recv_into(view[self._end :])
        if not count:
            raise ConnectionError("the broker closed the connection")
        self._end += count
        self.received += count

    def _fixed_header(self) -> tuple[int, int] | None:
        """(header length, remaining length) of the packet at the front, None if incomplete."""
        buf, i, end = self._buf, self._start + 1, self._end
        remaining, shift = 0, 0
        while i < end:
            byte = buf[i]
            remaining |= (byte & 0x7F) << shift
            i += 1
            if not byte & 0x80:
                return i - self._start, remaining
            shift += 7
            if shift > 21:
                raise _Unreadable("malformed remaining length (over 4 bytes)")
        return None

    def _whole_packet_buffered(self) -> bool:
        header = self._fixed_header()
        return header is not None and self._start + sum(header) <= self._end

    def _next(self, screen: Callable[[bytes, int, int, int], bool]) -> tuple[int, bytearray] | None:
        """The packet at the front, :data:`_SKIPPED`, or None while it is incomplete."""
        header = self._fixed_header()
        if header is None:
            return None
        head, remaining = header
        buf, start = self._buf, self._start
        command = buf[start]
        total = head + remaining
        if command & 0xF0 == _PUBLISH and not self._admitted:
            qos = (command >> 1) & 0x03
            variable = self._publish_header(start + head, remaining, qos)
            if variable is None:
                return None
            topic, mid, variable_len = variable
            payload_bytes = remaining - variable_len
            if not screen(topic, qos, mid, payload_bytes):
                self._start = start + head + variable_len
                self._skip = payload_bytes
                return _SKIPPED
            self._admitted = True  # screened once, however many reads its payload takes
        if total > self.capacity:
            raise _Unreadable(f"packet type {command >> 4} of {total} bytes, over the {self.capacity}-byte buffer")
        if self._end - start < total:
            return None
        self._start = start + total
        self._admitted = False
        return command, buf[start + head : start + total]

    def _publish_header(self, at: int, remaining: int, qos: int) -> tuple[bytes, int, int] | None:
        """(topic, packet id, length of the variable header) of the PUBLISH whose variable
        header starts at ``at``; None while it is incomplete."""
        buf, end = self._buf, self._end
        if end - at < 2:
            return None
        topic_len = (buf[at] << 8) | buf[at + 1]
        i = at + 2 + topic_len
        mid = 0
        if qos:
            if end - i < 2:
                return None
            mid = (buf[i] << 8) | buf[i + 1]
            i += 2
        props, shift = 0, 0
        while True:  # MQTT 5 properties length (variable byte integer)
            if i >= end:
                return None
            byte = buf[i]
            props |= (byte & 0x7F) << shift
            i += 1
            if not byte & 0x80:
                break
            shift += 7
            if shift > 21:
                raise _Unreadable("malformed properties length")
        variable_len = i + props - at
        if variable_len > remaining or variable_len > PUBLISH_HEADER_MAX_BYTES:
            raise _Unreadable(f"PUBLISH variable header of {variable_len} bytes in a {remaining}-byte packet")
        if end < at + variable_len:
            return None
        return bytes(buf[at + 2 : at + 2 + topic_len]), mid, variable_len


class IngestClient(mqtt.Client):
    """A paho MQTT 5 client (``manual_ack=True``) whose reads are screened and batched.

    Args:
        client_id: MQTT client id.
        screen: decides on every PUBLISH from its topic, QoS and payload size before the
            payload is read (see :data:`Screen`); refused QoS 1 ones are acknowledged here.
        max_payload_bytes: the largest payload that can be admitted; the screen must refuse
            bigger ones (they are never held in memory).
    """

    def __init__(self, client_id: str, *, screen: Screen, max_payload_bytes: int) -> None:
        super().__init__(
            CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5, manual_ack=True
        )
        self._screen = screen
        self._capacity = 8 + PUBLISH_HEADER_MAX_BYTES + max_payload_bytes  # 8: the fixed header
        self.skipped_bytes = 0  # payload bytes of refused PUBLISH packets, never copied

    def _create_socket(self) -> Any:
        sock = super()._create_socket()
        if not isinstance(sock, socket.socket):
            return sock  # paho's websocket wrapper has no recv_into: paho's own reader
        return _PacketSocket(sock, self._capacity)

    def _screen_publish(self, topic: bytes, qos: int, mid: int, payload_bytes: int) -> bool:
        if qos == 2 or self._screen(topic, qos, payload_bytes):
            return True  # QoS 2 (never subscribed to) keeps paho's own flow
        self.skipped_bytes += payload_bytes
        if qos == 1:
            self.ack(mid, qos)
        return False

    def loop_read(self, max_packets: int = 1) -> MQTTErrorCode:
        """Handle every whole packet that has arrived (up to :data:`READ_BUDGET_PACKETS`),
        not paho's one packet per ``select``."""
        del max_packets
        for _ in range(READ_BUDGET_PACKETS):
            if self._sock is None:
                return MQTTErrorCode.MQTT_ERR_NO_CONN
            rc = self._packet_read()
            if rc == MQTTErrorCode.MQTT_ERR_AGAIN:
                return MQTTErrorCode.MQTT_ERR_SUCCESS
            if rc > 0:
                return self._loop_rc_handle(rc)
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    def _packet_read(self) -> MQTTErrorCode:
        sock = self._sock
        if not isinstance(sock, _PacketSocket):
            return super()._packet_read()
        before = sock.received
        try:
            packet = sock.read_packet(self._screen_publish)
        except (BlockingIOError, ssl.SSLWantReadError):
            return MQTTErrorCode.MQTT_ERR_AGAIN
        except ssl.SSLWantWriteError:
            self._call_socket_register_write()
            return MQTTErrorCode.MQTT_ERR_AGAIN
        except _Unreadable as exc:
            self._easy_log(mqtt.MQTT_LOG_ERR, "protocol error from the broker: %s", exc)
            return MQTTErrorCode.MQTT_ERR_PROTOCOL
        except OSError as exc:  # ConnectionError included
            self._easy_log(mqtt.MQTT_LOG_ERR, "failed to receive on socket: %s", exc)
            return MQTTErrorCode.MQTT_ERR_CONN_LOST
        finally:
            if sock.received != before:
                with self._msgtime_mutex:
                    self._last_bytes_received = mqtt.time_func()
        command, body = packet
        self._in_packet = {
            "command": command,
            "have_remaining": 1,
            "remaining_count": [],
            "remaining_mult": 1,
            "remaining_length": len(body),
            "packet": body,
            "to_process": 0,
            "pos": 0,
        }
        try:
            return self._packet_handle()
        except MalformedPacket as exc:
            self._easy_log(mqtt.MQTT_LOG_DEBUG, "Received malformed packet: %s", exc)
            return MQTTErrorCode.MQTT_ERR_PROTOCOL
        finally:
            self._in_packet = {
                "command": 0,
                "have_remaining": 0,
                "remaining_count": [],
                "remaining_mult": 1,
                "remaining_length": 0,
                "packet": bytearray(b""),
                "to_process": 0,
                "pos": 0,
            }

