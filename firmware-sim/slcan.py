"""An SLCAN (Lawicel) USB-CAN adapter, sans-I/O: host bytes in, reply bytes out.

How this works: :class:`SlcanAdapter` frames the host's byte stream on ``\\r``, runs
each command against a three-state channel (closed / open / listen-only) and returns the
bytes a real adapter would answer: ``\\r`` on success, BEL (``\\a``) on error, ``z\\r`` /
``Z\\r`` after a transmitted frame. It is deliberately forgiving where python-can's
``slcan`` driver needs it (``C`` while closed, ``O`` while open and the empty command are
all acknowledged, because the driver sends ``C``, ``S6``, an empty command and ``O``,
sometimes twice) and strict elsewhere (bitrate changes while open, frames while closed,
bad hex, over-long lines answer BEL and are counted by reason). Frames for the host are
encoded by :func:`encode_frame` and only let through while the channel is open.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field

__all__ = ["FD_LENGTHS", "CanFrame", "SlcanAdapter", "SlcanReply", "encode_frame"]

#: CAN FD data lengths by DLC code 0-15.
FD_LENGTHS = (0, 1, 2, 3, 4, 5, 6, 7, 8, 12, 16, 20, 24, 32, 48, 64)
_FD_CODE = {length: code for code, length in enumerate(FD_LENGTHS)}
OK = b"\r"
BEL = b"\a"
#: Longest valid command: ``B`` + 8 id digits + DLC + 64 data bytes in hex = 138 characters.
MAX_COMMAND = 160
_HEX = re.compile(r"[0-9A-Fa-f]*")


@dataclass(frozen=True, slots=True)
class CanFrame:
    """One CAN (or CAN FD) frame.

    Attributes:
        arbitration_id: 11-bit (standard) or 29-bit (extended) identifier.
        data: payload (0-8 bytes classic; an FD length up to 64 for FD frames).
        extended: 29-bit identifier.
        remote: remote transmission request (no data; ``dlc`` gives the requested length).
        fd: CAN FD frame.
        bitrate_switch: FD frame sent with bit-rate switch.
        dlc: requested length of a remote frame (ignored otherwise).
    """

    arbitration_id: int
    data: bytes = b""
    extended: bool = False
    remote: bool = False
    fd: bool = False
    bitrate_switch: bool = False
    dlc: int = 0

    def __post_init__(self) -> None:
        limit = 0x1FFFFFFF if self.extended else 0x7FF
        if not 0 <= self.arbitration_id <= limit:
            kind = "extended" if self.extended else "standard"
            raise ValueError(f"CAN id {self.arbitration_id:#x} exceeds the {kind} limit {limit:#x}")
        if self.remote:
            if self.fd or self.data:
                raise ValueError("a remote frame carries no data and cannot be CAN FD")
            if not 0 <= self.dlc <= 8:
                raise ValueError(f"remote frame dlc {self.dlc} is outside 0-8")
        elif self.fd:
            if len(self.data) not in _FD_CODE:
                raise ValueError(f"CAN FD payload of {len(self.data)} bytes is not a valid FD length {FD_LENGTHS}")
        elif len(self.data) > 8:
            raise ValueError(f"classic CAN payload of {len(self.data)} bytes exceeds 8")
        if self.bitrate_switch and not self.fd:
            raise ValueError("bitrate_switch needs an FD frame")


def encode_frame(frame: CanFrame, timestamp_ms: int | None = None) -> bytes:
    """The SLCAN line for ``frame`` (``t``/``T``/``r``/``R``/``d``/``D``/``b``/``B``), ending in ``\\r``.

    With ``timestamp_ms`` (adapter timestamps on, ``Z1``) four hex digits of milliseconds
    modulo 60,000 are appended, as Lawicel adapters do.
    """
    ident = f"{frame.arbitration_id:08X}" if frame.extended else f"{frame.arbitration_id:03X}"
    if frame.remote:
        line = f"{'R' if frame.extended else 'r'}{ident}{frame.dlc:d}"
    elif frame.fd:
        letter = ("B" if frame.extended else "b") if frame.bitrate_switch else ("D" if frame.extended else "d")
        line = f"{letter}{ident}{_FD_CODE[len(frame.data)]:X}{frame.data.hex().upper()}"
    else:
        line = f"{'T' if frame.extended else 't'}{ident}{len(frame.data):d}{frame.data.hex().upper()}"
    if timestamp_ms is not None:
        line += f"{timestamp_ms % 60_000:04X}"
    return (line + "\r").encode("ascii")


@dataclass(frozen=True, slots=True)
class SlcanReply:
    """What one :meth:`SlcanAdapter.feed` call produced.

    Attributes:
        reply: bytes to write back to the host.
        frames: frames the host transmitted (accepted and acknowledged).
        errors: the reason slug of every command answered with BEL, in order.
    """

    reply: bytes
    frames: tuple[CanFrame, ...] = ()
    errors: tuple[str, ...] = ()


@dataclass
class _Channel:
    state: str = "closed"  # closed | open | listen
    bitrate: str = "S6"
    data_bitrate: str = ""
    timestamps: bool = False
    overrun: bool = False


class _Reject(Exception):  # noqa: N818  (internal control flow: the reason slug for BEL)
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass
class SlcanAdapter:
    """The adapter's command interpreter and channel state.

    Attributes:
        version: hardware/software version answered to ``V``.
        serial_number: answered to ``N``.
        counters: ``commands``, ``repeated``, ``frames_from_host``, ``frames_to_host``,
            ``frames_dropped_closed`` and one ``error_<reason>`` per BEL answered.
    """

    version: str = "V1013"
    serial_number: str = "NLW01"
    counters: Counter[str] = field(default_factory=Counter)
    _channel: _Channel = field(default_factory=_Channel, init=False, repr=False)
    _buffer: bytearray = field(default_factory=bytearray, init=False, repr=False)
    _discarding: bool = field(default=False, init=False, repr=False)

    @property
    def is_open(self) -> bool:
        """True while the channel is open (``O``) or listening (``L``)."""
        return self._channel.state != "closed"

    @property
    def state(self) -> str:
        """``closed``, ``open`` or ``listen``."""
        return self._channel.state

    @property
    def bitrate_command(self) -> str:
        """The last bitrate command accepted (``S6`` by default, or ``sxxyy``)."""
        return self._channel.bitrate

    def note_overrun(self) -> None:
        """Record that frames were lost before the host read them (reported by ``F``)."""
        self._channel.overrun = True

    def feed(self, data: bytes) -> SlcanReply:
        """Consume host bytes; answer every complete command."""
        reply = bytearray()
        frames: list[CanFrame] = []
        errors: list[str] = []
        for byte in data:
            if byte == 0x0D:  # CR ends a command
                if self._discarding:
                    self._discarding = False
                    self._buffer.clear()
                    continue
                command = bytes(self._buffer)
                self._buffer.clear()
                self._run(command, reply, frames, errors)
            elif byte == 0x0A and not self._buffer:  # tolerate CRLF from terminal programs
                continue
            elif not self._discarding:
                self._buffer.append(byte)
                if len(self._buffer) > MAX_COMMAND:
                    self._buffer.clear()
                    self._discarding = True
                    self._reject("oversized", reply, errors)
        return SlcanReply(bytes(reply), tuple(frames), tuple(errors))

    def encode_for_host(self, frame: CanFrame, time_ms: int = 0) -> bytes | None:
        """The line to send the host for a bus frame, or None while the channel is closed."""
        if not self.is_open:
            self.counters["frames_dropped_closed"] += 1
            return None
        self.counters["frames_to_host"] += 1
        return encode_frame(frame, time_ms if self._channel.timestamps else None)

    # -- commands -------------------------------------------------------------------

    def _reject(self, reason: str, reply: bytearray, errors: list[str]) -> None:
        self.counters[f"error_{reason}"] += 1
        errors.append(reason)
        reply += BEL

    def _run(self, raw: bytes, reply: bytearray, frames: list[CanFrame], errors: list[str]) -> None:
        try:
            command = raw.decode("ascii")
        except UnicodeDecodeError:
            self._reject("not_ascii", reply, errors)
            return
        try:
            answer, frame = self._execute(command)
        except _Reject as rejected:
            self._reject(rejected.reason, reply, errors)
            return
        self.counters["commands"] += 1
        if frame is not None:
            self.counters["frames_from_host"] += 1
            frames.append(frame)
        reply += answer

    def _require_closed(self) -> None:
        if self.is_open:
            raise _Reject("channel_open")

    def _execute(self, command: str) -> tuple[bytes, CanFrame | None]:
        channel = self._channel
        if command == "":
            return OK, None
        head, rest = command[0], command[1:]
        if head in "tTrRdDbB":
            return self._transmit(head, rest)
        if head == "O" and rest == "":
            if channel.state == "open":
                self.counters["repeated"] += 1
            elif channel.state == "listen":
                raise _Reject("channel_open")
            channel.state = "open"
            return OK, None
        if head == "L" and rest == "":
            if channel.state == "open":
                raise _Reject("channel_open")
            channel.state = "listen"
            return OK, None
        if head == "C" and rest == "":
            if channel.state == "closed":
                self.counters["repeated"] += 1
            channel.state = "closed"
            return OK, None
        if head == "S" and len(rest) == 1 and rest in "012345678":
            self._require_closed()
            channel.bitrate = command
            return OK, None
        if head == "s" and len(rest) == 4 and _HEX.fullmatch(rest):
            self._require_closed()
            channel.bitrate = command
            return OK, None
        if head == "Y" and len(rest) == 1 and rest in "12458":
            self._require_closed()
            channel.data_bitrate = command
            return OK, None
        if head == "Z" and rest in ("0", "1"):
            self._require_closed()
            channel.timestamps = rest == "1"
            return OK, None
        if head in "Mm" and len(rest) == 8 and _HEX.fullmatch(rest):
            self._require_closed()
            return OK, None  # acceptance code/mask: accepted, every frame still passes
        if head == "V" and rest == "":
            return self.version.encode("ascii") + OK, None
        if head == "N" and rest == "":
            return self.serial_number.encode("ascii") + OK, None
        if head == "F" and rest == "":
            flags = 0x08 if channel.overrun else 0x00  # bit 3: data overrun
            channel.overrun = False
            return f"F{flags:02X}".encode("ascii") + OK, None
        raise _Reject("unknown_command")

    def _transmit(self, head: str, rest: str) -> tuple[bytes, CanFrame | None]:
        extended = head in "TRDB"
        id_digits = 8 if extended else 3
        if len(rest) < id_digits + 1 or not _HEX.fullmatch(rest):
            raise _Reject("bad_frame")
        ident = int(rest[:id_digits], 16)
        dlc_digit = rest[id_digits]
        payload = rest[id_digits + 1 :]
        fd = head in "dDbB"
        try:
            if head in "rR":
                if dlc_digit not in "012345678" or payload:
                    raise _Reject("bad_frame")
                frame = CanFrame(ident, extended=extended, remote=True, dlc=int(dlc_digit))
            else:
                length = FD_LENGTHS[int(dlc_digit, 16)] if fd else int(dlc_digit, 16)
                if (not fd and length > 8) or len(payload) != 2 * length:
                    raise _Reject("bad_frame")
                frame = CanFrame(ident, bytes.fromhex(payload), extended=extended, fd=fd, bitrate_switch=head in "bB")
        except ValueError as exc:
            raise _Reject("bad_frame") from exc
        if self._channel.state == "closed":
            raise _Reject("channel_closed")
        if self._channel.state == "listen":
            raise _Reject("listen_only")
        return (b"Z" if extended else b"z") + OK, frame
