"""Whole-object access by URL: read, write (atomically), test, remove, make a bucket."""

from __future__ import annotations

import os
import uuid
from typing import Any

from fedaas.storage.errors import errors_as_storage_error
from fedaas.storage.filesystems import resolve
from fedaas.storage.urls import bucket_of, is_local


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
        if is_local(url):
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


def make_bucket(url: str, storage_options: dict[str, Any] | None = None) -> None:
    """Create the bucket / container that ``url`` names (its first path segment)."""
    fs, path = resolve(url, storage_options)
    bucket = bucket_of(path)
    with errors_as_storage_error(url, fs, bucket):
        if not fs.exists(bucket):
            fs.mkdir(bucket)
