"""GNSS source: NMEA 0183 from any pyserial URL into :class:`~protocol.Fix` / :class:`~protocol.NoFix`.

:class:`NmeaDecoder` is the sans-I/O core (bytes or lines in, one record per epoch out);
:class:`GnssSource` is the thin pyserial adapter that reopens a vanished port with backoff;
:func:`read_nmea_file` reads a plain sentence log. See docs/gnss.md.
"""

from ._decoder import DEFAULT_EARLIEST_DATE, SUPPORTED_TYPES, GnssCounters, GnssRecord, NmeaDecoder, read_nmea_file
from ._source import GnssSource, source_from_config
from .errors import (
    BadChecksum,
    EpochDropped,
    GarbageLine,
    GnssError,
    ImplausibleDate,
    IncompleteEpoch,
    InvalidField,
    MissingChecksum,
    NmeaError,
    OversizedLine,
    PortUnavailable,
    StaleEpoch,
    TruncatedSentence,
    UndatedEpoch,
    UnparsableSentence,
    UnsupportedSentence,
    UntimedEpoch,
)

__all__ = [
    "DEFAULT_EARLIEST_DATE",
    "SUPPORTED_TYPES",
    "BadChecksum",
    "EpochDropped",
    "GarbageLine",
    "GnssCounters",
    "GnssError",
    "GnssRecord",
    "GnssSource",
    "ImplausibleDate",
    "IncompleteEpoch",
    "InvalidField",
    "MissingChecksum",
    "NmeaDecoder",
    "NmeaError",
    "OversizedLine",
    "PortUnavailable",
    "StaleEpoch",
    "TruncatedSentence",
    "UndatedEpoch",
    "UnparsableSentence",
    "UnsupportedSentence",
    "UntimedEpoch",
    "read_nmea_file",
    "source_from_config",
]
