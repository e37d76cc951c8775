"""The collector's error tree.

Every error names the input it refused and the limit or rule it broke. Foreign exceptions
(SQLAlchemy, cryptography, tomllib) are translated at the boundary with ``raise ... from``.
"""

from __future__ import annotations

__all__ = [
    "CollectorError",
    "ConfigError",
    "DatabaseUnavailableError",
    "DeviceExistsError",
    "DeviceNotFoundError",
    "InvalidPublicKeyError",
    "RegistryError",
    "StorageError",
    "check_range",
]


class CollectorError(Exception):
    """Root of every error raised by :mod:`collector`."""


class ConfigError(CollectorError):
    """collector.toml or a ``LIENWATCH_*`` variable is missing, unknown or of the wrong type."""


def check_range(name: str, value: float, lo: float, hi: float) -> None:
    """Refuse a setting outside ``[lo, hi]``, naming it (every settings section uses this).

    Raises:
        ConfigError: ``value`` is below ``lo`` or above ``hi`` (or NaN).
    """
    if not lo <= value <= hi:
        raise ConfigError(f"{name}={value!r} is outside [{lo}, {hi}]")


class RegistryError(CollectorError):
    """A device registry operation was refused."""


class InvalidPublicKeyError(RegistryError):
    """A device public key is not a PEM SubjectPublicKeyInfo holding an Ed25519 key."""


class DeviceExistsError(RegistryError):
    """The device already has an active key (revoke it before adding another)."""


class DeviceNotFoundError(RegistryError):
    """No device with that id is registered."""


class StorageError(CollectorError):
    """The database refused or failed an operation."""


class DatabaseUnavailableError(StorageError):
    """The database cannot be reached right now (connection refused, locked, restarting).

    The ingest path never dead-letters on this error: it keeps the message unacknowledged
    and retries with backoff, so the broker still holds it.
    """
