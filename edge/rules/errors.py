"""The rules package's errors, in the edge's one tree (:mod:`edge.errors`).

Every error names the input (a config key, a snapshot key) and the limit it broke.
Foreign exceptions (zoneinfo) are translated at the boundary with ``raise ... from exc``.
A bad ``[rules]`` value is the edge's :class:`~edge.errors.ConfigError`.
"""

from __future__ import annotations

from edge.errors import InputError, UsageError

__all__ = ["EventError", "StateError"]


class StateError(InputError):
    """A persisted engine snapshot cannot be restored."""

    reason = "bad_state"


class EventError(UsageError):
    """Something other than a Fix, NoFix or SignalSample was fed to the engine."""

    reason = "bad_event"
