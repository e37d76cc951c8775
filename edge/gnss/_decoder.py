"""Sans-I/O NMEA 0183 decoder: bytes or lines in, :class:`Fix` / :class:`NoFix` records out.

How this works:

1. **Framing.** ``feed(bytes)`` keeps an unterminated tail between calls, treats CR and LF
   alike as line ends and, in each line, starts the sentence at the *last* ``$``: whatever
   came before (line noise, the half sentence a receiver was writing when it rebooted) is
   discarded and counted. A tail that grows past ``max_sentence`` without a line end is cut
   back to its last ``$`` so a babbling line cannot grow the buffer.
2. **Checks before pynmea2.** A sentence must carry ``*hh`` (pynmea2 would accept it without)
   and the checksum is verified here, on bytes; unsupported types are rejected by their
   three-letter code. Only then does pynmea2 parse the text (without its checksum, so it is
   not computed twice), and every field we use is converted strictly here, because
   pynmea2's attribute access returns the raw text when a conversion fails.
3. **Epochs.** Sentences of one epoch share the UTC time of day (RMC, GGA, GNS, GLL, ZDA carry
   it; GSA, GSV and VTG join the epoch that is open). When a sentence brings another time,
   the open epoch is merged into one record: position and status from GGA/RMC/GNS/GLL, date
   from RMC/ZDA, speed and course from RMC (VTG as fallback), mode and PRNs from the GSAs,
   C/N0 of tracked satellites from the GSVs of every constellation. Any sign of "no fix"
   (void RMC/GLL, RMC mode N, GGA quality 0, GSA mode 1, empty or 0,0 position) yields
   :class:`NoFix`, never a position.
4. **Time.** An epoch without a date of its own takes the last date seen, moved to the next
   day when the time of day wrapped around midnight. An epoch before any date is dropped
   (counter ``undated_epochs``: at most the first second or so after start-up). A date before
   ``earliest_date`` (receivers report 1980-01-06 or 2000-01-01 before their first fix) makes
   the epoch's time unusable (``invalid_dates``). Records leave in strictly increasing time
   within a *time base*: an epoch not later than the last one emitted is held, and emitted
   with the next ones when :data:`TIME_RESET_EPOCHS` increasing epochs show the receiver's
   clock went back and stayed (``time_resets``); otherwise it is dropped (``stale_epochs``).
5. **gpsd's reporting cycle** (``driver_nmea0183.c``): the type of the sentence that set the
   cycle time last before it changed is a *cycle ender*; gpsd reports an epoch when an ender
   arrives (or at every position while none is known). An epoch takes the position of that
   report and is dropped when its ender never came (``incomplete_epochs``: split-time
   cycles, input cut off), unless a damaged line was rejected meanwhile; a position gpsd
   reported before it had any date is not timed by a later RMC/ZDA (``undated_epochs``).

Every rejected line or epoch is a typed :mod:`edge.gnss.errors` error: counted, passed to
``on_error`` and logged (the first of each kind at WARNING, the rest at DEBUG).
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import operator
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, fields
from functools import reduce
from os import PathLike
from pathlib import Path
from typing import TypeVar

import pynmea2

from protocol import Fix, FixMode, NoFix
from protocol.errors import InvalidRecord

from .errors import (
    BadChecksum,
    GarbageLine,
    GnssConfigError,
    GnssError,
    ImplausibleDate,
    IncompleteEpoch,
    InvalidField,
    MissingChecksum,
    OversizedLine,
    StaleEpoch,
    TruncatedSentence,
    UndatedEpoch,
    UnparsableSentence,
    UnsupportedSentence,
    UntimedEpoch,
)

__all__ = [
    "DEFAULT_EARLIEST_DATE",
    "EARLIEST_ALLOWED_DATE",
    "GnssCounters",
    "GnssRecord",
    "NmeaDecoder",
    "read_nmea_file",
]

log = logging.getLogger("edge.gnss")
_T = TypeVar("_T")

GnssRecord = Fix | NoFix

#: Receivers report a default date (1980-01-06, 2000-01-01, their firmware date) before the
#: first fix; anything earlier than this is treated as "time unknown".
DEFAULT_EARLIEST_DATE = dt.date(2020, 1, 1)
LATEST_DATE = dt.date(2099, 12, 31)
#: The lowest ``earliest_date`` accepted: records carry times from 2000-01-01 on.
EARLIEST_ALLOWED_DATE = dt.date(2000, 1, 1)
#: Epochs in a row, all going back before the last record and increasing among themselves,
#: that make a new time base (a receiver whose clock was reset, two captures joined). Fewer
#: are a stray out-of-order epoch and dropped as stale.
TIME_RESET_EPOCHS = 3
#: NMEA 0183 allows 82 characters; proprietary and NMEA 4.11 sentences run longer.
DEFAULT_MAX_SENTENCE = 200
MPS_PER_KNOT = 1852 / 3600
MPS_PER_KMH = 1 / 3.6
DAY_MS = 86_400_000
HALF_DAY_MS = DAY_MS // 2
_EPOCH_ORDINAL = dt.date(1970, 1, 1).toordinal()
_HEX_DIGITS = frozenset(b"0123456789ABCDEFabcdef")
#: Sentence types the merger uses, and which of them carry the epoch's time of day.
SUPPORTED_TYPES = frozenset({"RMC", "GGA", "GNS", "GSA", "GSV", "VTG", "GLL", "ZDA"})
#: GNS mode indicator letters (one per constellation: GPS, GLONASS, Galileo, BDS, QZSS, NavIC).
_GNS_MODES = frozenset("ADEFMNPRSV")
#: GNS navigation status (NMEA 4.10+): U unsafe and V not valid carry no usable position.
_GNS_NAV_STATUS = frozenset("SCUV")
_UNTIMED_TYPES = frozenset({"GSA", "GSV", "VTG"})
#: Rejections of a damaged line, which may have been the sentence that ends the epoch.
_LINE_DAMAGE = (
    BadChecksum,
    GarbageLine,
    InvalidField,
    MissingChecksum,
    OversizedLine,
    TruncatedSentence,
    UnparsableSentence,
)


@dataclass(slots=True)
class GnssCounters:
    """What the GNSS decoder and its port adapter have seen (monotonic counts since start).

    Attributes:
        lines_read: non-empty lines framed from the input.
        sentences_parsed: sentences that passed every check and were merged into an epoch.
        bad_checksums: sentences whose ``*hh`` is malformed or does not match.
        missing_checksums: sentences without ``*hh``.
        unparsable_lines: lines with no ``$`` (noise) or that pynmea2 cannot parse.
        unsupported_sentences: valid sentences of types the merger does not use.
        invalid_fields: sentences with a correct checksum but an impossible field value.
        oversized_lines: sentences longer than ``max_sentence``.
        truncated_sentences: sentences cut off by the start of the next one on the same line.
        fixes_emitted: :class:`Fix` records produced.
        no_fix_epochs: :class:`NoFix` records produced.
        untimed_epochs: epochs dropped because the receiver sent no time of day.
        undated_epochs: epochs dropped because no date had been seen yet.
        invalid_dates: epochs dropped because their date is implausible (receiver default).
        stale_epochs: epochs dropped because they are not later than the last record (and
            did not start a new time base).
        time_resets: times the receiver's time went back and stayed there: a new time base
            (:data:`TIME_RESET_EPOCHS` increasing epochs before the last record), whose
            epochs are emitted from then on.
        incomplete_epochs: epochs dropped because no RMC, GGA, GNS or GLL survived, or because the
            sentence that ends the receiver's cycle never came (gpsd reports nothing then).
        bytes_discarded: bytes thrown away while resynchronising or rejecting lines.
        open_failures: attempts to open the serial URL that failed.
        reopen_attempts: attempts to open the URL after the first attempt (successful or not).
        port_reopens: successful opens after the first (the receiver came back).
        port_losses: times an open port failed or disappeared.
    """

    lines_read: int = 0
    sentences_parsed: int = 0
    bad_checksums: int = 0
    missing_checksums: int = 0
    unparsable_lines: int = 0
    unsupported_sentences: int = 0
    invalid_fields: int = 0
    oversized_lines: int = 0
    truncated_sentences: int = 0
    fixes_emitted: int = 0
    no_fix_epochs: int = 0
    untimed_epochs: int = 0
    undated_epochs: int = 0
    invalid_dates: int = 0
    stale_epochs: int = 0
    time_resets: int = 0
    incomplete_epochs: int = 0
    epochs_closed_early: int = 0
    cycle_ender_resets: int = 0
    bytes_discarded: int = 0
    open_failures: int = 0
    reopen_attempts: int = 0
    port_reopens: int = 0
    port_losses: int = 0

    def as_dict(self) -> dict[str, int]:
        """All counters by name, in declaration order."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(slots=True)
class _Epoch:
    """Everything one epoch's sentences said, before merging (private, mutable)."""

    tod_ms: int | None = None
    tod_text: str | None = None
    timeless: bool = False
    timeless_kinds: set[str] = field(default_factory=set)
    date: dt.date | None = None
    bad_date: str | None = None
    has_position_sentence: bool = False
    no_fix: bool = False
    pos: tuple[float, float] | None = None  # from the last RMC/GGA/GNS/GLL that carried one (as gpsd)
    rmc_fix: bool = False
    gga_zero_sats: bool = False
    alt_m: float | None = None
    gns_2d: bool = False  # a GNS with an altitude but at most 3 satellites used (gpsd: 2D)
    rmc_speed: float | None = None
    rmc_course: float | None = None
    vtg_speed: float | None = None
    vtg_course: float | None = None
    gsa_mode: int | None = None
    gsa_before_position: bool = False  # the GSA mode came before the epoch's RMC/GGA/GNS/GLL
    gga_hdop: float | None = None
    gsa_hdop: float | None = None
    gga_sats: int | None = None
    used: set[tuple[str, int]] = field(default_factory=set)
    gsv_seen: bool = False
    snr: dict[tuple[str, int], int] = field(default_factory=dict)
    last_sig: str | None = None  # talker+type of the last sentence applied (GSV: only its last part)
    reported: bool = False  # gpsd would have reported this epoch (see NmeaDecoder._note_cycle)
    timed_report: bool = False  # ... and with a time: a date was known when it did
    report_pos: tuple[float, float] | None = None  # the position at gpsd's last timed report of it
    damaged: bool = False  # a line was rejected while the epoch was open (it may have been the ender)


# -- strict field converters (raise ValueError with the offending text) -----------------


def _time_of_day_ms(text: str) -> int:
    if len(text) < 6 or not text[:6].isdigit():
        raise ValueError(f"time {text!r} is not hhmmss[.sss]")
    hh, mm, ss = int(text[0:2]), int(text[2:4]), int(text[4:6])
    if hh > 23 or mm > 59 or ss > 60:
        raise ValueError(f"time {text!r} is out of range")
    ms = 0
    if len(text) > 6:
        frac = text[6:]
        if frac[0] != "." or (len(frac) > 1 and not frac[1:].isdigit()):
            raise ValueError(f"time {text!r} is not hhmmss[.sss]")
        ms = round(float("0" + frac) * 1000) if len(frac) > 1 else 0
    return min(((hh * 60 + mm) * 60 + ss) * 1000 + ms, DAY_MS - 1)


def _coordinate(value: str, hemi: str, *, lat: bool) -> float:
    width = 2 if lat else 3
    dot = value.find(".")
    head = value if dot < 0 else value[:dot]
    if len(head) != width + 2 or not head.isdigit() or (dot >= 0 and not value[dot + 1 :].isdigit()):
        raise ValueError(f"{'latitude' if lat else 'longitude'} {value!r} is not {'dd' if lat else 'ddd'}mm.mmmm")
    degrees = int(head[:width])
    minutes = float(value[width:])
    limit = 90 if lat else 180
    if minutes >= 60 or degrees + minutes / 60 > limit:
        raise ValueError(f"{'latitude' if lat else 'longitude'} {value!r} is out of range")
    result = degrees + minutes / 60
    if hemi == ("S" if lat else "W"):
        return -result
    if hemi != ("N" if lat else "E"):
        raise ValueError(f"hemisphere {hemi!r} is not {'N/S' if lat else 'E/W'}")
    return result


def _number(text: str, name: str, lo: float, hi: float) -> float | None:
    if not text:
        return None
    try:
        value = float(text)
    except ValueError as exc:
        raise ValueError(f"{name} {text!r} is not a number") from exc
    if not math.isfinite(value) or not lo <= value <= hi:
        raise ValueError(f"{name} {text!r} is outside [{lo}, {hi}]")
    return value


def _integer(text: str, name: str, lo: int, hi: int) -> int | None:
    if not text:
        return None
    if not text.isdigit() or not lo <= int(text) <= hi:
        raise ValueError(f"{name} {text!r} is not an integer in [{lo}, {hi}]")
    return int(text)


def _field(data: list[str], index: int) -> str:
    return data[index] if index < len(data) else ""


def _ddmmyy(text: str) -> dt.date:
    if len(text) != 6 or not text.isdigit():
        raise ValueError(f"date {text!r} is not ddmmyy")
    # Two-digit years: 80..99 are the 1900s (GPS epoch 1980 defaults), the rest 2000s.
    yy = int(text[4:6])
    year = 1900 + yy if yy >= 80 else 2000 + yy
    return dt.date(year, int(text[2:4]), int(text[0:2]))


class NmeaDecoder:
    """Turn NMEA 0183 bytes or lines into one :class:`Fix` or :class:`NoFix` per epoch.

    Sans-I/O: the same decoder serves a serial port, a log file and a test string. Records
    come out one epoch late (an epoch is complete when the next one starts) or on
    :meth:`flush`.

    Args:
        earliest_date: dates before this are receiver defaults, not real time (at least
            :data:`EARLIEST_ALLOWED_DATE`).
        max_sentence: longest accepted sentence in bytes, ``$`` to checksum.
        on_error: called with each rejected line or dropped epoch (after counting it).

    Raises:
        GnssConfigError: ``earliest_date`` or ``max_sentence`` out of range.

    Attributes:
        counters: :class:`GnssCounters`, shared with a :class:`GnssSource` wrapping it.
        last_error: the most recent error reported, or None.
    """

    def __init__(
        self,
        *,
        earliest_date: dt.date = DEFAULT_EARLIEST_DATE,
        max_sentence: int = DEFAULT_MAX_SENTENCE,
        on_error: Callable[[GnssError], None] | None = None,
    ) -> None:
        if not isinstance(earliest_date, dt.date) or not EARLIEST_ALLOWED_DATE <= earliest_date <= LATEST_DATE:
            raise GnssConfigError(
                f"earliest_date {earliest_date} must be a date within {EARLIEST_ALLOWED_DATE}..{LATEST_DATE} "
                "(records cannot carry times before 2000)"
            )
        if not 16 <= max_sentence <= 4096:
            raise GnssConfigError(f"max_sentence={max_sentence} must be within 16..4096 bytes")
        self.earliest_date = earliest_date
        self.max_sentence = max_sentence
        self.on_error = on_error
        self.counters = GnssCounters()
        self.last_error: GnssError | None = None
        self._tail = b""
        self._epoch: _Epoch | None = None
        self._last_date: dt.date | None = None
        self._last_tod_ms = 0
        self._last_time_ms: int | None = None
        self._warned: set[str] = set()
        # End-of-cycle detection (as gpsd does): the sentence that ended the last two epochs
        # closes the next one at once, instead of one receiver cycle later when the next
        # epoch's first sentence arrives. Cuts the latency of every fix by one cycle.
        self._ender_candidate: str | None = None
        self._cycle_ender: str | None = None
        self._closed_tod: int | None = None
        # gpsd's reporting cycle (driver_nmea0183.c): the sentence types that came last before
        # the time changed are "cycle enders"; once one is known (the cycle is "reliable") an
        # epoch is reported at its ender, with the position known then, and an epoch whose
        # ender never came is not reported. Types only (GPGGA and GNGGA are one tag).
        self._enders: set[str] = set()
        self._cycle_reliable = False
        self._ender_confirmed = False  # an ender has ended a cycle since the cycle became reliable
        self._last_tag: str | None = None
        self._last_frac: int | None = None
        # gpsd's date (RMC with a fix, ZDA): until it has one, it reports positions without a
        # time; a void RMC or GGA without a time of day makes it forget the date.
        self._gpsd_dated = False
        self._pending: list[GnssRecord] = []
        # Epochs that went back in time, waiting to prove a new time base (see _behind).
        self._held: list[tuple[_Epoch, int]] = []

    # -- input ------------------------------------------------------------------------

    def feed(self, data: bytes) -> list[GnssRecord]:
        """Feed raw bytes as they come off the wire (any chunking); return completed epochs."""
        buf = self._tail + data if self._tail else bytes(data)
        if b"\r" in buf:
            buf = buf.replace(b"\r", b"\n")
        lines = buf.split(b"\n")
        tail = lines.pop()
        if len(tail) > self.max_sentence:
            keep = tail.rfind(b"$")
            if keep < 0 or len(tail) - keep > self.max_sentence:
                keep = len(tail)
            self.counters.bytes_discarded += keep
            tail = tail[keep:]
        self._tail = tail
        out: list[GnssRecord] = []
        for line in lines:
            if line:
                record = self._take_line(line)
                if record is not None:
                    out.append(record)
                if self._pending:
                    out.extend(self._pending)
                    self._pending.clear()
        return out

    def feed_line(self, line: str | bytes) -> list[GnssRecord]:
        """Feed one line (with or without its line end); return the epoch it completed, if any."""
        raw = line.encode("latin-1", "replace") if isinstance(line, str) else line
        raw = raw.strip(b"\r\n")
        if not raw:
            return []
        record = self._take_line(raw)
        out = [] if record is None else [record]
        if self._pending:
            out.extend(self._pending)
            self._pending.clear()
        return out

    def flush(self) -> list[GnssRecord]:
        """End of input: decode an unterminated last line, then emit the open epoch."""
        out: list[GnssRecord] = []
        tail, self._tail = self._tail, b""
        if tail.strip():
            record = self._take_line(tail.strip())
            if record is not None:
                out.append(record)
            out.extend(self._pending)
            self._pending.clear()
        epoch, self._epoch = self._epoch, None
        if epoch is not None:
            record = self._close(epoch, at_end=True)
            if record is not None:
                out.append(record)
            out.extend(self._pending)
            self._pending.clear()
        self._drop_held("the input ended before a new time base was confirmed")
        return out

    # -- one line ---------------------------------------------------------------------

    def _take_line(self, raw: bytes) -> GnssRecord | None:
        self.counters.lines_read += 1
        checked = self._checked_sentence(raw)
        if checked is None:
            return None
        sentence, text, kind = checked
        try:
            msg = pynmea2.parse(text)
        except (ValueError, pynmea2.ParseError) as exc:
            self._reject(UnparsableSentence(f"pynmea2 cannot parse the sentence: {exc}", sentence), sentence)
            return None
        try:
            record = self._merge(kind, msg.talker, msg.data)
            early = self._end_of_cycle(kind, msg.talker, msg.data)
        except ValueError as exc:
            self._reject(InvalidField(f"{kind}: {exc}", sentence), sentence)
            return None
        if early is None:
            return record
        if record is not None:  # cannot happen with one ender per cycle; never drop a fix
            self._pending.append(early)
            return record
        return early

    def _checked_sentence(self, raw: bytes) -> tuple[bytes, str, str] | None:
        """Frame one line and check it on bytes: (sentence, its text without checksum, type) or None."""
        sentence = self._framed(raw)
        if sentence is None or not self._checksum_ok(sentence):
            return None
        star = sentence.rfind(b"*")
        body = sentence[1:star]
        if len(body) < 6 or body[0] == 0x50:  # b"P": proprietary ($PUBX, $PMTK, ...)
            kind = UnsupportedSentence if len(body) >= 6 else UnparsableSentence
            message = f"sentence type {body[:6]!r} is not one of {sorted(SUPPORTED_TYPES)}"
            self._reject(kind(message, sentence), sentence)
            return None
        kind_text = body[2:5].decode("latin-1")
        if kind_text not in SUPPORTED_TYPES:
            message = f"sentence type {kind_text!r} is not one of {sorted(SUPPORTED_TYPES)}"
            self._reject(UnsupportedSentence(message, sentence), sentence)
            return None
        text = sentence[:star].decode("latin-1")
        if not text.isascii() or not text.isprintable():
            message = "sentence contains non-ASCII or control characters"
            self._reject(UnparsableSentence(message, sentence), sentence)
            return None
        return sentence, text, kind_text

    def _framed(self, raw: bytes) -> bytes | None:
        """The sentence that starts at the line's last ``$``, within ``max_sentence``."""
        start = raw.rfind(b"$")
        if start < 0:
            self._reject(GarbageLine(f"line of {len(raw)} bytes has no '$' sentence start", raw), raw)
            return None
        if start:
            self.counters.bytes_discarded += start
            cut = raw.rfind(b"$", 0, start)
            if cut >= 0:
                self._report(TruncatedSentence("sentence cut off by the start of the next one", raw[cut:start]))
            raw = raw[start:]
        raw = raw.rstrip()
        if len(raw) > self.max_sentence:
            message = f"sentence of {len(raw)} bytes exceeds max_sentence={self.max_sentence}"
            self._reject(OversizedLine(message, raw), raw)
            return None
        return raw

    def _checksum_ok(self, sentence: bytes) -> bool:
        star = sentence.rfind(b"*")
        if star < 0:
            message = "sentence has no '*hh' checksum (required)"
            self._reject(MissingChecksum(message, sentence), sentence)
            return False
        digits = sentence[star + 1 :]
        if len(digits) != 2 or digits[0] not in _HEX_DIGITS or digits[1] not in _HEX_DIGITS:
            if not digits:
                error: GnssError = MissingChecksum("sentence ends with '*' but no checksum digits", sentence)
            else:
                error = BadChecksum(f"checksum field {digits!r} is not two hex digits", sentence)
            self._reject(error, sentence)
            return False
        computed = reduce(operator.xor, sentence[1:star], 0)
        if computed != int(digits, 16):
            message = f"checksum {digits.decode()} does not match computed {computed:02X}"
            self._reject(BadChecksum(message, sentence), sentence)
            return False
        return True

    def _reject(self, error: GnssError, line: bytes) -> None:
        """Report a rejected line and count its bytes as discarded."""
        self.counters.bytes_discarded += len(line)
        self._report(error)

    # -- merging sentences into epochs -----------------------------------------------

    def _merge(self, kind: str, talker: str, data: list[str]) -> GnssRecord | None:
        """Validate one sentence's fields fully, then apply them to the right epoch."""
        if kind == "GSV":
            self._apply_untimed(_gsv_applier(talker, data))
        elif kind == "GSA":
            ep = self._apply_untimed(_gsa_applier(talker, data))
            if not self._cycle_reliable:  # gpsd reports every change of mode then
                self._gpsd_report(ep)
        elif kind == "VTG":
            self._apply_untimed(_vtg_applier(data))
        else:
            return self._MERGE_TIMED[kind](self, talker, data)
        return None

    def _merge_rmc(self, talker: str, data: list[str]) -> GnssRecord | None:
        tod_text = _field(data, 0)
        status = _field(data, 1)
        pos = _position(data, 2)
        speed = _number(_field(data, 6), "RMC speed", 0.0, 2000.0)
        course = _number(_field(data, 7), "RMC course", 0.0, 360.0)
        date_text = _field(data, 8)
        no_fix = status != "A" or _field(data, 11) == "N"

        def apply_rmc(ep: _Epoch) -> None:
            ep.has_position_sentence = True
            ep.no_fix |= no_fix
            ep.rmc_fix = not no_fix
            if ep.rmc_fix and ep.gsa_before_position and ep.gsa_mode == 1:
                ep.gsa_mode = None  # a valid RMC after it outranks a GSA "no fix" (as in gpsd)
            if status != "A" and not (tod_text and date_text):
                # A void RMC without time or date (Quectel, before its first fix) breaks
                # gpsd's cycle detection: it reports every position until it relearns.
                self._forget_cycle()
            ep.pos = pos or ep.pos
            if speed is not None:
                ep.rmc_speed = speed * MPS_PER_KNOT
            ep.rmc_course = course if course is not None else ep.rmc_course
            if date_text:
                self._set_date(ep, date_text, None)
                self._gpsd_dated |= not no_fix and ep.date is not None

        # gpsd takes the cycle's time from an RMC only when it is valid and dated.
        latch = status == "A" and bool(date_text)
        return self._apply_timed("RMC", tod_text, apply_rmc, talker, latch=latch)

    def _merge_gga(self, talker: str, data: list[str]) -> GnssRecord | None:
        tod_text = _field(data, 0)
        pos = _position(data, 1)
        quality = _integer(_field(data, 5), "GGA quality", 0, 9)
        sats = _integer(_field(data, 6), "GGA satellites", 0, 255)
        hdop = _number(_field(data, 7), "GGA HDOP", 0.0, 999.99)
        alt = _number(_field(data, 8), "GGA altitude", -1000.0, 100_000.0)

        def apply_gga(ep: _Epoch) -> None:
            ep.has_position_sentence = True
            ep.no_fix |= not quality
            ep.gga_zero_sats = sats == 0
            ep.pos = pos or ep.pos
            ep.alt_m, ep.gga_sats, ep.gga_hdop = alt, sats, hdop
            if not quality and not tod_text:
                self._forget_cycle()  # gpsd: as a void RMC without time

        return self._apply_timed("GGA", tod_text, apply_gga, talker)

    def _merge_gll(self, talker: str, data: list[str]) -> GnssRecord | None:
        pos = _position(data, 0)
        no_fix = _field(data, 5) != "A" or _field(data, 6) == "N"

        def apply_gll(ep: _Epoch) -> None:
            ep.has_position_sentence = True
            ep.no_fix |= no_fix
            ep.pos = pos or ep.pos

        return self._apply_timed("GLL", _field(data, 4), apply_gll, talker)

    def _merge_zda(self, talker: str, data: list[str]) -> GnssRecord | None:
        # ZDA: hhmmss.ss, day, month, year
        tod_text = _field(data, 0)
        day, month, year = _field(data, 1), _field(data, 2), _field(data, 3)
        if not (day or month or year):
            return self._apply_timed("ZDA", tod_text, lambda ep: None, talker, latch=False)
        if not (day.isdigit() and month.isdigit() and year.isdigit() and len(year) == 4):
            raise ValueError(f"ZDA date {day!r}/{month!r}/{year!r} is not dd/mm/yyyy")
        date_key = (int(year), int(month), int(day))

        def apply_zda(ep: _Epoch) -> None:
            self._set_date(ep, f"{day}/{month}/{year}", date_key)
            self._gpsd_dated |= ep.date is not None

        return self._apply_timed("ZDA", tod_text, apply_zda, talker)

    def _merge_gns(self, talker: str, data: list[str]) -> GnssRecord | None:
        # GNS (NMEA 4.0+, GGA for several constellations): hhmmss.ss, lat, N/S, lon, E/W,
        # mode indicator (one letter per constellation), satellites used, HDOP, altitude MSL,
        # geoid separation, age and station of corrections, [navigation status (4.10+)].
        tod_text = _field(data, 0)
        pos = _position(data, 1)
        modes = _field(data, 5)
        if len(modes) > 8 or not set(modes) <= _GNS_MODES:
            raise ValueError(f"GNS mode indicator {modes!r} is not up to 8 of {''.join(sorted(_GNS_MODES))}")
        sats = _integer(_field(data, 6), "GNS satellites", 0, 255)
        hdop = _number(_field(data, 7), "GNS HDOP", 0.0, 999.99)
        alt = _number(_field(data, 8), "GNS altitude", -1000.0, 100_000.0)
        nav_status = _field(data, 12)
        if nav_status and nav_status not in _GNS_NAV_STATUS:
            raise ValueError(f"GNS navigation status {nav_status!r} is not one of S/C/U/V")
        # As gpsd, only the first (GPS) letter says whether this sentence gives a position,
        # and an unsafe or invalid navigation status keeps its time but not its position
        # (multi-GNSS receivers send "NDD" with a fix from GLONASS and Galileo, which their
        # GGA and RMC report). The epoch is "no fix" only when no constellation has a fix.
        no_fix = not modes.strip("NV")
        usable = modes[:1] not in ("", "N", "V") and nav_status not in ("U", "V")

        def apply_gns(ep: _Epoch) -> None:
            ep.has_position_sentence = True
            ep.no_fix |= no_fix
            if not usable:
                return
            ep.pos = pos or ep.pos
            ep.gga_sats, ep.gga_hdop = sats, hdop
            if pos is not None:
                ep.alt_m = alt
                ep.gns_2d = alt is not None and (sats is None or sats <= 3)

        return self._apply_timed("GNS", tod_text, apply_gns, talker)

    _MERGE_TIMED: dict[str, Callable[[NmeaDecoder, str, list[str]], GnssRecord | None]] = {
        "RMC": _merge_rmc,
        "GGA": _merge_gga,
        "GNS": _merge_gns,
        "GLL": _merge_gll,
        "ZDA": _merge_zda,
    }

    def _set_date(self, ep: _Epoch, text: str, ymd: tuple[int, int, int] | None) -> None:
        try:
            date = _ddmmyy(text) if ymd is None else dt.date(*ymd)
        except ValueError:
            ep.bad_date = text
            return
        if not self.earliest_date <= date <= LATEST_DATE:
            ep.bad_date = text
            return
        ep.date = date

    def _apply_untimed(self, apply: Callable[[_Epoch], None]) -> _Epoch:
        ep = self._epoch
        if ep is None:
            ep = self._epoch = _Epoch()
        apply(ep)
        self.counters.sentences_parsed += 1
        return ep

    def _apply_timed(
        self, kind: str, tod_text: str, apply: Callable[[_Epoch], None], talker: str, *, latch: bool = True
    ) -> GnssRecord | None:
        tod = _time_of_day_ms(tod_text) if tod_text else None
        record = None
        ep = self._epoch
        if ep is None:
            ep = self._epoch = _Epoch()
        if tod is None:
            # Untimed epochs are told apart by a sentence type repeating (the next RMC, ...).
            if ep.tod_ms is not None or kind in ep.timeless_kinds:
                record = self._close(ep)
                ep = self._epoch = _Epoch()
            ep.timeless = True
            ep.timeless_kinds.add(kind)
        elif ep.tod_ms is None and not ep.timeless:
            if tod == self._closed_tod and self._cycle_ender is not None:
                # More of an epoch we closed early: the ender was wrong; learn it again.
                self._cycle_ender = self._ender_candidate = None
                self.counters.cycle_ender_resets += 1
            ep.tod_ms, ep.tod_text = tod, tod_text
        elif ep.tod_ms != tod:
            self._learn_ender(ep.last_sig)
            record = self._close(ep)
            ep = self._epoch = _Epoch(tod_ms=tod, tod_text=tod_text)
        apply(ep)
        self._note_cycle(ep, kind, tod if latch else None)
        self.counters.sentences_parsed += 1
        return record

    def _note_cycle(self, ep: _Epoch, kind: str, tod: int | None) -> None:
        """gpsd's end-of-cycle detector, for a sentence of ``kind`` that set the cycle's time ``tod``.

        When the time changes, the type of the previous time-setting sentence becomes a cycle
        ender (GLL, a "cycle continuer", does not make one). gpsd reports the epoch when an
        ender arrives, or at every position while no ender is known (or a receiver quirk made
        the cycle unreliable); the epoch's record takes the position of that report.
        """
        if tod is not None:
            last_tag = self._last_tag
            changed = self._last_frac is not None and abs(tod - self._last_frac) > 10
            if changed and last_tag in self._enders:
                self._ender_confirmed = self._cycle_reliable
            elif changed and last_tag is not None and kind != "GLL":
                self._enders.add(last_tag)
                self._cycle_reliable = True
            self._last_frac, self._last_tag = tod, kind
        if (tod is not None and kind in self._enders) or (not self._cycle_reliable and kind != "ZDA"):
            self._gpsd_report(ep)

    def _forget_cycle(self) -> None:
        """gpsd after a void RMC or GGA without a time: no reliable cycle end, no date."""
        self._cycle_reliable = self._ender_confirmed = self._gpsd_dated = False

    def _gpsd_report(self, ep: _Epoch) -> None:
        ep.reported = True
        if self._gpsd_dated:
            ep.timed_report, ep.report_pos = True, ep.pos

    # -- end-of-cycle detection --------------------------------------------------------

    def _learn_ender(self, sig: str | None) -> None:
        """An epoch was closed by the next one's time: its last sentence may end every cycle."""
        if sig is not None and sig == self._ender_candidate:
            self._cycle_ender = sig
        self._ender_candidate = sig

    def _end_of_cycle(self, kind: str, talker: str, data: list[str]) -> GnssRecord | None:
        ep = self._epoch
        if ep is None:
            return None
        if kind == "GSV" and _field(data, 0) != _field(data, 1):
            return None  # not the last part of the GSV group: cannot end a cycle
        sig = talker + kind
        ep.last_sig = sig
        if sig != self._cycle_ender or ep.tod_ms is None:
            return None
        self._epoch = None
        self._closed_tod = ep.tod_ms
        self.counters.epochs_closed_early += 1
        return self._close(ep)

    # -- closing an epoch into a record ------------------------------------------------

    def _close(self, ep: _Epoch, *, at_end: bool = False) -> GnssRecord | None:
        tod = ep.tod_ms
        if tod is None:
            self._report(UntimedEpoch("epoch without a time of day (receiver has no time yet)"))
            return None
        if ep.bad_date is not None:
            self._report(
                ImplausibleDate(
                    f"date {ep.bad_date!r} is not a calendar date within {self.earliest_date}..{LATEST_DATE}",
                    ep.tod_text,
                )
            )
            return None
        date = ep.date
        if date is None:
            if self._last_date is None:
                self._report(UndatedEpoch("no RMC/ZDA date seen yet", ep.tod_text))
                return None
            date = self._last_date
            if tod < self._last_tod_ms - HALF_DAY_MS:
                date += dt.timedelta(days=1)  # midnight rollover without a dated sentence yet
        refusal = self._unreported(ep, at_end=at_end)
        if refusal is not None:
            self._report(refusal)
            return None
        if ep.timed_report:
            ep.pos = ep.report_pos
        time_ms = (date.toordinal() - _EPOCH_ORDINAL) * DAY_MS + tod
        self._last_date, self._last_tod_ms = date, tod
        last = self._last_time_ms
        if last is not None and time_ms <= last:
            return self._behind(ep, time_ms, last)
        self._drop_held(f"the receiver's time went on after {last}: a stray epoch, not a new time base")
        self._last_time_ms = time_ms
        return self._record(ep, time_ms)

    # -- time going back: a stray epoch or a new time base ---------------------------------

    def _behind(self, ep: _Epoch, time_ms: int, last: int) -> GnssRecord | None:
        """An epoch not after the last record: hold it until it proves to start a new time base.

        It does when :data:`TIME_RESET_EPOCHS` epochs in a row, this one first, increase from
        it while all stay at or before the last record (so none of them can belong to the old
        time base). An epoch after the last record (the old time base went on) or one that
        does not increase from the held ones ends the wait: the held epochs were stale.
        """
        if self._held and time_ms <= self._held[-1][1]:
            self._drop_held(f"epoch time {time_ms} is not after the held epoch's {self._held[-1][1]}")
        held = self._held
        held.append((ep, time_ms))
        if len(held) < TIME_RESET_EPOCHS:
            return None
        self._held = []
        self._last_time_ms = time_ms
        self.counters.time_resets += 1
        log.warning(
            "GNSS time base reset: the receiver's time went back from %d to %d ms and went on for %d epochs",
            last,
            held[0][1],
            len(held),
        )
        records = [self._record(held_ep, held_ms) for held_ep, held_ms in held]
        self._pending.extend(records[1:])
        return records[0]

    def _drop_held(self, why: str) -> None:
        """The held epochs were not a new time base: each one is stale."""
        if not self._held:
            return
        held, self._held = self._held, []
        for ep, time_ms in held:
            message = f"epoch time {time_ms} is not after the last record's {self._last_time_ms} ({why})"
            self._report(StaleEpoch(message, ep.tod_text))

    def _unreported(self, ep: _Epoch, *, at_end: bool) -> GnssError | None:
        """Why gpsd would not report this epoch with a time, or None (it would)."""
        if not ep.has_position_sentence:
            return IncompleteEpoch("epoch has no RMC, GGA, GNS or GLL", ep.tod_text)
        cycle_known = self._ender_confirmed if at_end else self._cycle_reliable
        if not ep.reported and not ep.damaged and cycle_known:
            # The receiver's cycle is known and this epoch never got the sentence that ends
            # it (split cycles, the input stopping mid-epoch): gpsd reports nothing for it.
            return IncompleteEpoch(f"epoch ended without its cycle ender {sorted(self._enders)}", ep.tod_text)
        if ep.reported and not ep.timed_report and not _is_no_fix(ep):
            # gpsd reported its position before any date (its RMC or ZDA came later): no time.
            return UndatedEpoch("position reported before the date that times it", ep.tod_text)
        return None

    def _record(self, ep: _Epoch, time_ms: int) -> GnssRecord:
        snrs = [s for s in ep.snr.values() if s > 0]
        mean_snr = round(sum(snrs) / len(snrs), 1) if snrs else None
        pos = ep.pos
        if pos is None or _is_no_fix(ep):
            self.counters.no_fix_epochs += 1
            return NoFix(time_ms=time_ms, sats_in_view=len(ep.snr) if ep.gsv_seen else None, mean_snr=mean_snr)
        speed = _first(ep.rmc_speed, ep.vtg_speed)
        hdop = _first(ep.gga_hdop, ep.gsa_hdop)
        try:
            fix = Fix(
                time_ms=time_ms,
                lat=pos[0],
                lon=pos[1],
                alt_m=ep.alt_m,
                speed_mps=speed if speed is None or speed <= 1000.0 else None,
                course_deg=_first(ep.rmc_course, ep.vtg_course),
                mode=_fix_mode(ep),
                hdop=hdop if hdop is None or hdop <= 100.0 else None,
                sats_used=_first(ep.gga_sats, len(ep.used) or None),
                mean_snr=mean_snr,
            )
        except InvalidRecord as exc:  # pragma: no cover - every field is range-checked above
            raise AssertionError(f"decoder built an invalid Fix: {exc}") from exc
        self.counters.fixes_emitted += 1
        return fix

    # -- error reporting ---------------------------------------------------------------

    def _report(self, error: GnssError) -> None:
        name = error.counter
        setattr(self.counters, name, getattr(self.counters, name) + 1)
        self.last_error = error
        if self._epoch is not None and _may_have_been_timed(error):
            self._epoch.damaged = True
        if error.reason not in self._warned:
            self._warned.add(error.reason)
            log.warning("GNSS input rejected (%s, first of its kind): %s", error.reason, _describe(error))
        else:
            log.debug("GNSS input rejected (%s): %s", error.reason, _describe(error))
        if self.on_error is not None:
            self.on_error(error)


def _is_no_fix(ep: _Epoch) -> bool:
    """Any sign of "no fix" in the epoch (a position alone is not a fix)."""
    # A GGA "fix" with zero satellites used and nothing else to confirm it is no fix (gpsd
    # agrees: hemi.log); RMC status A or a GSA mode outranks it (furuno_gl_ga.log).
    unconfirmed = ep.gga_zero_sats and ep.gsa_mode is None and not ep.rmc_fix
    return ep.no_fix or unconfirmed or ep.gsa_mode == 1 or ep.pos is None or ep.pos == (0.0, 0.0)


def _first(preferred: _T | None, fallback: _T | None) -> _T | None:
    return preferred if preferred is not None else fallback


def _fix_mode(ep: _Epoch) -> FixMode:
    if ep.gsa_mode in (2, 3):
        return FixMode(ep.gsa_mode)
    if ep.gns_2d:
        return FixMode.TWO_D
    return FixMode.THREE_D if ep.alt_m is not None else FixMode.TWO_D


def _may_have_been_timed(error: GnssError) -> bool:
    """A rejected damaged line that may have been a time-stamped sentence (a cycle ender)."""
    if not isinstance(error, _LINE_DAMAGE):
        return False
    line = getattr(error, "line", "")
    return not (line.startswith("$") and line[3:6] in _UNTIMED_TYPES)


def _describe(error: GnssError) -> str:
    line = getattr(error, "line", None)
    return f"{error} in {line!r}" if line else str(error)


def _position(data: list[str], index: int) -> tuple[float, float] | None:
    lat_text, lat_hemi = _field(data, index), _field(data, index + 1)
    lon_text, lon_hemi = _field(data, index + 2), _field(data, index + 3)
    if not lat_text or not lon_text:
        return None
    return _coordinate(lat_text, lat_hemi, lat=True), _coordinate(lon_text, lon_hemi, lat=False)


def _gsa_applier(talker: str, data: list[str]) -> Callable[[_Epoch], None]:
    """Validate a GSA's fields now; return what applies them to an epoch."""
    mode = _integer(_field(data, 1), "GSA fix type", 1, 3)
    prns = [_integer(p, "GSA PRN", 1, 999) for p in data[2:14]]
    hdop = _number(_field(data, 15), "GSA HDOP", 0.0, 999.99)
    system = _field(data, 17) or talker  # NMEA 4.10 adds a system id after VDOP

    def apply(ep: _Epoch) -> None:
        if mode is not None:
            ep.gsa_mode = mode if ep.gsa_mode is None else max(ep.gsa_mode, mode)
            ep.gsa_before_position = not ep.has_position_sentence
        ep.used.update((system, prn) for prn in prns if prn is not None)
        if hdop is not None:
            ep.gsa_hdop = hdop

    return apply


def _vtg_applier(data: list[str]) -> Callable[[_Epoch], None]:
    """Validate a VTG's fields now; return what applies them to an epoch."""
    course = _number(_field(data, 0), "VTG course", 0.0, 360.0)
    knots = _number(_field(data, 4), "VTG speed (knots)", 0.0, 2000.0)
    kmh = _number(_field(data, 6), "VTG speed (km/h)", 0.0, 3700.0)
    speed = knots * MPS_PER_KNOT if knots is not None else (kmh * MPS_PER_KMH if kmh is not None else None)
    invalid = _field(data, 8) == "N"

    def apply(ep: _Epoch) -> None:
        if not invalid:
            ep.vtg_course, ep.vtg_speed = course, speed

    return apply


def _gsv_applier(talker: str, data: list[str]) -> Callable[[_Epoch], None]:
    """Validate a GSV's fields now; return what applies them to an epoch."""
    _integer(_field(data, 0), "GSV message count", 1, 99)
    _integer(_field(data, 1), "GSV message number", 1, 99)
    _integer(_field(data, 2), "GSV satellites in view", 0, 999)
    blocks = (len(data) - 3) // 4  # a remainder of one field is the NMEA 4.10 signal id
    parsed = []
    for k in range(blocks):
        base = 3 + 4 * k
        prn = _integer(data[base], "GSV PRN", 0, 999)
        _number(data[base + 1], "GSV elevation", -90.0, 90.0)
        _number(data[base + 2], "GSV azimuth", 0.0, 360.0)
        snr = _integer(data[base + 3], "GSV SNR", 0, 99)
        if prn is not None:
            parsed.append((prn, snr))

    def apply(ep: _Epoch) -> None:
        ep.gsv_seen = True
        for prn, snr in parsed:
            key = (talker, prn)
            ep.snr[key] = max(ep.snr.get(key, 0), snr or 0)

    return apply


def read_nmea_file(path: str | PathLike[str], *, decoder: NmeaDecoder | None = None) -> Iterator[GnssRecord]:
    """Yield the records of a plain NMEA log (one sentence a line, as receivers and gpsd test logs store them).

    Lines starting with ``#`` are comments and skipped. Pass a ``decoder`` to read its
    counters afterwards.

    Raises:
        OSError: the file cannot be read.
    """
    decoder = decoder or NmeaDecoder()
    with Path(path).open("rb") as fh:
        for line in fh:
            if line.lstrip().startswith(b"#"):
                continue
            yield from decoder.feed_line(line)
    yield from decoder.flush()
