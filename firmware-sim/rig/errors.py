"""The rig's error tree: :class:`RigError`, and :class:`ServiceError` for the private services."""

from __future__ import annotations

__all__ = ["RigError", "ServiceError"]


class RigError(RuntimeError):
    """A part of the chain did not start or did not behave; the message names the part."""


class ServiceError(RigError):
    """A private service could not be started (missing binary, crash at start, timeout)."""
