"""From a URL to an fsspec filesystem and in-filesystem path (:func:`resolve`).

This is where a cloud backend is first imported, so it is also where the
backend's process settings are made, right before: gcsfs hangs 60 s per
operation against a GCS emulator unless ``GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT``
is ``false`` in the environment when it is imported (a value already set by
the user is kept). Every cloud filesystem is made with the limits of
:mod:`~fedaas.storage.timeouts` below its options, so a store that stops
answering fails a call in bounded time.
"""

from __future__ import annotations

import os
from typing import Any

import fsspec
from fsspec.spec import AbstractFileSystem

from fedaas.storage.errors import explain
from fedaas.storage.options import storage_options_for
from fedaas.storage.timeouts import with_timeouts
from fedaas.storage.urls import protocol_of

GCSFS_HNS_ENV = "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT"


def prepare_backend(protocol: str) -> None:
    """Set what ``protocol``'s backend reads from the environment when it is imported."""
    if protocol == "gs":
        os.environ.setdefault(GCSFS_HNS_ENV, "false")


def resolve(
    url: str, storage_options: dict[str, Any] | None = None
) -> tuple[AbstractFileSystem, str]:
    """The fsspec filesystem and in-filesystem path for ``url`` (raises StorageError)."""
    protocol = protocol_of(url)
    opts = with_timeouts(protocol, storage_options_for(url, storage_options))
    prepare_backend(protocol)
    try:
        fs, path = fsspec.core.url_to_fs(str(url), **opts)
    except Exception as exc:
        raise explain(exc, url) from None
    return fs, path
