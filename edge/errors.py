"""The edge's error tree: one root, subclasses by who is to blame.

* :class:`ConfigError`: the operator's input is unusable (``agent.toml``, the environment,
  a file it names: DBC, signal map, markets); the message names the key or file.
* :class:`DeviceError`: a device or file on the box failed at run time (a serial port that
  vanished, a CAN bus that will not open, an unreadable log, a full disk).
* :class:`InputError`: data read from a device, a log, a state file or the downlink is
  malformed or refused (an NMEA sentence, a CAN log, a rules snapshot, a pushed
  configuration); counted and skipped, never a crash.
* :class:`UsageError`: a caller inside the edge used an API wrongly (a bug on this side).

Foreign exceptions (OSError, tomllib, python-can, pyserial, cantools) are translated at the
boundary with ``raise ... from exc``. Errors of :mod:`protocol` (shared formats: records,
keys, places) keep their own tree and are translated where the edge adds context.
"""

from __future__ import annotations

__all__ = ["ConfigError", "DeviceError", "EdgeError", "InputError", "UsageError"]


class EdgeError(Exception):
    """Root of every error raised by :mod:`edge`; ``reason`` is a short stable slug."""

    reason = "edge_error"


class ConfigError(EdgeError, ValueError):
    """The configuration (a key, an environment variable or a file it names) is not acceptable."""

    reason = "bad_config"


class DeviceError(EdgeError):
    """A device, bus or file on the box failed at run time (the environment is to blame)."""

    reason = "device_error"


class InputError(EdgeError, ValueError):
    """Bytes or records read from a device, log or state file are malformed (the sender is to blame)."""

    reason = "bad_input"



class UsageError(EdgeError, TypeError):
    """A caller inside the edge passed something an API does not take (a bug on this side)."""

    reason = "usage_error"
