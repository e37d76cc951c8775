"""Which collector keys the agent trusts for configurations, across a downlink key rotation.

How this works (docs/security.md section 5). The agent starts from the collector public key
in ``agent.toml``. A configuration verified by a trusted key may announce the collector's
next key (the ``keys`` section, :mod:`protocol.downlink_keys`); from then on a configuration
signed by that next key verifies too. The first one accepted that was signed by the next
key promotes it: it becomes the only trusted key and the old key is retired (a stolen old
key signs nothing the agent takes any more).

Each promotion is recorded by appending the *announcing* configuration message, signed by
the key it replaces, to ``chain_file`` (records of a 4-byte big-endian length + the COSE
message). At start the chain is replayed from the configured key: every record must verify
with the key reached so far and names the next one. So the file cannot be edited into
trusting a key the collector did not announce; a record that does not verify (a damaged
file) stops the replay there, counted and logged, with the keys reached so far.
"""

from __future__ import annotations

import logging
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from protocol import DeviceConfig, open_config
from protocol.downlink_keys import announced_key, raw_public_key
from protocol.errors import BadSignature, ProtocolError

from .sequence import write_atomically

__all__ = ["DownlinkTrust"]

log = logging.getLogger("lienwatch.uplink")
_LENGTH = 4
_MAX_RECORDS = 1000


def _same(a: Ed25519PublicKey, b: Ed25519PublicKey) -> bool:
    return raw_public_key(a) == raw_public_key(b)


class DownlinkTrust:
    """The trusted collector key, the announced next key, and the promotion chain on disk.

    Args:
        configured_key: the collector public key of ``agent.toml``.
        topic: this device's configuration topic (the signatures' external AAD).
        chain_file: where promotions are recorded (None: nowhere; they last until restart).
    """

    def __init__(self, configured_key: Ed25519PublicKey, topic: str, chain_file: Path | None) -> None:
        self.topic = topic
        self.chain_file = chain_file
        self.key = configured_key
        self.next_key: Ed25519PublicKey | None = None
        self._announcement: bytes | None = None
        self.counters: dict[str, int] = {}
        self._chain: list[bytes] = []
        self._replay()

    def _count(self, name: str) -> None:
        self.counters[name] = self.counters.get(name, 0) + 1

    def _read_records(self) -> list[bytes]:
        if self.chain_file is None:
            return []
        try:
            data = self.chain_file.read_bytes()
        except FileNotFoundError:
            return []
        except OSError as exc:
            self._count("config_keys_unreadable")
            log.warning("config_keys_unreadable", extra={"fields": {"file": str(self.chain_file), "error": str(exc)}})
            return []
        records: list[bytes] = []
        at = 0
        while at < len(data) and len(records) < _MAX_RECORDS:
            size = int.from_bytes(data[at : at + _LENGTH], "big")
            record = data[at + _LENGTH : at + _LENGTH + size]
            if size == 0 or len(record) != size:
                self._count("config_keys_unreadable")
                fields = {"file": str(self.chain_file), "error": f"truncated record at byte {at}"}
                log.warning("config_keys_unreadable", extra={"fields": fields})
                break
            records.append(record)
            at += _LENGTH + size
        return records

    def _replay(self) -> None:
        for record in self._read_records():
            try:
                announced = announced_key(open_config(record, self.topic, self.key).body)
            except ProtocolError as exc:
                self._count("config_keys_unreadable")
                fields = {"file": str(self.chain_file), "error": str(exc)}
                log.warning("config_keys_unreadable", extra={"fields": fields})
                break
            if announced is None:
                break
            self.key = announced
            self._chain.append(record)

    def open(self, message: bytes) -> tuple[DeviceConfig, bool]:
        """Verify a configuration message; returns it and whether the *next* key signed it.

        Raises:
            ProtocolError: neither trusted key verifies it, or it is malformed.
        """
        try:
            return open_config(message, self.topic, self.key), False
        except BadSignature:
            if self.next_key is None:
                raise
        return open_config(message, self.topic, self.next_key), True

    def held(self, config: DeviceConfig, message: bytes) -> None:
        """The configuration the agent holds (at start, or just accepted) may announce a next key."""
        try:
            announced = announced_key(config.body)
        except ProtocolError:  # checked before it was applied; a stored one may predate the check
            announced = None
        if announced is not None and _same(announced, self.key):
            announced = None
        self.next_key = announced
        self._announcement = message if announced is not None else None

    def accepted(self, config: DeviceConfig, message: bytes, *, by_next: bool) -> None:
        """Record an accepted configuration: promote the next key if it signed it, then note
        what the new configuration announces."""
        if by_next and self.next_key is not None and self._announcement is not None:
            self._chain.append(self._announcement)
            self.key = self.next_key
            self._count("config_key_promoted")
            log.warning("config_key_promoted", extra={"fields": {"fingerprint": raw_public_key(self.key).hex()[:16]}})
            if self.chain_file is not None:
                data = b"".join(len(r).to_bytes(_LENGTH, "big") + r for r in self._chain)
                try:
                    write_atomically(self.chain_file, data)
                except OSError as exc:  # trusted until restart; the collector keeps announcing
                    self._count("config_keys_unwritable")
                    fields = {"file": str(self.chain_file), "error": str(exc)}
                    log.warning("config_keys_unwritable", extra={"fields": fields})
        self.held(config, message)
