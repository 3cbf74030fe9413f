"""One coordinator per database, whatever its state folder, on SQLite and on PostgreSQL.

Two coordinators with their own folders on one ``--db`` (a rolling deploy that starts the
new one before the old one stops) would both run its jobs. The second waits a little for
a coordinator that was just killed to let go, then refuses; a killed coordinator's hold
ends with its process, so a restart is never locked out.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from fedaas.server import db_lock
from fedaas.server.db_lock import StoreInUse, hold_database
from fedaas.sim.cluster import LocalCluster

pytestmark = pytest.mark.slow

HOLDER = """
import logging, sys, time
from fedaas.server import db_lock
logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
db_lock.WATCH_S = 0.3
db_lock.hold_database(sys.argv[1])
print("held", flush=True)
time.sleep(600)
"""


def _holder(url: str) -> subprocess.Popen[str]:
    """A process that holds the database (its watchdog checks every 0.3 s), once it says so."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, url],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


def _holding_session(admin: Any, pid: int) -> int | None:
    """The backend pid of the session that holds the lock for process ``pid``, if one does."""
    row = admin.execute(
        "SELECT l.pid FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
        "WHERE l.locktype = 'advisory' AND l.granted AND a.application_name LIKE %s",
        (f"fedaas coordinator pid {pid} %",),
    ).fetchone()
    return None if row is None else int(row[0])


def test_a_second_holder_of_a_postgresql_database_is_refused_until_the_first_lets_go(
    postgres, monkeypatch: pytest.MonkeyPatch
) -> None:
    url, other = postgres.create_database(), postgres.create_database()
    monkeypatch.setattr(db_lock, "HOLD_WAIT_S", 0.5)
    first = hold_database(url)
    try:
        began = time.monotonic()
        held_by = rf"another coordinator \(fedaas coordinator pid {os.getpid()} on [^)]+\)"
        with pytest.raises(StoreInUse, match=held_by + " is using the database"):
            hold_database(url)
        assert time.monotonic() - began < 5
        hold_database(other).close()  # the lock is per database
    finally:
        first.close()
    hold_database(url).close()


def test_a_killed_holder_lets_go_with_its_process(postgres) -> None:
    """A crashed coordinator restarts at once: the server ends the dead one's session."""
    url = postgres.create_database()
    holder = _holder(url)
    try:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=10)
        began = time.monotonic()
        hold_database(url).close()  # waits up to HOLD_WAIT_S for the session to end
        assert time.monotonic() - began < db_lock.HOLD_WAIT_S
    finally:
        holder.kill()


def test_a_second_coordinator_on_a_shared_sqlite_database_is_refused(tmp_path: Path) -> None:
    shared = f"sqlite:///{tmp_path / 'shared.db'}"
    with LocalCluster(tmp_path / "first") as cluster:
        cluster.start_server(extra_args=["--db", shared])
        assert cluster.server is not None
        second = subprocess.run(
            [sys.executable, "-m", "fedaas", "server", "--state", str(tmp_path / "second")]
            + ["--port", "0", "--db", shared],
            capture_output=True,
            text=True,
            timeout=60,
            env={
                **{k: v for k, v in os.environ.items() if not k.startswith("FEDAAS_")},
                "FEDAAS_ADMIN_TOKEN": "a" * 16,
            },
        )
        assert second.returncode == 2, second.stderr
        said = " ".join(second.stderr.replace("│", " ").split())
        assert f"another coordinator (pid {cluster.server.pid}) is using the database" in said
        assert len(cluster.admin.members()) == 0  # the first one goes on


def test_a_lost_session_is_held_again_or_the_coordinator_stops(postgres) -> None:
    """The database ends the lock's session (as a restart does). Nobody else waiting: the
    coordinator takes the lock again. Another one waiting, and granted it first: this one
    stops itself (SIGTERM) instead of running the same jobs beside it."""
    import psycopg

    url = postgres.create_database()
    dsn = url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(dsn, autocommit=True) as admin:
        alone = _holder(url)
        try:
            first = _holding_session(admin, alone.pid)
            assert first is not None
            admin.execute("SELECT pg_terminate_backend(%s)", (first,))
            deadline = time.monotonic() + 10
            while _holding_session(admin, alone.pid) in (None, first):
                assert time.monotonic() < deadline, "the lock was not taken again"
                time.sleep(0.1)
            assert alone.poll() is None  # still running, lock held by a new session
        finally:
            alone.kill()
            alone.wait()
        loser = _holder(url)
        with psycopg.connect(dsn, autocommit=True) as rival:
            waiting = threading.Thread(  # queued for the lock: granted as the session ends
                target=rival.execute, args=("SELECT pg_advisory_lock(%s)", (db_lock.LOCK_KEY,))
            )
            waiting.start()
            time.sleep(0.2)
            session = _holding_session(admin, loser.pid)
            admin.execute("SELECT pg_terminate_backend(%s)", (session,))
            waiting.join(timeout=10)
            assert not waiting.is_alive()
            try:
                loser.wait(timeout=10)  # it stopped itself
            finally:
                loser.kill()
            assert loser.returncode == -signal.SIGTERM
            assert loser.stderr is not None and "took the database" in loser.stderr.read()
