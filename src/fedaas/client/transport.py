"""HTTP transport to the coordinator: bearer auth, JSON errors, retries with backoff.

A URL that is not ``http://`` or ``https://`` with a host is refused when the
transport is made (``localhost:8080`` is a typo, not an outage to wait out).

Connection failures and 5xx answers are retried with capped exponential
backoff and jitter (so a restarting coordinator is not stampeded); a 4xx
answer is final and raised as :class:`ApiClientError` carrying the server's
``{"error", "detail"}``.

TLS: :class:`TlsOptions` names the CA that signed the coordinator's
certificate (``--ca-cert`` / ``$FEDAAS_CA_CERT``; default: the system's
trust store) and, for mutual TLS, this side's certificate and key. A TLS
failure that retrying cannot fix (the coordinator's certificate does not
verify, or it refuses ours) is raised at once as one clear line.
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
import socket
import ssl
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

log = logging.getLogger("fedaas.transport")


class ApiClientError(Exception):
    """The coordinator refused a request (4xx) or could not be reached in time."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(f"{detail} ({status} {code})" if status else detail)
        self.status = status
        self.code = code
        self.detail = detail


CA_CERT_ENV = "FEDAAS_CA_CERT"
CLIENT_CERT_ENV = "FEDAAS_CLIENT_CERT"
CLIENT_KEY_ENV = "FEDAAS_CLIENT_KEY"


@dataclass(frozen=True)
class TlsOptions:
    """How to check the coordinator's certificate and, for mutual TLS, present ours.

    ``ca_cert``: PEM file of the CA(s) to trust instead of the system store.
    ``client_cert`` / ``client_key``: PEM certificate (chain) and private key
    sent to a coordinator that requires client certificates (the key may also
    be inside ``client_cert``).
    """

    ca_cert: Path | None = None
    client_cert: Path | None = None
    client_key: Path | None = None

    @classmethod
    def from_env(cls) -> TlsOptions:
        """From ``$FEDAAS_CA_CERT``, ``$FEDAAS_CLIENT_CERT`` and ``$FEDAAS_CLIENT_KEY``."""

        def path(name: str) -> Path | None:
            value = os.environ.get(name)
            return Path(value) if value else None

        return cls(path(CA_CERT_ENV), path(CLIENT_CERT_ENV), path(CLIENT_KEY_ENV))

    def context(self) -> ssl.SSLContext:
        """A client-side context: certificate and host name checks on, TLS 1.2 or later."""
        if self.client_key is not None and self.client_cert is None:
            raise ApiClientError(0, "tls", "a client key needs its certificate (--client-cert)")
        try:
            if self.ca_cert is not None:
                ctx = ssl.create_default_context(cafile=str(self.ca_cert))
            else:
                ctx = ssl.create_default_context()
            ctx.minimum_version = ssl.TLSVersion.TLSv1_2
            if self.client_cert is not None:
                ctx.load_cert_chain(
                    str(self.client_cert), str(self.client_key) if self.client_key else None
                )
        except (OSError, ssl.SSLError, ValueError) as exc:
            raise ApiClientError(0, "tls", f"cannot load the TLS files: {_reason(exc)}") from None
        return ctx


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return f"{exc.reason} ({exc.library or 'ssl'})"
    if isinstance(exc, OSError) and exc.filename:
        return f"{exc.strerror}: {exc.filename}"
    return str(exc) or type(exc).__name__


# X509_V_ERR_*: self-signed leaf / in chain, unknown issuer, cannot verify the leaf
_UNTRUSTED = (18, 19, 20, 21)


def tls_problem(exc: BaseException, server: str) -> str | None:
    """A one-line explanation when ``exc`` is a TLS failure that retrying cannot fix."""
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, ssl.SSLCertVerificationError):
            why = cause.verify_message or cause.reason or str(cause)
            hint = ""
            if cause.verify_code in _UNTRUSTED:
                hint = f"; pass the CA that signed it with --ca-cert or ${CA_CERT_ENV}"
            return f"the coordinator's TLS certificate at {server} does not verify ({why}){hint}"
        if isinstance(cause, ssl.SSLError):
            reason = (cause.reason or "").upper()
            if reason in ("TLSV13_ALERT_CERTIFICATE_REQUIRED", "SSLV3_ALERT_CERTIFICATE_REQUIRED"):
                return (
                    f"the coordinator at {server} requires a client certificate; "
                    f"pass --client-cert and --client-key (or ${CLIENT_CERT_ENV}, ${CLIENT_KEY_ENV})"
                )
            if reason in (
                "SSLV3_ALERT_BAD_CERTIFICATE",
                "TLSV1_ALERT_UNKNOWN_CA",
                "SSLV3_ALERT_CERTIFICATE_UNKNOWN",
                "SSLV3_ALERT_CERTIFICATE_EXPIRED",
                "TLSV1_ALERT_DECRYPT_ERROR",
            ):
                return f"the coordinator at {server} refused this client's TLS certificate ({reason.lower()})"
            if reason == "WRONG_VERSION_NUMBER":
                return f"the coordinator at {server} does not speak TLS; use http:// or enable TLS on it"
        cause = cause.__cause__ or cause.__context__
    return None


def _closed_without_answer(exc: BaseException) -> bool:
    """The server dropped the connection (no HTTP answer, or a TLS EOF/reset)."""
    if isinstance(exc, httpx.RemoteProtocolError | httpx.ReadError | httpx.WriteError):
        return True
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, ssl.SSLEOFError | ssl.SSLZeroReturnError | ConnectionResetError):
            return True
        cause = cause.__cause__ or cause.__context__
    return False


def backoff_delays(base: float = 0.5, cap: float = 30.0) -> Any:
    """Full-jitter exponential backoff: 0.5 s, 1 s, 2 s ... capped at ``cap``."""
    attempt = 0
    while True:
        yield random.uniform(0.5, 1.0) * min(cap, base * 2**attempt)
        attempt += 1


class Transport:
    """A keep-alive HTTP client bound to one coordinator and one token."""

    def __init__(
        self,
        server: str,
        token: str,
        *,
        give_up_after: float | None = 60.0,
        verify: bool | str | ssl.SSLContext = True,
        tls: TlsOptions | None = None,
    ) -> None:
        self.server = server.rstrip("/")
        try:
            url = httpx.URL(self.server) if "://" in self.server else None
        except httpx.InvalidURL:
            url = None
        if url is None or url.scheme not in ("http", "https") or not url.host:
            raise ApiClientError(
                0,
                "bad_url",
                f"the coordinator URL is http://HOST:PORT or https://HOST:PORT, not {server!r}",
            )
        self.give_up_after = give_up_after
        self.identity = hashlib.sha256(token.encode()).hexdigest()
        """A stable, non-secret name for this member's credential (seeds its training)."""
        if tls is not None and verify is True and self.server.startswith("https://"):
            verify = tls.context()
        self._client_cert = tls is not None and tls.client_cert is not None
        self._verify = verify
        self._http = httpx.Client(
            base_url=self.server,
            headers={"Authorization": f"Bearer {token}", "User-Agent": "fedaas"},
            timeout=httpx.Timeout(30.0, connect=10.0),
            verify=verify,
        )

    def close(self) -> None:
        self._http.close()

    def request(
        self, method: str, path: str, *, timeout: float | None = None, **kwargs: Any
    ) -> httpx.Response:
        """Send a request, retrying while the coordinator is unreachable or failing."""
        started = time.monotonic()
        delays = backoff_delays()
        if timeout is not None:
            kwargs["timeout"] = httpx.Timeout(timeout + 10.0, connect=10.0)
        while True:
            try:
                response = self._http.request(method, path, **kwargs)
            except httpx.TransportError as exc:
                fatal = tls_problem(exc, self.server)
                if fatal is None and _closed_without_answer(exc):
                    fatal = self._tls_refusal()
                if fatal is not None:
                    raise ApiClientError(0, "tls", fatal) from None
                problem = f"cannot reach the coordinator at {self.server} ({type(exc).__name__})"
            else:
                if response.status_code < 400 or response.status_code == 304:
                    return response
                if response.status_code < 500:
                    raise _error(response)
                problem = f"coordinator error {response.status_code}: {_error(response).detail}"
            delay = next(delays)
            if (
                self.give_up_after is not None
                and time.monotonic() - started + delay > self.give_up_after
            ):
                raise ApiClientError(0, "unreachable", problem)
            log.warning("%s; retrying in %.1f s", problem, delay)
            time.sleep(delay)

    def _tls_refusal(self) -> str | None:
        """After an HTTPS connection closed with no answer: does the coordinator refuse our TLS?

        A coordinator that requires client certificates closes the connection
        when it gets none (or one it does not trust) without a word: no TLS
        alert reaches the client. One fresh probe tells that apart from an
        outage (a restarting coordinator refuses the TCP connection or answers):
        TCP connects, then the TLS connection closes before a single byte of
        answer to a well-formed request.
        """
        url = httpx.URL(self.server)
        if url.scheme != "https" or self._verify is False:
            return None
        if isinstance(self._verify, ssl.SSLContext):
            ctx = self._verify
        elif isinstance(self._verify, str):
            ctx = ssl.create_default_context(cafile=self._verify)
        else:
            ctx = ssl.create_default_context()
        host, port = url.host, url.port or 443
        request = f"GET /v1/health HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
        try:
            raw = socket.create_connection((host, port), timeout=5)
        except OSError:
            return None  # not listening: an outage, keep retrying
        try:
            with ctx.wrap_socket(raw, server_hostname=host) as conn:
                conn.sendall(request.encode())
                answered = bool(conn.recv(1))
        except ssl.SSLCertVerificationError:
            return None  # reported by tls_problem on the next try
        except (ssl.SSLError, ConnectionResetError, BrokenPipeError):
            answered = False
        except OSError:  # timeouts and the like: not conclusive
            return None
        finally:
            raw.close()
        if answered:
            return None
        if self._client_cert:
            return (
                f"the coordinator at {self.server} closed the TLS connection without answering: "
                "it refused this client's TLS certificate (--client-cert)"
            )
        return (
            f"the coordinator at {self.server} closed the TLS connection without answering: "
            f"it requires a client certificate; pass --client-cert and --client-key "
            f"(or ${CLIENT_CERT_ENV}, ${CLIENT_KEY_ENV})"
        )

    def get_json(self, path: str, **kwargs: Any) -> Any:
        return self.request("GET", path, **kwargs).json()

    def post_json(self, path: str, body: Any, **kwargs: Any) -> Any:
        return self.request("POST", path, json=body, **kwargs).json()

    def put_update(self, path: str, body: bytes, **kwargs: Any) -> httpx.Response:
        """Upload an update under a fresh idempotency key: the retries :meth:`request` makes
        carry the same key, so the coordinator answers them without counting them again."""
        headers = {"Content-Type": "application/octet-stream", "Idempotency-Key": uuid.uuid4().hex}
        return self.request("PUT", path, content=body, headers=headers, **kwargs)


def _error(response: httpx.Response) -> ApiClientError:
    try:
        body = response.json()
        return ApiClientError(response.status_code, str(body["error"]), str(body["detail"]))
    except (ValueError, KeyError, TypeError):
        return ApiClientError(
            response.status_code, "error", response.text[:200] or response.reason_phrase
        )
