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
import time
from pathlib import Path

import pytest

from fedaas.server import db_lock
from fedaas.server.db_lock import StoreInUse, hold_database
from fedaas.sim.cluster import LocalCluster

pytestmark = pytest.mark.slow

HOLDER = """
import sys, time
from fedaas.server.db_lock import hold_database
hold_database(sys.argv[1])
print("held", flush=True)
time.sleep(600)
"""


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
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, url], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
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
