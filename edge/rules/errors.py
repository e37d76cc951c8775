"""The rules package's error tree.

Every error names the input (a config key, a file, a market id, a snapshot key) and the
limit it broke. Foreign exceptions (tomllib, json, zoneinfo) are translated at the
boundary with ``raise ... from exc``.
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "EventError",
    "RulesError",
    "StateError",
]


class RulesError(Exception):
    """Root of every error raised by :mod:`edge.rules`."""

    reason = "rules_error"


class ConfigError(RulesError, ValueError):
    """The ``[rules]`` section (or a value in it) is not acceptable."""

    reason = "bad_rules_config"


class StateError(RulesError, ValueError):
    """A persisted engine snapshot cannot be restored."""

    reason = "bad_state"


class EventError(RulesError, TypeError):
    """Something other than a Fix, NoFix or SignalSample was fed to the engine."""

    reason = "bad_event"
