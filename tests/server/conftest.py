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
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

PGBIN = Path("/usr/lib/postgresql/15/bin")
FEATURES, CLASSES = 16, 4


# PostgreSQL ---------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Postgres:
    port: int
    datadir: Path

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self) -> str:
        """A fresh, empty database; returns its SQLAlchemy URL."""
        import psycopg

        name = "t_" + secrets.token_hex(6)
        dsn = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        with psycopg.connect(dsn, autocommit=True) as con:
            con.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)


def _as_postgres(cmd: list[str]) -> list[str]:
    if os.geteuid() == 0:  # root cannot run initdb: use the postgres user
        return ["runuser", "-u", "postgres", "--", *cmd]
    return cmd


def _postmaster_pid(datadir: Path) -> int | None:
    try:
        return int((datadir / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    if not (PGBIN / "initdb").exists():
        pytest.skip(f"PostgreSQL 15 is not installed ({PGBIN} is missing)")
    root = Path(tempfile.mkdtemp(prefix="fedaas-pg-"))
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
    datadir = root / "data"
    run = {"check": True, "capture_output": True, "timeout": 60}
    subprocess.run(
        _as_postgres(
            [str(PGBIN / "initdb"), "-D", str(datadir), "-U", "postgres", "-A", "trust"]
            + ["--no-sync", "-E", "UTF8"]
        ),
        **run,
    )
    port = _free_port()
    options = f"-c listen_addresses=127.0.0.1 -p {port} -k {root} -c fsync=off"
    started = subprocess.run(
        _as_postgres(
            [str(PGBIN / "pg_ctl"), "-D", str(datadir), "-l", str(root / "log")]
            + ["-o", options, "-w", "start"]
        ),
        capture_output=True,
        timeout=60,
    )
    pid = _postmaster_pid(datadir)
    try:
        if started.returncode != 0:
            log = (root / "log").read_text() if (root / "log").exists() else ""
            pytest.fail(f"PostgreSQL did not start: {started.stderr.decode()} {log[-2000:]}")
        yield Postgres(port, datadir)
    finally:
        subprocess.run(
            _as_postgres([str(PGBIN / "pg_ctl"), "-D", str(datadir), "-m", "fast", "-w", "stop"]),
            capture_output=True,
            timeout=60,
        )
        if pid is not None:
            _wait_gone(pid)
        shutil.rmtree(root, ignore_errors=True)


def _wait_gone(pid: int, timeout: float = 10.0) -> None:
    """Make sure the process ``pid`` is gone (SIGKILL if it outlives ``timeout``)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


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
