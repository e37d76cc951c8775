"""Ed25519 key files for devices and the collector.

Format (documented in docs/protocol.md, "Keys"): the private key is PEM "PRIVATE KEY"
(PKCS #8, unencrypted, file mode 0600) and the public key is PEM "PUBLIC KEY"
(SubjectPublicKeyInfo), exactly what ``openssl genpkey -algorithm ed25519`` and
``openssl pkey -pubout`` produce, so keys can be made or checked with OpenSSL too.

``generate`` writes ``DIR/{name}.key`` and ``DIR/{name}.pub``; ``name`` is the device id
(the COSE ``kid`` of everything that device signs) or ``collector`` for the downlink key.
The private key file is created with O_EXCL and mode 0600 in one step, so it is never
readable by others, not even for an instant.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from protocol import check_device_id
from protocol.errors import InvalidRecord

__all__ = [
    "COLLECTOR_KEY_NAME",
    "GeneratedKeys",
    "InsecureKeyFile",
    "InvalidKeyFile",
    "KeyFileError",
    "KeyFileExists",
    "generate",
    "load_private_key",
    "load_public_key",
    "private_key_from_pem",
    "private_key_path",
    "public_key_from_pem",
    "public_key_path",
]

#: Name (and COSE kid) of the collector's downlink signing key.
COLLECTOR_KEY_NAME = "collector"
PRIVATE_SUFFIX = ".key"
PUBLIC_SUFFIX = ".pub"
#: A PEM key is a few hundred bytes; anything much larger is not a key file.
MAX_KEY_FILE_BYTES = 16 * 1024


class KeyFileError(Exception):
    """Root of the key-file errors; ``reason`` is a stable slug, the message names the file."""

    reason = "key_file"


class InsecureKeyFile(KeyFileError):  # noqa: N818 - reads as the condition, like protocol's errors
    """A private key file is readable or writable by group or others."""

    reason = "insecure_key_file"


class InvalidKeyFile(KeyFileError):  # noqa: N818
    """The file is missing, unreadable, not PEM, or not an Ed25519 key of the expected kind."""

    reason = "invalid_key_file"


class KeyFileExists(KeyFileError):  # noqa: N818
    """``generate`` would overwrite an existing key file (pass ``overwrite=True`` to allow)."""

    reason = "key_file_exists"


@dataclass(frozen=True, slots=True)
class GeneratedKeys:
    """What :func:`generate` wrote.

    Attributes:
        name: the key name (device id or ``collector``).
        private_path: the PKCS #8 PEM private key, mode 0600.
        public_path: the SubjectPublicKeyInfo PEM public key, mode 0644.
        public_key: the public key itself.
    """

    name: str
    private_path: Path
    public_path: Path
    public_key: Ed25519PublicKey


def private_key_path(out_dir: str | os.PathLike[str], name: str) -> Path:
    """``out_dir/{name}.key``."""
    return Path(out_dir) / f"{name}{PRIVATE_SUFFIX}"


def public_key_path(out_dir: str | os.PathLike[str], name: str) -> Path:
    """``out_dir/{name}.pub``."""
    return Path(out_dir) / f"{name}{PUBLIC_SUFFIX}"


def _write_new(path: Path, data: bytes, mode: int, *, overwrite: bool) -> None:
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if overwrite else os.O_EXCL)
    try:
        fd = os.open(path, flags, mode)
    except FileExistsError:
        raise KeyFileExists(f"{path} already exists; refusing to overwrite a key (use --force)") from None
    try:
        os.fchmod(fd, mode)  # an overwritten file keeps its old mode otherwise; umask is ignored too
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def generate(out_dir: str | os.PathLike[str], name: str, *, overwrite: bool = False) -> GeneratedKeys:
    """Create a new Ed25519 key pair as ``out_dir/{name}.key`` and ``out_dir/{name}.pub``.

    Args:
        out_dir: directory to write into (created with mode 0700 if missing).
        name: device id (``[A-Za-z0-9_-]{1,64}``) or ``collector``.
        overwrite: replace existing files instead of refusing.

    Raises:
        KeyFileError: ``name`` is not a valid id, or a file exists and ``overwrite`` is false.
    """
    try:
        check_device_id(name)
    except InvalidRecord as exc:
        raise KeyFileError(f"key name {name!r}: {exc}") from exc
    directory = Path(out_dir)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    private_path, public_path = private_key_path(directory, name), public_key_path(directory, name)
    if not overwrite:
        for path in (private_path, public_path):
            if path.exists():
                raise KeyFileExists(f"{path} already exists; refusing to overwrite a key (use --force)")
    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    _write_new(private_path, private_pem, 0o600, overwrite=overwrite)
    _write_new(public_path, public_pem, 0o644, overwrite=overwrite)
    return GeneratedKeys(name, private_path, public_path, key.public_key())


def _read_key_file(path: Path) -> bytes:
    try:
        info = path.stat()
    except OSError as exc:
        raise InvalidKeyFile(f"cannot read key file {path}: {exc.strerror}") from exc
    if not stat.S_ISREG(info.st_mode):
        raise InvalidKeyFile(f"key file {path} is not a regular file")
    if info.st_size > MAX_KEY_FILE_BYTES:
        raise InvalidKeyFile(f"key file {path} is {info.st_size} bytes, over {MAX_KEY_FILE_BYTES}")
    try:
        return path.read_bytes()
    except OSError as exc:
        raise InvalidKeyFile(f"cannot read key file {path}: {exc.strerror}") from exc


def private_key_from_pem(data: bytes, *, source: str = "<pem>") -> Ed25519PrivateKey:
    """Parse an unencrypted PKCS #8 PEM Ed25519 private key.

    Raises:
        InvalidKeyFile: not PEM, encrypted, or not Ed25519.
    """
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
        InvalidKeyFile: not PEM or not Ed25519.
    """
    raw = data.encode("ascii", "replace") if isinstance(data, str) else data
    try:
        key = serialization.load_pem_public_key(raw)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise InvalidKeyFile(f"{source} is not a PEM public key: {exc}") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise InvalidKeyFile(f"{source} holds a {type(key).__name__}, not an Ed25519 public key")
    return key


def load_private_key(path: str | os.PathLike[str]) -> Ed25519PrivateKey:
    """Load a device's or the collector's private key file.

    Refuses a file that group or others may read or write (mode must be 0600 or
    stricter), like ssh does.

    Raises:
        InsecureKeyFile: the file's mode grants access to group or others.
        InvalidKeyFile: missing, unreadable, not PEM PKCS #8, or not Ed25519.
    """
    key_path = Path(path)
    try:
        mode = stat.S_IMODE(key_path.stat().st_mode)
    except OSError as exc:
        raise InvalidKeyFile(f"cannot read key file {key_path}: {exc.strerror}") from exc
    if mode & 0o077:
        raise InsecureKeyFile(
            f"private key file {key_path} has mode {mode:04o}; it must not be accessible to group or "
            f"others (chmod 600 {key_path})"
        )
    return private_key_from_pem(_read_key_file(key_path), source=str(key_path))


def load_public_key(path: str | os.PathLike[str]) -> Ed25519PublicKey:
    """Load a PEM SubjectPublicKeyInfo Ed25519 public key file.

    Raises:
        InvalidKeyFile: missing, unreadable, not PEM, or not Ed25519.
    """
    key_path = Path(path)
    return public_key_from_pem(_read_key_file(key_path), source=str(key_path))
