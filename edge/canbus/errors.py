"""The CAN source's errors, in the edge's one tree (:mod:`edge.errors`).

Foreign exceptions (cantools, tomllib, python-can, OSError) are translated at the boundary
with ``raise ... from exc``. Each error has a ``reason`` slug and a message that names the
input (file, map entry, interface) and the rule it broke.

Bad *frames* never raise: they are counted (see :class:`edge.canbus.CanCounters`). Only
configuration that cannot work (a missing DBC, a map that names an unknown signal, an
interface python-can does not know: :class:`~edge.errors.ConfigError`) and a bus used after
close (:class:`~edge.errors.DeviceError`) raise. Transient failures (adapter unplugged,
serial port gone) are counted and the bus is reopened with backoff.
"""

from __future__ import annotations

from edge.errors import ConfigError, InputError

__all__ = ["CanLogError", "DbcError", "SignalMapError"]


class DbcError(ConfigError):
    """A DBC file is missing, unreadable, oversized or not parseable by cantools."""

    reason = "bad_dbc"


class SignalMapError(ConfigError):
    """The signal map is malformed or does not match the DBC files it is used with."""

    reason = "bad_signal_map"


class CanLogError(InputError):
    """A CAN log file cannot be opened, or a non-candump log stops parsing."""

    reason = "bad_can_log"
