"""A throw-away PKI for TLS tests: a CA, a server and a client certificate, and an unrelated rogue CA.

Keys are EC P-256: generating the whole set takes milliseconds, so one per session is cheap.
``cryptography`` is imported only when certificates are generated, so loading this module as a
pytest plugin never breaks collection of tests that do not use TLS.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec

__all__ = ["TlsFiles", "generate_pki", "issue_server_cert", "test_pki"]

# Certificates are valid from a day ago (tolerates a skewed test clock) to a month ahead.
_BACKDATE = dt.timedelta(days=1)
_LIFETIME = dt.timedelta(days=30)


@dataclass(frozen=True)
class TlsFiles:
    """Paths of a generated PKI, all PEM.

    Attributes:
        ca_cert: the test CA; trusts ``server_cert`` and ``client_cert``.
        ca_key: the test CA's private key (to issue more certificates).
        server_cert: server certificate for ``localhost``, ``127.0.0.1`` and ``::1``, signed by the CA.
        server_key: its private key.
        client_cert: client certificate (CN ``fieldgate-test-client``, clientAuth) for mTLS, signed by the CA.
        client_key: its private key.
        rogue_ca_cert: an unrelated CA that signed nothing the broker uses: verification with it must fail.
        rogue_ca_key: the rogue CA's private key.
    """

    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    rogue_ca_cert: Path
    rogue_ca_key: Path


def _need_cryptography() -> Any:
    try:
        import cryptography
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise RuntimeError(
            "TLS tests need the 'cryptography' package: pip install cryptography "
            "(it belongs in the project's test extra)"
        ) from exc
    return cryptography


def _new_key() -> ec.EllipticCurvePrivateKey:
    from cryptography.hazmat.primitives.asymmetric import ec

    return ec.generate_private_key(ec.SECP256R1())


def _name(common_name: str) -> x509.Name:
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    return x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fieldgate tests"),
        x509.NameAttribute(NameOID.COMMON_NAME, common_name),
    ])


def _make_ca(common_name: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    key = _new_key()
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + _LIFETIME)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _issue(
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    common_name: str,
    *,
    server: bool,
    dns_names: Iterable[str] = (),
    ip_addresses: Iterable[str] = (),
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """Issue a leaf certificate signed by ``ca_cert``; strict enough for Python's ``VERIFY_X509_STRICT``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import ExtendedKeyUsageOID

    key = _new_key()
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + _LIFETIME)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=True, key_cert_sign=False, crl_sign=False,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
    )
    sans: list[x509.GeneralName] = [x509.DNSName(n) for n in dns_names]
    sans += [x509.IPAddress(ipaddress.ip_address(a)) for a in ip_addresses]
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(ca_key, hashes.SHA256()), key


def _write(directory: Path, stem: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> tuple[Path, Path]:
    from cryptography.hazmat.primitives import serialization

    cert_path = directory / f"{stem}.crt"
    key_path = directory / f"{stem}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    key_path.chmod(0o600)
    return cert_path, key_path


def generate_pki(directory: Path) -> TlsFiles:
    """Generate a CA, a server and a client certificate, and a rogue CA into ``directory``.

    Args:
        directory: where the PEM files go (created if missing).

    Returns:
        The paths of every file.
    """
    _need_cryptography()
    directory.mkdir(parents=True, exist_ok=True)
    ca_cert, ca_key = _make_ca("fieldgate test CA")
    server_cert, server_key = _issue(
        ca_cert, ca_key, "localhost", server=True, dns_names=["localhost"], ip_addresses=["127.0.0.1", "::1"]
    )
    client_cert, client_key = _issue(ca_cert, ca_key, "fieldgate-test-client", server=False)
    rogue_cert, rogue_key = _make_ca("rogue CA")
    ca_paths = _write(directory, "ca", ca_cert, ca_key)
    server_paths = _write(directory, "server", server_cert, server_key)
    client_paths = _write(directory, "client", client_cert, client_key)
    rogue_paths = _write(directory, "rogue-ca", rogue_cert, rogue_key)
    return TlsFiles(
        ca_cert=ca_paths[0], ca_key=ca_paths[1],
        server_cert=server_paths[0], server_key=server_paths[1],
        client_cert=client_paths[0], client_key=client_paths[1],
        rogue_ca_cert=rogue_paths[0], rogue_ca_key=rogue_paths[1],
    )


def issue_server_cert(pki: TlsFiles, directory: Path, common_name: str, *, dns_names: Iterable[str] = (),
                      ip_addresses: Iterable[str] = ()) -> TlsFiles:
    """``pki`` with another server certificate, signed by its CA, for exactly the names given.

    For name-checking tests: e.g. a certificate for ``broker.site.example`` only, without the
    ``127.0.0.1`` SAN of the default one.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    _need_cryptography()
    directory.mkdir(parents=True, exist_ok=True)
    ca_cert = x509.load_pem_x509_certificate(pki.ca_cert.read_bytes())
    ca_key = serialization.load_pem_private_key(pki.ca_key.read_bytes(), password=None)
    cert, key = _issue(ca_cert, ca_key, common_name, server=True,  # type: ignore[arg-type]
                       dns_names=dns_names, ip_addresses=ip_addresses)
    cert_path, key_path = _write(directory, "server", cert, key)
    return dataclasses.replace(pki, server_cert=cert_path, server_key=key_path)


@pytest.fixture(scope="session")
def test_pki(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    """A PKI generated once per test session (see :func:`generate_pki`)."""
    return generate_pki(tmp_path_factory.mktemp("pki"))
