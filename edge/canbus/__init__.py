"""The CAN source: python-can frames -> DBC (cantools) -> signal map -> canonical samples.

:class:`SignalDecoder` is the sans-I/O core (frames in, :class:`~protocol.SignalSample`
out); :class:`CanSource` is the thin python-can adapter; the signal map format is
documented in ``docs/signals.md``.
"""

from ._decoder import MAX_DBC_BYTES, CanCounters, DbcFile, SignalDecoder, load_dbc, parse_dbc
from ._log import read_can_log
from ._signal_map import SignalMap, SignalMapEntry, SignalType, load_signal_map, parse_signal_map
from ._source import SAMPLE_DBC, SAMPLE_MAP, CanSource, decoder_from_config, source_from_config
from .errors import CanLogError, DbcError, SignalMapError

__all__ = [
    "MAX_DBC_BYTES",
    "SAMPLE_DBC",
    "SAMPLE_MAP",
    "CanCounters",
    "CanLogError",
    "CanSource",
    "DbcError",
    "DbcFile",
    "SignalDecoder",
    "SignalMap",
    "SignalMapEntry",
    "SignalMapError",
    "SignalType",
    "decoder_from_config",
    "load_dbc",
    "load_signal_map",
    "parse_dbc",
    "parse_signal_map",
    "read_can_log",
    "source_from_config",
]
