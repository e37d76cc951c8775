"""The Ed25519 key file format shared by devices, the collector and the command line.

Format (documented in docs/protocol.md, "Keys"): the private key is PEM "PRIVATE KEY"
(PKCS #8, unencrypted, file mode 0600) and the public key is PEM "PUBLIC KEY"
(SubjectPublicKeyInfo), exactly what ``openssl genpkey -algorithm ed25519`` and
``openssl pkey -pubout`` produce, so keys can be made or checked with OpenSSL too.

A key pair is stored as ``{name}.key`` and ``{name}.pub``; ``name`` is the device id (the
COSE ``kid`` of everything that device signs) or ``collector`` for the downlink key.

Sans-I/O: this module turns bytes into keys and keys into bytes and judges a file mode
it is handed; reading and writing the files is the caller's job.
"""

from __future__ import annotations

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from .errors import InsecureKeyFile, InvalidKeyFile, InvalidRecord, KeyFileError
from .records import check_device_id

__all__ = [
    "COLLECTOR_KEY_NAME",
    "MAX_KEY_FILE_BYTES",
    "PRIVATE_SUFFIX",
    "PUBLIC_SUFFIX",
    "check_key_name",
    "check_private_key_mode",
    "private_key_from_pem",
    "private_key_to_pem",
    "public_key_from_pem",
    "public_key_to_pem",
]

#: Name (and COSE kid) of the collector's downlink signing key.
COLLECTOR_KEY_NAME = "collector"
PRIVATE_SUFFIX = ".key"
PUBLIC_SUFFIX = ".pub"
#: A PEM key is a few hundred bytes; anything much larger is not a key file.
MAX_KEY_FILE_BYTES = 16 * 1024


def check_key_name(name: str) -> str:
    """Return ``name`` if it can name a key pair (a device id or ``collector``).

    Raises:
        KeyFileError: ``name`` does not match ``[A-Za-z0-9_-]{1,64}``.
    """
    try:
        return check_device_id(name)
    except InvalidRecord as exc:
        raise KeyFileError(f"key name {name!r}: {exc}") from exc


def check_private_key_mode(mode: int, source: str) -> None:
    """Refuse a private key file that group or others may read or write (like ssh does).

    Args:
        mode: the file's permission bits (``stat.S_IMODE(st_mode)``).
        source: names the file in the message.

    Raises:
        InsecureKeyFile: the mode grants any access to group or others.
    """
    if mode & 0o077:
        raise InsecureKeyFile(
            f"private key file {source} has mode {mode:04o}; it must not be accessible to group or "
            f"others (chmod 600 {source})"
        )


def _check_size(data: bytes, source: str) -> None:
    if len(data) > MAX_KEY_FILE_BYTES:
        raise InvalidKeyFile(f"key file {source} is {len(data)} bytes, over {MAX_KEY_FILE_BYTES}")


def private_key_from_pem(data: bytes, *, source: str = "<pem>") -> Ed25519PrivateKey:
    """Parse an unencrypted PKCS #8 PEM Ed25519 private key.

    Raises:
        InvalidKeyFile: too large, not PEM, encrypted, or not Ed25519.
    """
    _check_size(data, source)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise InvalidKeyFile(f"{source} is not an unencrypted PEM private key: {exc}") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise InvalidKeyFile(f"{source} holds a {type(key).__name__}, not an Ed25519 private key")
    return key


def public_key_from_pem(data: bytes | str, *, source: str = "<pem>") -> Ed25519PublicKey:
    """Parse a PEM SubjectPublicKeyInfo Ed25519 public key (text or bytes).

    Raises:
        InvalidKeyFile: too large, not PEM, or not Ed25519.
    """
    raw = data.encode("ascii", "replace") if isinstance(data, str) else data
    _check_size(raw, source)
    try:
        key = serialization.load_pem_public_key(raw)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise InvalidKeyFile(f"{source} is not a PEM public key: {exc}") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise InvalidKeyFile(f"{source} holds a {type(key).__name__}, not an Ed25519 public key")
    return key


def private_key_to_pem(key: Ed25519PrivateKey) -> bytes:
    """The private key file's content: unencrypted PKCS #8 PEM."""
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def public_key_to_pem(key: Ed25519PublicKey) -> bytes:
    """The public key file's content: SubjectPublicKeyInfo PEM."""
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
