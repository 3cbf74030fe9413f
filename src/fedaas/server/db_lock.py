"""One coordinator per database: the state folder's lock cannot see two coordinators with
their own folders on one ``--db`` (a rolling deploy that starts the new coordinator before
the old one stops, a copy-pasted command line). Both would run the same jobs.

PostgreSQL: a session advisory lock (``pg_try_advisory_lock``) on a connection held for the
coordinator's life; the server releases it when that connection ends, a killed coordinator's
included. SQLite: an ``flock`` on a file beside the database (:mod:`fedaas.folder_lock`).
A database that restarts drops the advisory lock while the coordinator rides out the outage;
it is not taken again (what is still weak: see docs/architecture.md).
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from fedaas.folder_lock import FolderInUse, lock_folder
from fedaas.server.db import BACKENDS, StoreError, redacted
from fedaas.storage import one_line

LOCK_KEY = 0x66656461617321  # "fedaas!": the advisory lock's key, per database
HOLDER = text(
    "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
    "WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 "
    f"AND l.classid::bigint = {LOCK_KEY >> 32} AND l.objid::bigint = {LOCK_KEY & 0xFFFFFFFF} "
    "AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())"
)
"""The session holding the lock, by the name its coordinator gave its connection."""
HOLD_WAIT_S = 10.0
"""How long a starting coordinator waits for a lock to be released: the connections of one
that was just killed close with it, and PostgreSQL ends their sessions moments later."""


class StoreInUse(StoreError):
    """Another coordinator holds the database."""


class _Held:
    def __init__(self, closer: Callable[[], None] | None = None) -> None:
        self._closer = closer

    def close(self) -> None:
        if self._closer is not None:
            self._closer()
            self._closer = None


def hold_database(url: str) -> _Held:
    """Take the database for this coordinator (``close()`` the result to let it go), or raise
    :class:`StoreInUse` (:class:`StoreError` when the database cannot be reached)."""
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        return _Held()  # the Store says what is wrong with it
    backend = parsed.get_backend_name()
    if backend not in BACKENDS:
        return _Held()
    if backend == "sqlite":
        if not parsed.database or parsed.database == ":memory:":
            return _Held()
        path = Path(parsed.database)
        try:
            handle = lock_folder(path.parent, path.name + ".lock")
        except FolderInUse as exc:
            raise StoreInUse(_in_use(url, exc.holder)) from None
        except OSError as exc:
            raise StoreError(f"cannot open the database {redacted(url)}: {one_line(exc)}") from None
        return _Held(handle.close)
    me = f"fedaas coordinator pid {os.getpid()} on {socket.gethostname()}"[:63]
    engine = create_engine(
        url, pool_size=1, connect_args={"connect_timeout": 5, "application_name": me}
    )
    try:
        connection = engine.connect()
        deadline = time.monotonic() + HOLD_WAIT_S
        while True:
            got = connection.execute(text("SELECT pg_try_advisory_lock(:key)"), {"key": LOCK_KEY})
            taken = bool(got.scalar())
            connection.commit()  # the lock is the session's: no transaction is left open
            if taken:
                break
            if time.monotonic() >= deadline:
                holder = connection.execute(HOLDER).scalar()
                connection.close()
                engine.dispose()
                raise StoreInUse(_in_use(url, holder))
            time.sleep(0.2)
    except SQLAlchemyError as exc:
        engine.dispose()
        cause = getattr(exc, "orig", None) or exc
        raise StoreError(f"cannot open the database {redacted(url)}: {one_line(cause)}") from None

    def release() -> None:
        connection.close()
        engine.dispose()

    return _Held(release)


def _in_use(url: str, holder: str | None) -> str:
    """``holder``: a pid (SQLite) or the holding connection's name (PostgreSQL)."""
    if holder and holder.isdigit():
        who = f"another coordinator (pid {holder})"
    else:
        who = f"another coordinator ({holder})" if holder else "another coordinator"
    return (
        f"{who} is using the database {redacted(url)}: stop it first, or give this one its own --db"
    )
