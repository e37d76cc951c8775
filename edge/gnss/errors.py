"""Errors of the GNSS source, in the edge's one tree (:mod:`edge.errors`).

Every error has a ``reason`` slug and the name of the :class:`~edge.gnss.GnssCounters`
field it increments (``counter``). Bad input (:class:`GnssError`, an
:class:`~edge.errors.InputError`) never escapes the decoder as an exception: it is counted,
handed to the decoder's ``on_error`` hook and logged. Only the adapter's port errors
(:class:`PortUnavailable`, a :class:`~edge.errors.DeviceError`) and configuration errors
(:class:`~edge.errors.ConfigError`) are raised to callers.
"""

# Names follow the protocol package's error tree (BadSignature, OversizedMessage, ...): short
# nouns for what is wrong with the input, so N818's "Error" suffix is waived here too.
# ruff: noqa: N818

from __future__ import annotations

from edge.device_source import DeviceUnavailable
from edge.errors import ConfigError, InputError

__all__ = [
    "BadChecksum",
    "EpochDropped",
    "GarbageLine",
    "GnssConfigError",
    "GnssError",
    "ImplausibleDate",
    "IncompleteEpoch",
    "InvalidField",
    "MissingChecksum",
    "NmeaError",
    "OversizedLine",
    "PortUnavailable",
    "StaleEpoch",
    "TruncatedSentence",
    "UndatedEpoch",
    "UnparsableSentence",
    "UnsupportedSentence",
    "UntimedEpoch",
]


class GnssError(InputError):
    """Root of the input errors the NMEA decoder reports (a sentence or an epoch it cannot use)."""

    reason = "gnss_error"
    counter = ""


class NmeaError(GnssError):
    """A received line is not an acceptable NMEA 0183 sentence (the receiver or the line is to blame).

    Attributes:
        line: the offending line (shortened to 120 characters for logs).
    """

    reason = "nmea_error"

    def __init__(self, message: str, line: bytes | str = b"") -> None:
        super().__init__(message)
        text = line if isinstance(line, str) else line.decode("ascii", "backslashreplace")
        self.line = text[:120]


class GarbageLine(NmeaError):
    """A line with no ``$`` at all: line noise, binary data, a baud-rate mismatch."""

    reason = "garbage"
    counter = "unparsable_lines"


class TruncatedSentence(NmeaError):
    """A sentence cut off by the start of the next one (bytes lost on the line, receiver reboot)."""

    reason = "truncated"
    counter = "truncated_sentences"


class OversizedLine(NmeaError):
    """A sentence longer than the decoder's ``max_sentence`` limit."""

    reason = "oversized"
    counter = "oversized_lines"


class MissingChecksum(NmeaError):
    """A sentence without ``*hh``: a checksum is required, never optional."""

    reason = "missing_checksum"
    counter = "missing_checksums"


class BadChecksum(NmeaError):
    """The ``*hh`` checksum is malformed or does not match the sentence."""

    reason = "bad_checksum"
    counter = "bad_checksums"


class UnparsableSentence(NmeaError):
    """The checksum matches but the text is not an NMEA sentence pynmea2 can parse."""

    reason = "unparsable"
    counter = "unparsable_lines"


class UnsupportedSentence(NmeaError):
    """A well-formed sentence of a type the fix merger does not use (GST, TXT, PUBX, ...)."""

    reason = "unsupported"
    counter = "unsupported_sentences"


class InvalidField(NmeaError):
    """A sentence with a correct checksum carries an impossible field value (minute 61, latitude 95, ...)."""

    reason = "invalid_field"
    counter = "invalid_fields"


class EpochDropped(GnssError):
    """A whole epoch produced no record (its sentences were valid but its time is not usable).

    Attributes:
        time_of_day: the epoch's UTC time of day as the receiver sent it, if any.
    """

    reason = "epoch_dropped"

    def __init__(self, message: str, time_of_day: str | None = None) -> None:
        super().__init__(message)
        self.time_of_day = time_of_day


class UntimedEpoch(EpochDropped):
    """Sentences with an empty time field (a receiver that does not know the time yet)."""

    reason = "untimed_epoch"
    counter = "untimed_epochs"


class UndatedEpoch(EpochDropped):
    """An epoch with a time of day but no date seen yet (GGA before the first RMC/ZDA)."""

    reason = "undated_epoch"
    counter = "undated_epochs"


class ImplausibleDate(EpochDropped):
    """A date before ``earliest_date`` (receiver default such as 1980-01-06) or not a calendar date."""

    reason = "implausible_date"
    counter = "invalid_dates"


class StaleEpoch(EpochDropped):
    """An epoch not later than the last one emitted (replayed or repeated sentences)."""

    reason = "stale_epoch"
    counter = "stale_epochs"


class IncompleteEpoch(EpochDropped):
    """An epoch with a time but none of RMC, GGA, GNS or GLL, so nothing says whether there is a fix."""

    reason = "incomplete_epoch"
    counter = "incomplete_epochs"


class PortUnavailable(DeviceUnavailable, OSError):
    """The serial URL cannot be opened (no such device, permission denied, refused connection)."""

    reason = "port_unavailable"
    counter = "open_failures"


class GnssConfigError(ConfigError):
    """A decoder or ``[gnss]`` setting out of range (names the setting and the rule it broke)."""

    reason = "config"
