"""One coordinator per database: the state folder's lock cannot see two coordinators with
their own folders on one ``--db`` (a rolling deploy that starts the new coordinator before
the old one stops, a copy-pasted command line). Both would run the same jobs.

PostgreSQL: a session advisory lock (``pg_try_advisory_lock``) on a connection held for the
coordinator's life; the server releases it when that connection ends, a killed coordinator's
included. SQLite: an ``flock`` on a file beside the database (:mod:`fedaas.folder_lock`).
A database that restarts (or ends the session) drops the advisory lock while the
coordinator rides out the outage: a watchdog takes it again every :data:`WATCH_S`, and a
coordinator that finds another one holding it by then stops itself (``SIGTERM``, the
operator's own way to stop it) rather than run the same jobs beside it. Until it notices,
the lease (:meth:`fedaas.server.db.Store.take_lease`) refuses its writes: one refused
stops it the same way (:func:`stop_when_fenced`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import create_engine, text
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from fedaas.folder_lock import FolderInUse, in_use, lock_folder
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
WATCH_S = 5.0
"""How often the coordinator checks that its lock's session is alive (else takes it again)."""
HOLD_WAIT_S = 10.0
"""How long a starting coordinator waits for a lock to be released: the connections of one
that was just killed close with it, and PostgreSQL ends their sessions moments later."""


log = logging.getLogger("fedaas.coordinator")
TRY_LOCK = text("SELECT pg_try_advisory_lock(:key)")


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
        url,
        pool_size=1,
        pool_pre_ping=True,
        connect_args={"connect_timeout": 5, "application_name": me},
    )
    try:
        connection = engine.connect()
        deadline = time.monotonic() + HOLD_WAIT_S
        while True:
            taken = _try_lock(connection)
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

    stop = threading.Event()
    watch = threading.Thread(
        target=_watch, args=(engine, connection, stop), name="db-lock", daemon=True
    )
    watch.start()

    def release() -> None:
        stop.set()  # the watchdog closes the connection (never two threads on one)
        watch.join(timeout=2.0)

    return _Held(release)


def _try_lock(connection: Connection) -> bool:
    taken = bool(connection.execute(TRY_LOCK, {"key": LOCK_KEY}).scalar())
    connection.commit()  # the lock is the session's: no transaction is left open
    return taken


def _watch(engine: Engine, connection: Connection, stop: threading.Event) -> None:
    """Keep the lock's session alive; take the lock again when the session was lost; stop
    this coordinator when another one took it meanwhile."""
    try:
        _keep(engine, connection, stop)
    except Exception as exc:  # a dead watchdog leaves the lock unguarded: say so, once
        log.error("the database lock's watchdog stopped: %s", one_line(exc))


def _keep(engine: Engine, connection: Connection, stop: threading.Event) -> None:
    while not stop.wait(WATCH_S):
        try:
            connection.execute(text("SELECT 1"))
            connection.commit()
            continue
        except SQLAlchemyError:
            pass  # the session is gone (a restarted database): the lock went with it
        with contextlib.suppress(SQLAlchemyError):
            connection.close()
        try:
            connection = engine.connect()
            taken = _try_lock(connection)
        except SQLAlchemyError:
            continue  # the database is still away: the next check tries again
        if taken:
            log.warning("the database lock went with its session; this coordinator holds it again")
            continue
        holder = None
        with contextlib.suppress(SQLAlchemyError):
            holder = connection.execute(HOLDER).scalar()
        log.critical(
            "another coordinator (%s) took the database while this one's session was lost: "
            "stopping this one, so that the two do not run the same jobs",
            holder or "unknown",
        )
        os.kill(os.getpid(), signal.SIGTERM)
        break
    with contextlib.suppress(SQLAlchemyError):
        connection.close()
    engine.dispose()


def stop_when_fenced() -> None:
    """What a coordinator whose write was refused by the lease does: it stops itself, as the
    watchdog does when it finds another coordinator holding the lock."""
    log.critical(
        "another coordinator took the database: stopping this one, which may no longer write to it"
    )
    os.kill(os.getpid(), signal.SIGTERM)


def _in_use(url: str, holder: str | None) -> str:
    """``holder``: a pid (SQLite) or the holding connection's name (PostgreSQL)."""
    return in_use("coordinator", holder, f"the database {redacted(url)}", "--db")
