"""Storage failures as one redacted line: :class:`StorageError` and how it is made.

Whatever a backend raises (botocore, gcsfs, azure, the OS) becomes a
:class:`StorageError` naming the (redacted) URL and what went wrong: no such
key, missing bucket, access denied (with where credentials come from),
unreachable service, a service that stopped answering, invalid options.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator

from fsspec.spec import AbstractFileSystem

from fedaas.storage.redaction import redact, redact_text
from fedaas.storage.urls import bucket_of, protocol_of

TRANSIENT_KINDS = ("unreachable", "error", "timeout")
"""The kinds of :class:`StorageError` that an outage gives."""


class StorageError(OSError):
    """A location that cannot be read or written; the message is one redacted line."""

    def __init__(self, message: str, kind: str = "error") -> None:
        super().__init__(message)
        self.kind = kind
        """``not_found``, ``no_bucket``, ``denied``, ``unreachable``, ``options``, ``timeout``
        or ``error``."""

    @property
    def transient(self) -> bool:
        """Whether it looks like an outage worth waiting out (the service down or failing),
        not a wrong location, credentials or options."""
        return self.kind in TRANSIENT_KINDS

    def __str__(self) -> str:
        return str(self.args[0])


def one_line(exc: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message, redacted and shortened."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    text = redact_text(text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


_CRED_HINT = {
    "s3": "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or --storage-option key=... secret=...",
    "gs": "GOOGLE_APPLICATION_CREDENTIALS or --storage-option token=...",
    "az": "AZURE_STORAGE_CONNECTION_STRING or --storage-option connection_string=...",
}
_UNREACHABLE = (
    "EndpointConnectionError",
    "ServiceRequestError",
    "ClientConnectorError",
    "ConnectionError",  # requests'
    "ConnectTimeoutError",
)
_TIMED_OUT = (
    "ReadTimeoutError",  # botocore's
    "ServiceResponseTimeoutError",  # Azure's
    "ServerTimeoutError",  # aiohttp's (gcsfs, adlfs)
    "SocketTimeoutError",
)
_DENIED = (
    "ClientAuthenticationError",
    "NoCredentialsError",
    "DefaultCredentialsError",
    "RefreshError",
)


def _bucket_missing(fs: AbstractFileSystem | None, path: str) -> bool:
    if fs is None:
        return False
    try:
        return not fs.exists(bucket_of(path))
    except Exception:
        return False


def explain(
    exc: BaseException, url: str, fs: AbstractFileSystem | None = None, path: str = ""
) -> StorageError:
    """A one-line, redacted :class:`StorageError` for ``exc`` raised while using ``url``."""
    shown = redact(url)
    protocol = protocol_of(url)
    remote = protocol in ("s3", "gs", "az")
    name = type(exc).__name__
    status = getattr(exc, "status_code", None) or getattr(exc, "code", None)
    text = one_line(exc)
    if isinstance(exc, StorageError):
        return exc
    if isinstance(exc, ImportError):
        return StorageError(
            f"{shown}: no storage backend for {protocol}:// ({one_line(exc)})", "options"
        )
    if isinstance(exc, FileNotFoundError) or name == "ResourceNotFoundError":
        if remote and (
            _bucket_missing(fs, path)
            or re.search(r"(?i)(bucket|container).*(not exist|not found)", text)
        ):
            return StorageError(
                f"{shown}: bucket or container {bucket_of(path)!r} does not exist", "no_bucket"
            )
        return StorageError(f"{shown}: no such file or key", "not_found")
    if isinstance(exc, IsADirectoryError):
        return StorageError(f"{shown}: is a folder, not a file", "not_found")
    denied = (
        isinstance(exc, PermissionError)
        or name in _DENIED
        or status in (401, 403)
        or (name == "KeyError" and protocol == "gs")  # gcsfs: malformed credentials file
    )
    if denied:
        hint = _CRED_HINT.get(protocol, "the storage options")
        return StorageError(
            f"{shown}: access denied - the credentials are missing, wrong or lack permission "
            f"(check {hint})",
            "denied",
        )
    if name in _TIMED_OUT or isinstance(exc, TimeoutError):  # FSTimeoutError, socket.timeout
        return StorageError(
            f"{shown}: the storage service stopped answering ({name}: {redact_text(text)})",
            "timeout",
        )
    if name in _UNREACHABLE or isinstance(exc, ConnectionError):
        return StorageError(
            f"{shown}: cannot reach the storage service ({redact_text(text)})", "unreachable"
        )
    if isinstance(exc, TypeError | ValueError) and fs is None:
        return StorageError(f"{shown}: invalid storage options ({redact_text(text)})", "options")
    return StorageError(f"{shown}: cannot access ({name}: {redact_text(text)})")


@contextlib.contextmanager
def errors_as_storage_error(
    url: str, fs: AbstractFileSystem | None = None, path: str = ""
) -> Iterator[None]:
    """Translate any exception inside the block into a one-line :class:`StorageError`."""
    try:
        yield
    except StorageError:
        raise
    except Exception as exc:
        raise explain(exc, url, fs, path) from None
