"""A throwaway certificate authority for the private broker: CA, server and client certificates.

The HIL rig (and the tests that check certificate identities) make a new CA at start, sign
the broker's server certificate for ``127.0.0.1``/``localhost`` with it, and sign client
certificates whose CN is an MQTT user name (a device id, or the collector's account): the
broker's certificate listener takes that CN as the user name (``use_identity_as_username``),
so the same ACL applies as for a password login. Keys are ECDSA P-256, written mode 0600;
nothing here is meant to outlive the rig's work directory.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .services import BrokerTls

__all__ = ["CertificateAuthority", "ClientCertificate"]

_VALID = datetime.timedelta(days=2)
_CA_USAGE = x509.KeyUsage(
    digital_signature=False, content_commitment=False, key_encipherment=False, data_encipherment=False,
    key_agreement=False, key_cert_sign=True, crl_sign=True, encipher_only=False, decipher_only=False,
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class ClientCertificate:
    """A client certificate and its key, both PEM files."""

    cert_file: Path
    key_file: Path


def _write(path: Path, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    _write(path, pem, 0o600)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


class CertificateAuthority:
    """A new CA in ``folder`` (``ca.crt``/``ca.key``) that signs server and client certificates."""

    def __init__(self, folder: Path, *, name: str = "LienWatch rig CA") -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.ca_file = self.folder / "ca.crt"
        self._key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        self._cert = (
            x509.CertificateBuilder()
            .subject_name(_name(name))
            .issuer_name(_name(name))
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + _VALID)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_CA_USAGE, critical=True)
            .sign(self._key, hashes.SHA256())
        )
        _write(self.ca_file, self._cert.public_bytes(serialization.Encoding.PEM), 0o644)
        _write_key(self.folder / "ca.key", self._key)

    def _issue(self, common_name: str, stem: str, *, server: bool) -> ClientCertificate:
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name))
            .issuer_name(self._cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + _VALID)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        )
        if server:
            loopback = x509.IPAddress(ipaddress.ip_address("127.0.0.1"))
            san = x509.SubjectAlternativeName([x509.DNSName("localhost"), loopback])
            builder = builder.add_extension(san, critical=False).add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
            )
        else:
            builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        cert = builder.sign(self._key, hashes.SHA256())
        out = ClientCertificate(self.folder / f"{stem}.crt", self.folder / f"{stem}.key")
        _write(out.cert_file, cert.public_bytes(serialization.Encoding.PEM), 0o644)
        _write_key(out.key_file, key)
        return out

    def server(self) -> BrokerTls:
        """A server certificate for 127.0.0.1 and localhost, as the broker's TLS settings."""
        issued = self._issue("localhost", "server", server=True)
        return BrokerTls(self.ca_file, issued.cert_file, issued.key_file)

    def client(self, username: str) -> ClientCertificate:
        """A client certificate whose CN is the MQTT user name ``username``."""
        return self._issue(username, f"client-{username}", server=False)
