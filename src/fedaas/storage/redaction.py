"""Keeping credentials out of messages and logs.

The process remembers every credential value it is handed
(:func:`remember_secrets`, called for all storage options) and masks those
values, and anything that merely looks like a credential (``AccountKey=``,
``sig=``, ``Authorization: Bearer ...``), wherever text is shown:
:func:`redact` for URLs, option mappings and messages, :class:`RedactFilter`
for one logging handler, :func:`install_log_redaction` for every log record
of the process. Nothing is installed on import: the process's logging set-up
calls :func:`install_log_redaction` (``fedaas.cli.common.setup_logging``).
"""

from __future__ import annotations

import logging
import re
from typing import Any, overload
from urllib.parse import quote, urlsplit

MASK = "***"
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


def remember_secrets(value: Any, key: str = "") -> None:
    """Remember the credential values in ``value`` (an option mapping, nested or not).

    A string counts as a credential when its key looks like one (``secret``,
    ``token``, ``key``, ``connection_string``...); from a connection string
    only the key and signature fields are taken. Values under 6 characters
    are not remembered: masking them would mask ordinary words.
    """
    if isinstance(value, dict):
        for k, v in value.items():
            remember_secrets(v, str(k))
    elif isinstance(value, str) and _SECRET_KEY.search(key) and value not in ("", "anon"):
        found = (
            [m.group(0).split("=", 1)[1] for m in _SECRET_TEXT[0].finditer(value)]
            if key.lower() == "connection_string"
            else [value]
        )
        _SECRETS.update(v for v in found if len(v) >= 6)


def redact_text(text: str) -> str:
    """``text`` with known credential values and credential-looking fields masked."""
    for secret in sorted(_SECRETS, key=len, reverse=True):
        text = text.replace(secret, MASK).replace(quote(secret, safe=""), MASK)
    text = _SECRET_TEXT[0].sub(lambda m: f"{m.group(1)}={MASK}", text)
    text = _SECRET_TEXT[1].sub(lambda m: f"{m.group(1)}={MASK}", text)
    return _SECRET_TEXT[2].sub(lambda m: f"{m.group(1)}{m.group(2)} {MASK}", text)


def redact_url(url: str, keep_user: bool = False) -> str:
    """``url`` with its user info and signature-like query parameters masked.

    ``keep_user`` masks only the password of ``user:password@`` (the user name
    of a database URL is worth showing); otherwise all user info is masked,
    since a storage URL's user part may itself be an access key.
    """
    try:
        parts = urlsplit(url)
    except ValueError:
        return redact_text(url)
    out = url  # edited in place, so that the rest of the URL stays exactly as written
    if "@" in parts.netloc:
        userinfo, host = parts.netloc.rsplit("@", 1)
        user, colon, _ = userinfo.partition(":")
        if not keep_user:
            out = out.replace(parts.netloc, f"{MASK}@{host}", 1)
        elif colon:
            out = out.replace(parts.netloc, f"{user}:{MASK}@{host}", 1)
    if parts.query:
        query = "&".join(
            f"{k}={MASK}" if _SECRET_KEY.search(k) or k.lower().startswith("x-amz-") else f"{k}={v}"
            for k, _, v in (pair.partition("=") for pair in parts.query.split("&"))
        )
        out = out.replace(f"?{parts.query}", f"?{query}", 1)
    return redact_text(out)


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
        return redact_url(value) if "://" in value else redact_text(value)
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
    included, before any handler sees them. Called by the process's logging
    set-up, never on import.
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
