"""One process per state folder: an exclusive ``flock`` that the OS releases however the
process ends (``kill -9`` included), so a crashed coordinator or member restarts at once.

Two coordinators on one state folder would both run its jobs (rounds twice, one privacy
ledger counted by both); two member agents on one would both spend, and write, the same
record-level budget and noise state.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import IO


class FolderInUse(RuntimeError):
    """Another process holds the folder's lock; ``holder`` is its pid as it wrote it."""

    def __init__(self, folder: Path, holder: str) -> None:
        super().__init__(f"process {holder} is using {folder}")
        self.folder = folder
        self.holder = holder


def in_use(who: str, holder: str | None, what: str, option: str) -> str:
    """The refusal a second process prints: ``who`` holds ``what`` (``holder``: a pid, or a
    name where the lock holds no pid), and the option that gives this one its own."""
    tag = f" (pid {holder})" if holder and holder.isdigit() else f" ({holder})" if holder else ""
    return f"another {who}{tag} is using {what}: stop it first, or give this one its own {option}"


def lock_folder(folder: Path, name: str) -> IO[str]:
    """Take the lock file ``folder/name`` for this process's life (keep the handle), or raise
    :class:`FolderInUse`. The file names the holding process's pid."""
    handle = open(folder / name, "a+")  # held open for the life of the process
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "?"
        handle.close()
        raise FolderInUse(folder, holder) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle
