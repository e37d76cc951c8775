"""protocol.keys, protocol.cli.key_files and ``lienwatch keys``: file formats, modes, refusals."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ec import SECP256R1, generate_private_key

from protocol.cli import keys as keys_cli
from protocol.cli.key_files import generate, load_private_key, load_public_key
from protocol.errors import InsecureKeyFile, InvalidKeyFile, KeyFileError, KeyFileExists
from protocol.examples import EXAMPLE_KEY_SEED, example_key
from protocol.keys import (
    check_private_key_mode,
    private_key_from_pem,
    private_key_to_pem,
    public_key_from_pem,
    public_key_to_pem,
)

# RFC 8410 section 10.3 private key and section 10.1 public key, as OpenSSL writes them.
RFC8410_PRIVATE_PEM = b"""-----BEGIN PRIVATE KEY-----
MC4CAQAwBQYDK2VwBCIEINTuctv5E1hK1bbY8fdp+K06/nwoy/HU++CXqI9EdVhC
-----END PRIVATE KEY-----
"""
RFC8410_PUBLIC_PEM = b"""-----BEGIN PUBLIC KEY-----
MCowBQYDK2VwAyEAGb9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuE=
-----END PUBLIC KEY-----
"""


def test_generate_writes_pkcs8_0600_and_spki(tmp_path: Path) -> None:
    made = generate(tmp_path / "keys", "car-0001")
    assert made.private_path == tmp_path / "keys" / "car-0001.key"
    assert made.public_path == tmp_path / "keys" / "car-0001.pub"
    assert stat.S_IMODE(made.private_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(made.public_path.stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "keys").stat().st_mode) == 0o700
    assert made.private_path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----\n")
    assert made.public_path.read_bytes().startswith(b"-----BEGIN PUBLIC KEY-----\n")
    private, public = load_private_key(made.private_path), load_public_key(made.public_path)
    raw = serialization.Encoding.Raw, serialization.PublicFormat.Raw
    assert private.public_key().public_bytes(*raw) == public.public_bytes(*raw) == made.public_key.public_bytes(*raw)


def test_generated_key_signs_what_the_public_key_verifies(tmp_path: Path) -> None:
    made = generate(tmp_path, "car-0001")
    load_public_key(made.public_path).verify(load_private_key(made.private_path).sign(b"m"), b"m")


def test_generate_refuses_to_overwrite(tmp_path: Path) -> None:
    generate(tmp_path, "car-0001")
    before = (tmp_path / "car-0001.key").read_bytes()
    with pytest.raises(KeyFileExists, match=r"car-0001\.key already exists"):
        generate(tmp_path, "car-0001")
    assert (tmp_path / "car-0001.key").read_bytes() == before


def test_generate_overwrite_replaces_and_tightens_the_mode(tmp_path: Path) -> None:
    first = generate(tmp_path, "car-0001")
    first.private_path.chmod(0o644)
    second = generate(tmp_path, "car-0001", overwrite=True)
    assert stat.S_IMODE(second.private_path.stat().st_mode) == 0o600
    assert second.private_path.read_bytes() != b""
    raw = serialization.Encoding.Raw, serialization.PublicFormat.Raw
    assert first.public_key.public_bytes(*raw) != second.public_key.public_bytes(*raw)


def test_generate_refuses_a_name_that_is_not_a_device_id(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="must match"):
        generate(tmp_path, "../etc/passwd")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660, 0o644, 0o606])
def test_load_private_key_refuses_group_or_world_access(tmp_path: Path, mode: int) -> None:
    made = generate(tmp_path, "car-0001")
    made.private_path.chmod(mode)
    with pytest.raises(InsecureKeyFile, match=f"has mode {mode:04o}.*chmod 600"):
        load_private_key(made.private_path)


def test_load_private_key_accepts_0400(tmp_path: Path) -> None:
    made = generate(tmp_path, "car-0001")
    made.private_path.chmod(0o400)
    load_private_key(made.private_path)


def test_load_private_key_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InvalidKeyFile, match="cannot read key file"):
        load_private_key(tmp_path / "nope.key")


def test_load_private_key_directory(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir(mode=0o700)
    with pytest.raises(InvalidKeyFile, match="not a regular file"):
        load_private_key(tmp_path / "d")


def test_load_private_key_garbage(tmp_path: Path) -> None:
    path = tmp_path / "x.key"
    path.write_bytes(b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
    path.chmod(0o600)
    with pytest.raises(InvalidKeyFile, match="not an unencrypted PEM private key"):
        load_private_key(path)


def test_load_private_key_oversized(tmp_path: Path) -> None:
    path = tmp_path / "x.key"
    path.write_bytes(b"A" * 20_000)
    path.chmod(0o600)
    with pytest.raises(InvalidKeyFile, match="20000 bytes, over 16384"):
        load_private_key(path)


def test_load_private_key_of_another_algorithm(tmp_path: Path) -> None:
    path = tmp_path / "ec.key"
    pem = generate_private_key(SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    path.write_bytes(pem)
    path.chmod(0o600)
    with pytest.raises(InvalidKeyFile, match=r"holds a \w*PrivateKey, not an Ed25519 private key"):
        load_private_key(path)


def test_encrypted_private_key_is_refused() -> None:
    pem = example_key().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret"),
    )
    with pytest.raises(InvalidKeyFile, match="not an unencrypted PEM private key"):
        private_key_from_pem(pem)


def test_openssl_format_keys_from_rfc8410_load() -> None:
    private = private_key_from_pem(RFC8410_PRIVATE_PEM)
    public = public_key_from_pem(RFC8410_PUBLIC_PEM.decode())
    raw = serialization.Encoding.Raw, serialization.PublicFormat.Raw
    assert private.public_key().public_bytes(*raw) == public.public_bytes(*raw)
    assert public.public_bytes(*raw).hex() == "19bf44096984cdfe8541bac167dc3b96c85086aa30b6b6cb0c5c38ad703166e1"


def test_public_key_from_a_private_pem_is_refused() -> None:
    with pytest.raises(InvalidKeyFile, match="not a PEM public key"):
        public_key_from_pem(RFC8410_PRIVATE_PEM)


def test_example_key_pem_is_stable() -> None:
    pem = example_key().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    assert private_key_from_pem(pem).private_bytes_raw() == EXAMPLE_KEY_SEED


def test_format_is_pure_bytes_in_bytes_out() -> None:
    key = example_key()
    assert private_key_to_pem(private_key_from_pem(private_key_to_pem(key))) == private_key_to_pem(key)
    assert public_key_to_pem(public_key_from_pem(public_key_to_pem(key.public_key()))).startswith(
        b"-----BEGIN PUBLIC KEY-----\n"
    )
    check_private_key_mode(0o600, "k")
    check_private_key_mode(0o400, "k")
    with pytest.raises(InsecureKeyFile, match="k has mode 0640"):
        check_private_key_mode(0o640, "k")
    with pytest.raises(InvalidKeyFile, match="20000 bytes, over 16384"):
        private_key_from_pem(b"A" * 20_000, source="big")


# ------------------------------------------------------------------ the CLI


def test_cli_generate_device(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert keys_cli.main(["generate", "--device", "car-0001", "--out", str(tmp_path)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["name"] == "car-0001"
    assert printed["private_key"] == str(tmp_path / "car-0001.key")
    assert stat.S_IMODE(os.stat(printed["private_key"]).st_mode) == 0o600
    raw = load_public_key(printed["public_key"]).public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    assert len(printed["public_key_b64url"]) == 43
    assert raw


def test_cli_generate_collector(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert keys_cli.main(["generate", "--collector", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "collector.key").exists()
    assert (tmp_path / "collector.pub").exists()
    assert keys_cli.main(["generate", "--name", "collector-2", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "collector-2.key").exists()


def test_cli_refuses_overwrite_unless_forced(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert keys_cli.main(["generate", "--device", "car-0001", "--out", str(tmp_path)]) == 0
    assert keys_cli.main(["generate", "--device", "car-0001", "--out", str(tmp_path)]) == 1
    assert "key_file_exists" in capsys.readouterr().err
    assert keys_cli.main(["generate", "--device", "car-0001", "--out", str(tmp_path), "--force"]) == 0


def test_cli_bad_device_id(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert keys_cli.main(["generate", "--device", "car 1", "--out", str(tmp_path)]) == 1
    assert "must match [A-Za-z0-9_-]{1,64}" in capsys.readouterr().err


def test_cli_needs_exactly_one_name(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as info:
        keys_cli.main(["generate", "--device", "a", "--collector", "--out", str(tmp_path)])
    assert info.value.code == 2
    with pytest.raises(SystemExit):
        keys_cli.main(["generate", "--out", str(tmp_path)])
