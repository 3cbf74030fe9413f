"""Start the coordinator: state folder, admin token, socket, TLS, uvicorn."""

from __future__ import annotations

import errno
import ipaddress
import json
import logging
import os
import socket
import ssl
from pathlib import Path
from types import FrameType
from typing import IO, Any

import uvicorn

from fedaas.folder_lock import FolderInUse, in_use, lock_folder
from fedaas.server.app import create_app
from fedaas.server.auth import load_admin_token
from fedaas.server.connections import MAX_CONNECTIONS, guarded
from fedaas.server.db_lock import hold_database, stop_when_fenced
from fedaas.server.tls_identity import CertificateProtocol

ENDPOINT_FILE = "endpoint.json"
LOCK_FILE = "coordinator.lock"
"""Held (``flock``) by the coordinator using the state folder; it names that process."""
log = logging.getLogger("fedaas.server")


class StartupError(ValueError):
    """The coordinator cannot start with these settings; ``option`` names the one to change."""

    def __init__(self, message: str, option: str | None = None) -> None:
        super().__init__(message)
        self.option = option


class TlsConfigError(StartupError):
    """The coordinator's TLS files are missing, unreadable or do not match."""


def lock_state(state: Path) -> IO[str]:
    """One coordinator per state folder (:func:`fedaas.folder_lock.lock_folder` on
    :data:`LOCK_FILE`), held until the process ends."""
    try:
        return lock_folder(state, LOCK_FILE)
    except FolderInUse as exc:
        raise StartupError(
            in_use("coordinator", exc.holder, f"the state in {state}", "--state"), "--state"
        ) from None


def server_ssl_context(
    cert: Path, key: Path | None, client_ca: Path | None = None
) -> ssl.SSLContext:
    """TLS 1.2+ server context; with ``client_ca``, clients must present a certificate it signed."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(str(cert), str(key) if key is not None else None)
    except FileNotFoundError as exc:
        raise TlsConfigError(f"TLS certificate or key not found: {exc.filename}") from None
    except (OSError, ssl.SSLError) as exc:
        raise TlsConfigError(
            f"cannot load the TLS certificate {cert} and key {key}: {_reason(exc)}"
        ) from None
    if client_ca is not None:
        try:
            ctx.load_verify_locations(cafile=str(client_ca))
        except FileNotFoundError:
            raise TlsConfigError(f"client CA file not found: {client_ca}") from None
        except (OSError, ssl.SSLError) as exc:
            raise TlsConfigError(f"cannot load the client CA {client_ca}: {_reason(exc)}") from None
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return exc.reason.lower().replace("_", " ")
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__


def is_loopback(host: str) -> bool:
    """Whether ``host`` is a loopback interface (``127.0.0.0/8``, ``::1``, ``localhost``)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


PLAIN_HTTP_WARNING = (
    "WARNING: the coordinator listens on %s over PLAIN HTTP: tokens, models and updates "
    "cross the network unencrypted and anyone on the path can read or replace them. "
    "Serve HTTPS (--tls-cert/--tls-key, and --tls-client-ca for mutual TLS) or bind to "
    "127.0.0.1 behind a TLS-terminating proxy."
)


def serve(
    state: Path,
    host: str = "127.0.0.1",
    port: int = 8080,
    db_url: str | None = None,
    artifacts_url: str | None = None,
    storage_options: dict[str, Any] | None = None,
    tls_cert: Path | None = None,
    tls_key: Path | None = None,
    tls_client_ca: Path | None = None,
    allow_code: list[str] | tuple[str, ...] = (),
) -> None:
    """Run the coordinator until interrupted.

    ``port=0`` binds a free port. Once listening, the URL and PID are written
    to ``<state>/endpoint.json`` so scripts and tests can find the server.
    With ``tls_cert`` (and ``tls_key``) it speaks HTTPS only; ``tls_client_ca``
    adds mutual TLS: every client must present a certificate signed by it.
    One coordinator per state folder (:func:`lock_state`).
    """
    if (tls_key is not None or tls_client_ca is not None) and tls_cert is None:
        raise TlsConfigError("--tls-key and --tls-client-ca need --tls-cert")
    context = server_ssl_context(tls_cert, tls_key, tls_client_ca) if tls_cert else None
    if state.exists() and not state.is_dir():
        raise StartupError(f"{state} is a file; the state must be a folder", "--state")
    try:
        state.mkdir(parents=True, exist_ok=True, mode=0o700)
        lock = lock_state(state)
    except OSError as exc:
        raise StartupError(
            f"cannot keep the coordinator's state in {state}: {exc.strerror or exc}", "--state"
        ) from None
    try:
        db_url = db_url or f"sqlite:///{state / 'fedaas.db'}"
        held = hold_database(db_url)  # StoreInUse: another coordinator runs on it
    except BaseException:
        lock.close()
        raise
    try:
        _serve(
            state,
            host,
            port,
            db_url,
            artifacts_url,
            storage_options,
            context,
            tls_client_ca,
            allow_code,
        )
    finally:
        held.close()
        lock.close()


def _serve(
    state: Path,
    host: str,
    port: int,
    db_url: str,
    artifacts_url: str | None,
    storage_options: dict[str, Any] | None,
    context: ssl.SSLContext | None,
    tls_client_ca: Path | None,
    allow_code: list[str] | tuple[str, ...],
) -> None:
    """:func:`serve` once the state folder is this process's."""
    try:
        token, token_source = load_admin_token(state)
    except OSError as exc:
        raise StartupError(
            f"cannot keep the coordinator's state in {state}: {exc.strerror or exc}", "--state"
        ) from None
    except ValueError as exc:  # an admin token from the environment that is too weak
        raise StartupError(str(exc)) from None
    app = create_app(
        state, db_url, token, artifacts_url, storage_options, tuple(allow_code), stop_when_fenced
    )
    app.state.bind_certificates = tls_client_ca is not None  # a member's cert must name it
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        busy = " (is another coordinator running?)" if exc.errno == errno.EADDRINUSE else ""
        blame = "--host" if exc.errno == errno.EADDRNOTAVAIL else "--port"
        raise StartupError(f"cannot listen on {host}:{port}: {exc.strerror}{busy}", blame) from None
    bound = sock.getsockname()[1]
    scheme = "https" if context is not None else "http"
    url = f"{scheme}://{'[' + host + ']' if family == socket.AF_INET6 else host}:{bound}"
    endpoint = state / ENDPOINT_FILE
    tmp = endpoint.with_suffix(".tmp")
    tmp.write_text(json.dumps({"url": url, "pid": os.getpid()}))
    os.replace(tmp, endpoint)
    log.warning(
        "fedaas coordinator on %s (admin token: %s%s)",
        url,
        token_source,
        ", client certificates required" if tls_client_ca is not None else "",
    )
    if context is None and not is_loopback(host):
        log.warning(PLAIN_HTTP_WARNING, url)
    config = uvicorn.Config(
        app,
        log_level="warning",
        access_log=False,
        loop="uvloop",
        # header deadline and connection cap (server/connections.py); bodies: server/limits.py
        http=guarded(CertificateProtocol) if tls_client_ca is not None else guarded(),
        limit_concurrency=MAX_CONNECTIONS,
        timeout_keep_alive=20,
        proxy_headers=False,
        server_header=False,
        timeout_graceful_shutdown=2,
        ssl_context_factory=(lambda _config, _default: context) if context is not None else None,
    )
    coordinator = app.state.coordinator

    class _Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            coordinator.request_close()  # long-polls return at once instead of holding shutdown
            super().handle_exit(sig, frame)

    try:
        _Server(config).run(sockets=[sock])
    finally:
        endpoint.unlink(missing_ok=True)
