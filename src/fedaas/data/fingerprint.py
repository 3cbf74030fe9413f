"""A fingerprint of the data behind a member's ``--data`` URL, to pin it to a job.

A member that joined a job with one dataset and comes back (restarted) with
another would count a second partition under the same identity; the member
agent compares this fingerprint with the one it joined with and declines
instead. The fingerprint covers every file under the URL: its path relative
to the URL, its size, and a SHA-256 of its first :data:`HASHED_BYTES` bytes
(the whole file for anything but very large tables), so editing, replacing,
adding or removing a file changes it. It never leaves the member.
"""

from __future__ import annotations

import hashlib
from typing import Any

from fedaas import storage

HASHED_BYTES = 64 * 1024 * 1024
_CHUNK = 1024 * 1024


def data_fingerprint(url: str, storage_options: dict[str, Any] | None = None) -> str:
    """SHA-256 (hex) over the files under ``url``: names, sizes and leading content."""
    fs, root = storage.resolve(url, storage_options)
    with storage.errors_as_storage_error(url, fs, root):
        files = sorted(fs.find(root)) if fs.isdir(root) else [root]
        digest = hashlib.sha256()
        for path in files:
            size = int(fs.size(path) or 0)
            name = path[len(root) :].lstrip("/") if path != root else ""
            digest.update(f"{name}\0{size}\0".encode())
            left = min(size, HASHED_BYTES)
            with fs.open(path, "rb") as f:
                while left > 0:
                    chunk = f.read(min(_CHUNK, left))
                    if not chunk:
                        break
                    digest.update(chunk)
                    left -= len(chunk)
    return digest.hexdigest()
