"""The CAN source's error tree.

Everything :mod:`edge.canbus` raises derives from :class:`CanSourceError`; foreign
exceptions (cantools, tomllib, python-can, OSError) are translated at the boundary with
``raise ... from exc``. Each error has a ``reason`` slug and a message that names the input
(file, map entry, interface) and the rule it broke.

Bad *frames* never raise: they are counted (see :class:`edge.canbus.CanCounters`). Only
configuration that cannot work (a missing DBC, a map that names an unknown signal, an
interface python-can does not know) raises.
"""

from __future__ import annotations

__all__ = [
    "BusConfigError",
    "CanSourceError",
    "DbcError",
    "SignalMapError",
]


class CanSourceError(Exception):
    """Root of every error raised by :mod:`edge.canbus`."""

    reason = "can_source_error"


class DbcError(CanSourceError, ValueError):
    """A DBC file is missing, unreadable, oversized or not parseable by cantools."""

    reason = "bad_dbc"


class SignalMapError(CanSourceError, ValueError):
    """The signal map is malformed or does not match the DBC files it is used with."""

    reason = "bad_signal_map"


class BusConfigError(CanSourceError, ValueError):
    """The bus settings cannot work (unknown interface, invalid bitrate, missing key).

    Transient failures (adapter unplugged, serial port gone) are *not* this error: the
    source counts them and reopens the bus with backoff.
    """

    reason = "bad_bus_config"
