"""Fixtures for the coordinator's security and persistence tests.

- ``postgres``: a throwaway PostgreSQL 15 cluster for the whole session
  (initdb as the ``postgres`` user, trust auth, no fsync, loopback only,
  its socket in its own temp folder), stopped by ``pg_ctl -m fast`` and,
  failing that, by the postmaster's PID. Skipped, saying why, only where
  the PostgreSQL 15 binaries are not installed.
- ``db_url``: parametrized over ``sqlite`` and ``postgresql``; a fresh,
  empty database per test (``None`` for SQLite: the coordinator's default
  file in its state folder).
- ``pki``: a CA, a server certificate for 127.0.0.1 (IP SAN) and a client
  certificate, generated at test time with ``cryptography``.
- ``member_data``: small NPZ datasets (``x``: 16 features, ``y``: 4 classes).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from fixtures import postgres as pg
from fixtures.postgres import Postgres

FEATURES, CLASSES = 16, 4


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    """One PostgreSQL cluster for the session (skipped, saying why, where it isn't installed)."""
    if not pg.installed():
        pytest.skip(f"PostgreSQL 15 is not installed ({pg.PGBIN} is missing)")
    try:
        cluster = pg.create_cluster()
    except RuntimeError as exc:
        pytest.fail(str(exc))
    try:
        yield cluster
    finally:
        cluster.destroy()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest) -> str | None:
    """``None`` (SQLite in the coordinator's state folder) or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return None
    pg: Postgres = request.getfixturevalue("postgres")
    return pg.create_database()


# TLS ----------------------------------------------------------------------------------


@dataclass
class Pki:
    folder: Path
    ca_cert: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca_cert: Path  # a CA that signed nothing here
    stranger_cert: Path  # a client certificate signed by the other CA
    stranger_key: Path


def _key():  # type: ignore[no-untyped-def]
    from cryptography.hazmat.primitives.asymmetric import ec

    return ec.generate_private_key(ec.SECP256R1())


def _write_key(key, path: Path) -> None:  # type: ignore[no-untyped-def]
    from cryptography.hazmat.primitives import serialization

    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)


def _cert(subject: str, key, issuer_name, issuer_key, *, ca: bool, usage=None, san=None):  # type: ignore[no-untyped-def]
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import NameOID

    now = dt.datetime.now(dt.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer_name or name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    else:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
            critical=False,
        ).add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    return builder.sign(issuer_key or key, hashes.SHA256())


def _write_cert(cert, path: Path) -> None:  # type: ignore[no-untyped-def]
    from cryptography.hazmat.primitives import serialization

    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    from cryptography import x509
    from cryptography.x509.oid import ExtendedKeyUsageOID

    folder = tmp_path_factory.mktemp("pki")
    ca_key = _key()
    ca = _cert("fedaas test CA", ca_key, None, None, ca=True)
    server_key = _key()
    server = _cert(
        "127.0.0.1",
        server_key,
        ca.subject,
        ca_key,
        ca=False,
        usage=ExtendedKeyUsageOID.SERVER_AUTH,
        san=[x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")],
    )
    client_key = _key()
    client = _cert(
        "member-a", client_key, ca.subject, ca_key, ca=False, usage=ExtendedKeyUsageOID.CLIENT_AUTH
    )
    other_key = _key()
    other = _cert("some other CA", other_key, None, None, ca=True)
    stranger_key = _key()
    stranger = _cert(
        "stranger",
        stranger_key,
        other.subject,
        other_key,
        ca=False,
        usage=ExtendedKeyUsageOID.CLIENT_AUTH,
    )
    pki = Pki(
        folder,
        folder / "ca.pem",
        folder / "server.pem",
        folder / "server.key",
        folder / "client.pem",
        folder / "client.key",
        folder / "other-ca.pem",
        folder / "stranger.pem",
        folder / "stranger.key",
    )
    _write_cert(ca, pki.ca_cert)
    _write_cert(server, pki.server_cert)
    _write_key(server_key, pki.server_key)
    _write_cert(client, pki.client_cert)
    _write_key(client_key, pki.client_key)
    _write_cert(other, pki.other_ca_cert)
    _write_cert(stranger, pki.stranger_cert)
    _write_key(stranger_key, pki.stranger_key)
    return pki


# data ------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def member_data(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Three members' NPZ files: 120 examples each, learnable (labels from a linear rule)."""
    folder = tmp_path_factory.mktemp("member-data")
    rng = np.random.default_rng(7)
    weights = rng.normal(size=(FEATURES, CLASSES))
    paths = []
    for i in range(3):
        x = rng.normal(size=(120, FEATURES)).astype(np.float32)
        y = np.argmax(x @ weights, axis=1).astype(np.int64)
        path = folder / f"member_{i}.npz"
        np.savez(path, x=x, y=y)
        paths.append(path)
    return paths
