"""The ``keys`` section of a downlink configuration: the collector's next signing key.

How the collector's downlink key is rotated (docs/security.md section 5): while it still
signs with its current key, the collector puts the public half of its next key in every
configuration it signs::

    "keys": {"next": {"alg": "Ed25519", "public_key": "<64 hex digits: the raw 32-byte key>"}}

An agent that accepted such a configuration (verified with the key it trusts) trusts the
announced key too; the first configuration signed by the announced key makes it the only
trusted key (the old one is retired). The collector builds the section, the agent reads it;
both use this module. Sans-I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from .errors import InvalidValue

__all__ = ["KEYS_SECTION", "announced_key", "keys_section", "raw_public_key"]

#: Name of the configuration body section (docs/protocol.md section 6).
KEYS_SECTION = "keys"
_ALG = "Ed25519"


def raw_public_key(key: Ed25519PublicKey) -> bytes:
    """The 32 raw bytes of an Ed25519 public key."""
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def keys_section(next_key: Ed25519PublicKey) -> dict[str, Any]:
    """The ``keys`` section announcing ``next_key``."""
    return {"next": {"alg": _ALG, "public_key": raw_public_key(next_key).hex()}}


def announced_key(body: Mapping[str, Any]) -> Ed25519PublicKey | None:
    """The next collector key a configuration body announces, if it has a ``keys`` section.

    Raises:
        InvalidValue: the section is not ``{"next": {"alg": "Ed25519", "public_key": hex}}``
            (a ``keys`` section without ``next`` announces nothing and is accepted).
    """
    section = body.get(KEYS_SECTION)
    if section is None:
        return None
    if not isinstance(section, Mapping):
        raise InvalidValue("configuration section 'keys' must be a map")
    announced = section.get("next")
    if announced is None:
        return None
    if not isinstance(announced, Mapping) or set(announced) != {"alg", "public_key"}:
        raise InvalidValue("keys.next must be a map with exactly 'alg' and 'public_key'")
    if announced["alg"] != _ALG:
        raise InvalidValue(f"keys.next.alg {announced['alg']!r:.40} is not {_ALG!r}")
    text = announced["public_key"]
    if not isinstance(text, str) or len(text) != 64:
        raise InvalidValue("keys.next.public_key must be 64 hex digits")
    try:
        return Ed25519PublicKey.from_public_bytes(bytes.fromhex(text))
    except ValueError as exc:
        raise InvalidValue(f"keys.next.public_key is not an Ed25519 key: {exc}") from exc
