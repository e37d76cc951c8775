"""Reading and writing Ed25519 key files (the format itself is :mod:`protocol.keys`).

One reader for every program: the agent loads its device key, the collector its downlink
key, ``lienwatch inspect`` a public key. Reads are bounded (a key file is a few hundred
bytes) and a private key file that group or others may access is refused, like ssh does.
:func:`generate` creates the private key file with O_EXCL and mode 0600 in one step, so it
is never readable by others, not even for an instant.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from protocol.errors import InvalidKeyFile, KeyFileExists
from protocol.keys import (
    MAX_KEY_FILE_BYTES,
    PRIVATE_SUFFIX,
    PUBLIC_SUFFIX,
    check_key_name,
    check_private_key_mode,
    private_key_from_pem,
    private_key_to_pem,
    public_key_from_pem,
    public_key_to_pem,
)

__all__ = [
    "GeneratedKeys",
    "generate",
    "load_private_key",
    "load_public_key",
    "private_key_path",
    "public_key_path",
]


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
        OSError: the directory or a file cannot be written.
    """
    check_key_name(name)
    directory = Path(out_dir)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    private_path, public_path = private_key_path(directory, name), public_key_path(directory, name)
    if not overwrite:
        for path in (private_path, public_path):
            if path.exists():
                raise KeyFileExists(f"{path} already exists; refusing to overwrite a key (use --force)")
    key = Ed25519PrivateKey.generate()
    _write_new(private_path, private_key_to_pem(key), 0o600, overwrite=overwrite)
    _write_new(public_path, public_key_to_pem(key.public_key()), 0o644, overwrite=overwrite)
    return GeneratedKeys(name, private_path, public_path, key.public_key())


def _read_key_file(path: Path) -> tuple[bytes, int]:
    """The file's bytes and permission bits, refusing non-regular or oversized files."""
    try:
        info = path.stat()
    except OSError as exc:
        raise InvalidKeyFile(f"cannot read key file {path}: {exc.strerror}") from exc
    if not stat.S_ISREG(info.st_mode):
        raise InvalidKeyFile(f"key file {path} is not a regular file")
    if info.st_size > MAX_KEY_FILE_BYTES:
        raise InvalidKeyFile(f"key file {path} is {info.st_size} bytes, over {MAX_KEY_FILE_BYTES}")
    try:
        return path.read_bytes(), stat.S_IMODE(info.st_mode)
    except OSError as exc:
        raise InvalidKeyFile(f"cannot read key file {path}: {exc.strerror}") from exc


def load_private_key(path: str | os.PathLike[str]) -> Ed25519PrivateKey:
    """Load a device's or the collector's private key file (mode 0600 or stricter).

    Raises:
        InsecureKeyFile: the file's mode grants access to group or others.
        InvalidKeyFile: missing, unreadable, not PEM PKCS #8, or not Ed25519.
    """
    key_path = Path(path)
    data, mode = _read_key_file(key_path)
    check_private_key_mode(mode, str(key_path))
    return private_key_from_pem(data, source=str(key_path))


def load_public_key(path: str | os.PathLike[str]) -> Ed25519PublicKey:
    """Load a PEM SubjectPublicKeyInfo Ed25519 public key file.

    Raises:
        InvalidKeyFile: missing, unreadable, not PEM, or not Ed25519.
    """
    key_path = Path(path)
    data, _mode = _read_key_file(key_path)
    return public_key_from_pem(data, source=str(key_path))
