"""Locations of data and artifacts: local paths, ``file://``, ``s3://``, ``gs://``, ``az://``.

One code path serves every kind: :func:`resolve` turns a URL plus storage
options into an fsspec filesystem and path. Options come from two places,
explicit ones winning: each cloud's standard environment variables
(``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` / ``AWS_SESSION_TOKEN`` /
``AWS_ENDPOINT_URL[_S3]``; ``STORAGE_EMULATOR_HOST`` for a GCS emulator;
``AZURE_STORAGE_CONNECTION_STRING``) and ``--storage-option key=value`` flags
(:func:`parse_storage_options`). Libraries also read their own variables
(``AWS_PROFILE``, ``GOOGLE_APPLICATION_CREDENTIALS``, ``AZURE_STORAGE_ACCOUNT_KEY``...).

Failures become :class:`StorageError`: one line naming the (redacted) URL and
what went wrong (no such key, missing bucket, access denied, unreachable).
Credentials never appear in those messages: :func:`redact` scrubs URLs,
option mappings and free text, and :class:`RedactFilter` does the same for logs.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import uuid
from collections.abc import Iterator
from typing import Any, overload
from urllib.parse import quote, urlsplit, urlunsplit

# gcsfs hangs 60 s per call against emulators unless this is set before import.
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")

import fsspec
from fsspec.spec import AbstractFileSystem

log = logging.getLogger(__name__)

LOCAL = frozenset({"file", "local"})
CLOUD_PROTOCOLS = {"s3": "s3", "s3a": "s3", "gs": "gs", "gcs": "gs", "az": "az", "abfs": "az"}
_SECRET_KEY = re.compile(
    r"(secret|token|password|passwd|credential|connection_string|sas|signature|"
    r"account_key|private_key|^key$|^sig$)",
    re.IGNORECASE,
)
_SECRET_TEXT = [
    re.compile(r"(?i)(AccountKey|SharedAccessSignature)=[^;\s'\"]+"),
    re.compile(
        r"(?i)\b(access_token|refresh_token|client_secret|sig|signature|x-amz-signature|"
        r"x-amz-credential|x-amz-security-token|aws_secret_access_key|aws_session_token|"
        r"password)=[^&;\s'\"]+"
    ),
    re.compile(r"(?i)(Authorization:?\s*['\"]?\s*)(Bearer|AWS4-HMAC-SHA256|SharedKey)\s[^'\"\n]+"),
]
_SECRETS: set[str] = set()  # every credential value seen, scrubbed from messages and logs
MASK = "***"


class StorageError(OSError):
    """A location that cannot be read or written; the message is one redacted line."""

    def __init__(self, message: str, kind: str = "error") -> None:
        super().__init__(message)
        self.kind = kind
        """``not_found``, ``no_bucket``, ``denied``, ``unreachable``, ``options`` or ``error``."""

    def __str__(self) -> str:
        return str(self.args[0])


# --------------------------------------------------------------------- options


def _parse_value(text: str) -> Any:
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def parse_storage_options(items: list[str] | tuple[str, ...] | None) -> dict[str, Any]:
    """Turn ``["key=value", ...]`` (``--storage-option`` flags) into fsspec options.

    Values ``true``/``false``/``none`` and numbers are converted; everything
    else stays a string (split at the first ``=``, so base64 keys keep their
    padding). A dotted key (``client_kwargs.region_name=eu-west-1``) makes a
    nested mapping. Raises ``ValueError`` listing every malformed item,
    without echoing values.
    """
    options: dict[str, Any] = {}
    problems: list[str] = []
    for number, item in enumerate(items or (), start=1):
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            shown = key if sep else "(value hidden)"
            problems.append(f"storage option #{number} ({shown}) is not key=value")
            continue
        parts = key.split(".")
        if any(not p.isidentifier() for p in parts):
            problems.append(f"storage option #{number}: {key!r} is not a valid option name")
            continue
        target = options
        for part in parts[:-1]:
            child = target.setdefault(part, {})
            if not isinstance(child, dict):
                problems.append(f"storage option {key!r} conflicts with {part!r}")
                break
            target = child
        else:
            if parts[-1] in target:
                problems.append(f"storage option {key!r} is given twice")
            target[parts[-1]] = _parse_value(value)
    if problems:
        raise ValueError("; ".join(problems))
    return options


def protocol_of(url: str) -> str:
    """The fsspec protocol of ``url`` (``file`` for plain paths), canonical for clouds."""
    proto = fsspec.utils.get_protocol(str(url))
    return CLOUD_PROTOCOLS.get(proto, proto)


def _is_loopback(endpoint: str) -> bool:
    host = urlsplit(endpoint if "://" in endpoint else f"http://{endpoint}").hostname or ""
    return host in ("127.0.0.1", "localhost", "::1") or host.startswith("127.")


def env_storage_options(protocol: str, environ: dict[str, str] | None = None) -> dict[str, Any]:
    """Options for ``protocol`` taken from the cloud's standard environment variables."""
    env = os.environ if environ is None else environ
    opts: dict[str, Any] = {}
    if protocol == "s3":
        endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL")
        if endpoint:
            opts["endpoint_url"] = endpoint
        if env.get("AWS_ACCESS_KEY_ID") and env.get("AWS_SECRET_ACCESS_KEY"):
            opts["key"] = env["AWS_ACCESS_KEY_ID"]
            opts["secret"] = env["AWS_SECRET_ACCESS_KEY"]
            if env.get("AWS_SESSION_TOKEN"):
                opts["token"] = env["AWS_SESSION_TOKEN"]
    elif protocol == "gs":
        host = env.get("STORAGE_EMULATOR_HOST", "")
        if host and host != "default":
            opts["endpoint_url"] = host if "://" in host else f"http://{host}"
    elif protocol == "az":
        if env.get("AZURE_STORAGE_CONNECTION_STRING"):
            opts["connection_string"] = env["AZURE_STORAGE_CONNECTION_STRING"]
    return opts


def storage_options_for(
    url: str, storage_options: dict[str, Any] | None = None, environ: dict[str, str] | None = None
) -> dict[str, Any]:
    """Environment-derived options for ``url`` overlaid with explicit ones.

    Local paths get no options. For ``gs://`` against a loopback endpoint
    (an emulator) ``token="anon"`` is added unless a token is given, so that
    gcsfs never probes a cloud metadata server.
    """
    protocol = protocol_of(url)
    if protocol in LOCAL:
        return {}
    opts = {**env_storage_options(protocol, environ), **(storage_options or {})}
    if protocol == "gs" and "token" not in opts and _is_loopback(str(opts.get("endpoint_url", ""))):
        opts["token"] = "anon"
    _remember_secrets(opts)
    return opts


# ------------------------------------------------------------------- redaction


def _remember_secrets(value: Any, key: str = "") -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            _remember_secrets(v, str(k))
    elif isinstance(value, str) and _SECRET_KEY.search(key) and value not in ("", "anon"):
        found = (
            [m.group(0).split("=", 1)[1] for m in _SECRET_TEXT[0].finditer(value)]
            if key.lower() == "connection_string"
            else [value]
        )
        _SECRETS.update(v for v in found if len(v) >= 6)  # shorter ones would mask words


def redact_text(text: str) -> str:
    """``text`` with known credential values and credential-looking fields masked."""
    for secret in sorted(_SECRETS, key=len, reverse=True):
        text = text.replace(secret, MASK).replace(quote(secret, safe=""), MASK)
    text = _SECRET_TEXT[0].sub(lambda m: f"{m.group(1)}={MASK}", text)
    text = _SECRET_TEXT[1].sub(lambda m: f"{m.group(1)}={MASK}", text)
    return _SECRET_TEXT[2].sub(lambda m: f"{m.group(1)}{m.group(2)} {MASK}", text)


def _redact_url(url: str) -> str:
    try:
        parts = urlsplit(url)
    except ValueError:
        return redact_text(url)
    netloc = parts.netloc
    if "@" in netloc:
        netloc = f"{MASK}@" + netloc.rsplit("@", 1)[1]
    query = parts.query
    if query:
        query = "&".join(
            f"{k}={MASK}" if _SECRET_KEY.search(k) or k.lower().startswith("x-amz-") else f"{k}={v}"
            for k, _, v in (pair.partition("=") for pair in query.split("&"))
        )
    return redact_text(urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment)))


@overload
def redact(value: str) -> str: ...
@overload
def redact(value: dict[str, Any]) -> dict[str, Any]: ...
def redact(value: Any) -> Any:
    """A copy of a URL, option mapping or message that is safe to show or log.

    In mappings every credential-like key (``key``, ``secret``, ``token``,
    ``password``, ``connection_string``, ``sas_token``...) is masked, except
    ``token="anon"``; in URLs user info and signature query parameters are.
    """
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            if isinstance(v, dict):
                out[k] = redact(v)
            elif isinstance(v, str) and _SECRET_KEY.search(str(k)) and v != "anon":
                out[k] = redact_text(v) if str(k).lower() == "connection_string" else MASK
            else:
                out[k] = v
        return out
    if isinstance(value, str):
        return _redact_url(value) if "://" in value else redact_text(value)
    return value


def _scrub_record(record: logging.LogRecord) -> None:
    try:
        message = record.getMessage()
    except Exception:  # a malformed record: leave it to logging itself
        return
    clean = redact_text(message)
    if clean != message:
        record.msg, record.args = clean, None
    if record.exc_info and record.exc_info[1] is not None and not record.exc_text:
        text = logging.Formatter().formatException(record.exc_info)
        record.exc_text = redact_text(text)


class RedactFilter(logging.Filter):
    """A logging filter (for handlers or loggers) that scrubs credentials from records."""

    def filter(self, record: logging.LogRecord) -> bool:
        _scrub_record(record)
        return True


def install_log_redaction() -> None:
    """Scrub credentials from every log record created from now on, whatever its logger.

    Wraps the process's log record factory (idempotent), so records of
    gcsfs, s3fs, botocore, azure and our own code are all covered, tracebacks
    included, before any handler sees them.
    """
    previous = logging.getLogRecordFactory()
    if getattr(previous, "fedaas_redacting", False):
        return

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        _scrub_record(record)
        return record

    factory.fedaas_redacting = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(factory)


install_log_redaction()


# ---------------------------------------------------------------- error mapping


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


def _bucket_of(path: str) -> str:
    return path.strip("/").split("/", 1)[0]


def _bucket_missing(fs: AbstractFileSystem | None, path: str) -> bool:
    if fs is None:
        return False
    try:
        return not fs.exists(_bucket_of(path))
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
                f"{shown}: bucket or container {_bucket_of(path)!r} does not exist", "no_bucket"
            )
        return StorageError(f"{shown}: no such file or key", "not_found")
    if isinstance(exc, IsADirectoryError):
        return StorageError(f"{shown}: is a folder, not a file", "not_found")
    denied = (
        isinstance(exc, PermissionError)
        or name
        in (
            "ClientAuthenticationError",
            "NoCredentialsError",
            "DefaultCredentialsError",
            "RefreshError",
        )
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
    if name in _UNREACHABLE or isinstance(exc, ConnectionError):
        return StorageError(
            f"{shown}: cannot reach the storage service ({redact_text(text)})", "unreachable"
        )
    if isinstance(exc, TypeError | ValueError) and fs is None:
        return StorageError(f"{shown}: invalid storage options ({redact_text(text)})", "options")
    return StorageError(f"{shown}: cannot access ({name}: {redact_text(text)})")


# --------------------------------------------------------------------- access


def resolve(
    url: str, storage_options: dict[str, Any] | None = None
) -> tuple[AbstractFileSystem, str]:
    """The fsspec filesystem and in-filesystem path for ``url`` (raises StorageError)."""
    opts = storage_options_for(url, storage_options)
    try:
        fs, path = fsspec.core.url_to_fs(str(url), **opts)
    except Exception as exc:
        raise explain(exc, url) from None
    return fs, path


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


def read_bytes(url: str, storage_options: dict[str, Any] | None = None) -> bytes:
    """The whole content at ``url``."""
    fs, path = resolve(url, storage_options)
    with errors_as_storage_error(url, fs, path):
        return fs.cat_file(path)


def write_bytes(url: str, data: bytes, storage_options: dict[str, Any] | None = None) -> None:
    """Store ``data`` at ``url``, replacing it atomically.

    Local files are written to a temporary sibling and renamed; an object-store
    PUT is atomic by itself. Parent folders are created as needed.
    """
    fs, path = resolve(url, storage_options)
    with errors_as_storage_error(url, fs, path):
        if protocol_of(url) in LOCAL:
            fs.makedirs(fs._parent(path), exist_ok=True)
            tmp = f"{path}.tmp-{uuid.uuid4().hex}"
            try:
                fs.pipe_file(tmp, data)
                os.replace(tmp, path)
            finally:
                if fs.exists(tmp):
                    fs.rm_file(tmp)
        else:
            fs.pipe_file(path, data)


def exists(url: str, storage_options: dict[str, Any] | None = None) -> bool:
    """Whether a file or folder exists at ``url``."""
    fs, path = resolve(url, storage_options)
    with errors_as_storage_error(url, fs, path):
        return bool(fs.exists(path))


def remove(
    url: str, storage_options: dict[str, Any] | None = None, recursive: bool = False
) -> None:
    """Delete the file (or with ``recursive``, the folder) at ``url``; missing is fine."""
    fs, path = resolve(url, storage_options)
    with errors_as_storage_error(url, fs, path):
        if fs.exists(path):
            fs.rm(path, recursive=recursive)


def join(base: str, *parts: str) -> str:
    """``base`` with ``parts`` appended as path segments (works for URLs and paths)."""
    out = str(base).rstrip("/")
    for part in parts:
        out += "/" + str(part).strip("/")
    return out


def make_bucket(url: str, storage_options: dict[str, Any] | None = None) -> None:
    """Create the bucket / container that ``url`` names (its first path segment)."""
    fs, path = resolve(url, storage_options)
    bucket = _bucket_of(path)
    with errors_as_storage_error(url, fs, bucket):
        if not fs.exists(bucket):
            fs.mkdir(bucket)
