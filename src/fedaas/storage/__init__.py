"""Where data and artifacts live: local paths, ``file://``, ``s3://``, ``gs://``, ``az://``.

The bottom layer for storage (beside ``spec``, ``tensors`` and ``protocol``;
it imports nothing else of ours). One concept per module:

- :mod:`~fedaas.storage.urls`: protocols and joining URLs (pure strings).
- :mod:`~fedaas.storage.options`: fsspec storage options from ``--storage-option``
  flags and each cloud's standard environment variables.
- :mod:`~fedaas.storage.redaction`: the secrets seen so far and how they are
  masked in URLs, options, messages and (once :func:`install_log_redaction`
  is called by the process's logging setup) every log record.
- :mod:`~fedaas.storage.errors`: :class:`StorageError`, one redacted line per failure.
- :mod:`~fedaas.storage.filesystems`: :func:`resolve`, a URL to an fsspec filesystem.
- :mod:`~fedaas.storage.timeouts`: the limits on a store that stops answering.
- :mod:`~fedaas.storage.io`: whole-object reads and writes, existence, removal, buckets.

Importing this package has no side effects: no environment variable is set
and no logging hook is installed until a function asks for it.
"""

from fedaas.storage.errors import StorageError, errors_as_storage_error, explain, one_line
from fedaas.storage.filesystems import resolve
from fedaas.storage.io import exists, make_bucket, read_bytes, remove, write_bytes
from fedaas.storage.options import env_storage_options, parse_storage_options, storage_options_for
from fedaas.storage.redaction import (
    MASK,
    RedactFilter,
    install_log_redaction,
    redact,
    redact_text,
    redact_url,
    remember_secrets,
)
from fedaas.storage.urls import CLOUD_PROTOCOLS, LOCAL, bucket_of, is_local, join, protocol_of

__all__ = [
    "CLOUD_PROTOCOLS",
    "LOCAL",
    "MASK",
    "RedactFilter",
    "StorageError",
    "bucket_of",
    "env_storage_options",
    "errors_as_storage_error",
    "exists",
    "explain",
    "install_log_redaction",
    "is_local",
    "join",
    "make_bucket",
    "one_line",
    "parse_storage_options",
    "protocol_of",
    "read_bytes",
    "redact",
    "redact_text",
    "redact_url",
    "remember_secrets",
    "remove",
    "resolve",
    "storage_options_for",
    "write_bytes",
]
