"""Per-device broker identity: Mosquitto password file and ACL, written by the collector.

How this works. Every device gets its own MQTT account, user name = device id, with a
random password; the collector has one account of its own. What each may touch is one
ACL file, the same for every deployment (Mosquitto's ``pattern`` lines substitute the
user name for ``%u``):

* a device may publish only ``lw/v1/{its id}/batch`` and ``lw/v1/{its id}/state`` (its
  Last Will too, which Mosquitto checks at CONNECT) and subscribe only to
  ``lw/v1/{its id}/config`` and ``lw/v1/{its id}/receipt``: it can neither read another vehicle's track nor write, or
  clear, any configuration;
* the collector reads every batch and state topic and writes every config and receipt topic;
* anonymous clients are refused (``allow_anonymous false`` in the broker configuration,
  see :func:`mosquitto_conf_lines`).

The password file uses Mosquitto 2's own format (``user:$7$101$salt$hash``, PBKDF2-SHA512
with 101 iterations and a 12-byte salt, as ``mosquitto_passwd`` writes it), so the broker
reads it directly and reloads it on SIGHUP after a device is added or revoked. Only the
hashes are stored; a device's password is shown once, when it is made.

Everything but :class:`BrokerAccounts`' file reads and writes is pure.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from protocol import MAX_PUBLISH_PACKET_BYTES, check_device_id
from protocol.errors import ProtocolError

from ..errors import CollectorError

__all__ = [
    "COLLECTOR_USER",
    "BrokerAccounts",
    "BrokerAuthError",
    "Credentials",
    "acl_text",
    "hash_password",
    "mosquitto_conf_lines",
    "verify_password",
]

COLLECTOR_USER = "lw-collector"
_ITERATIONS = 101
_SALT_BYTES = 12
_LINE = re.compile(r"^(?P<user>[^:\s]{1,64}):(?P<hash>\$7\$\d+\$[A-Za-z0-9+/=]+\$[A-Za-z0-9+/=]+)$")


class BrokerAuthError(CollectorError, ValueError):
    """A broker account file is malformed or an account cannot be made."""


@dataclass(frozen=True, slots=True)
class Credentials:
    """An MQTT account: user name and the clear password (shown once, never stored)."""

    username: str
    password: str

    def __repr__(self) -> str:
        return f"Credentials(username={self.username!r}, password='***')"


def hash_password(password: str, *, salt: bytes | None = None, iterations: int = _ITERATIONS) -> str:
    """The Mosquitto 2 ``$7$`` hash of ``password`` (PBKDF2-SHA512)."""
    salt = os.urandom(_SALT_BYTES) if salt is None else salt
    digest = hashlib.pbkdf2_hmac("sha512", password.encode("utf-8"), salt, iterations)
    return f"$7${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def verify_password(password: str, hashed: str) -> bool:
    """True when ``password`` matches a ``$7$`` hash."""
    try:
        _, kind, iterations, salt, digest = hashed.split("$")
        if kind != "7":
            return False
        expected = base64.b64decode(digest, validate=True)
        got = hashlib.pbkdf2_hmac("sha512", password.encode("utf-8"), base64.b64decode(salt, validate=True),
                                  int(iterations))  # fmt: skip
    except ValueError:
        return False
    return hmac.compare_digest(expected, got)


def acl_text(collector_user: str = COLLECTOR_USER) -> str:
    """The ACL file: the collector's rights, then every device's own topics by pattern."""
    return (
        "# LienWatch broker ACL (written by `lienwatch collector broker`; docs/security.md).\n"
        "# The collector reads every device's uplink and writes every device's configuration\n"
        "# and receipts.\n"
        f"user {collector_user}\n"
        "topic read lw/v1/+/batch\n"
        "topic read lw/v1/+/state\n"
        "topic readwrite lw/v1/+/config\n"
        "topic write lw/v1/+/receipt\n"
        "\n"
        "# Every other account is a device whose user name is its device id: it may publish\n"
        "# its own batches and state (its Last Will included) and read its own configuration\n"
        "# and receipts.\n"
        "pattern write lw/v1/%u/batch\n"
        "pattern write lw/v1/%u/state\n"
        "pattern read lw/v1/%u/config\n"
        "pattern read lw/v1/%u/receipt\n"
    )


def mosquitto_conf_lines(password_file: Path, acl_file: Path) -> list[str]:
    """The lines of ``mosquitto.conf`` that turn authentication and the ACL on, and refuse any
    packet larger than the protocol's largest message needs (docs/security.md section 3)."""
    return [
        "allow_anonymous false",
        f"password_file {password_file}",
        f"acl_file {acl_file}",
        f"max_packet_size {MAX_PUBLISH_PACKET_BYTES}",
    ]


def _parse(text: str, where: Path) -> dict[str, str]:
    accounts: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = _LINE.match(line)
        if match is None:
            raise BrokerAuthError(f"{where}:{number}: not a 'user:$7$...' line")
        accounts[match["user"]] = match["hash"]
    return accounts


def _render(accounts: Mapping[str, str]) -> str:
    return "".join(f"{user}:{hashed}\n" for user, hashed in sorted(accounts.items()))


def _write_private(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, text.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


class BrokerAccounts:
    """The broker's password file and ACL file in one folder.

    Args:
        folder: holds ``passwd`` (mode 0600) and ``acl``; created when missing.
        collector_user: the collector's account name.
    """

    def __init__(self, folder: Path, *, collector_user: str = COLLECTOR_USER) -> None:
        self.folder = Path(folder)
        self.collector_user = collector_user
        self.password_file = self.folder / "passwd"
        self.acl_file = self.folder / "acl"

    def accounts(self) -> dict[str, str]:
        """User name -> password hash, as stored."""
        try:
            return _parse(self.password_file.read_text(encoding="utf-8"), self.password_file)
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise BrokerAuthError(f"cannot read {self.password_file}: {exc.strerror}") from exc

    def _save(self, accounts: Mapping[str, str]) -> None:
        try:
            self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
            _write_private(self.password_file, _render(accounts))
            _write_private(self.acl_file, acl_text(self.collector_user))
        except OSError as exc:
            raise BrokerAuthError(f"cannot write the broker files in {self.folder}: {exc.strerror}") from exc

    def _make(self, username: str, accounts: dict[str, str]) -> Credentials:
        password = secrets.token_urlsafe(24)
        accounts[username] = hash_password(password)
        self._save(accounts)
        return Credentials(username, password)

    def collector_account(self) -> Credentials:
        """Make (or replace) the collector's account; returns its new password."""
        return self._make(self.collector_user, self.accounts())

    def add_device(self, device_id: str) -> Credentials:
        """Make (or replace) ``device_id``'s account; returns its new password.

        Raises:
            BrokerAuthError: the id is not a valid device id or is the collector's name.
        """
        try:
            check_device_id(device_id)
        except ProtocolError as exc:
            raise BrokerAuthError(str(exc)) from exc
        if device_id == self.collector_user:
            raise BrokerAuthError(f"device id {device_id!r} is the collector's broker account name")
        return self._make(device_id, self.accounts())

    def remove(self, usernames: Iterable[str]) -> list[str]:
        """Delete accounts (a revoked device); returns the names that existed."""
        accounts = self.accounts()
        gone = [u for u in usernames if accounts.pop(u, None) is not None]
        if gone:
            self._save(accounts)
        return gone
