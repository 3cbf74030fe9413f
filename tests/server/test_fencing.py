"""A coordinator that lost the database to another one writes nothing more (the lease).

The lock (:mod:`fedaas.server.db_lock`) keeps a second coordinator off the
database, except in the seconds after a database restart ends the lock's
session; the lease (:meth:`fedaas.server.db.Store.take_lease`) fences every
write at its commit. Played here as the second coordinator would: it takes the
lease, and the first one's next write, of either kind (ORM or bulk), is
rolled back and stops it.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
import pytest

from fedaas.server.db import Member as MemberRow
from fedaas.server.db import Store, StoreFenced
from fedaas.sim.cluster import LocalCluster


def _url(db_url: str | None, tmp_path: Path) -> str:
    return db_url or f"sqlite:///{tmp_path / 'fedaas.db'}"


def test_a_store_whose_lease_was_taken_writes_nothing_more(
    db_url: str | None, tmp_path: Path
) -> None:
    url = _url(db_url, tmp_path)
    old, fenced = Store(url), []
    first = old.take_lease("old", lambda: fenced.append(True))
    alpha = old.add_member("alpha", "0" * 64)  # before the takeover: kept
    new = Store(url)
    assert new.take_lease("new") == first + 1
    assert new.lease() == (first + 1, "new")

    with pytest.raises(StoreFenced, match="another coordinator took the database"):
        old.add_member("beta", "1" * 64)  # an ORM insert
    with pytest.raises(StoreFenced):
        old.revoke_member(alpha.id)  # an ORM change, flushed at commit
    with pytest.raises(StoreFenced):
        old.record_decline("no-such-job", "alpha", "x")  # a bulk UPDATE (matches no row)
    assert fenced == [True]  # told once

    members = new.members()
    assert [m.name for m in members] == ["alpha"] and members[0].revoked_at is None
    assert [m.name for m in old.members()] == ["alpha"]  # reads go on
    new.add_member("gamma", "2" * 64)  # the holder writes
    Store(url).add_member("delta", "3" * 64)  # a Store that took no lease (a tool) is not fenced
    assert [m.name for m in new.members()] == ["alpha", "gamma", "delta"]


def test_taking_the_lease_waits_for_a_commit_that_read_the_old_one(postgres) -> None:
    """Taking the lease waits for a write that already passed its check: the new holder reads
    everything the old one committed."""
    url = postgres.create_database()
    old, new = Store(url), Store(url)
    old.take_lease("old")
    taken: list[int] = []
    with old.session() as s:
        s.add(MemberRow(name="late", token_hash="4" * 64, created_at=time.time()))
        s.flush()
        old._fence(s)  # the check the end of a writing transaction makes, held open here
        taker = threading.Thread(target=lambda: taken.append(new.take_lease("new")))
        taker.start()
        taker.join(timeout=1.0)
        assert taker.is_alive() and not taken  # FOR SHARE: the takeover waits
    taker.join(timeout=10)
    assert taken and [m.name for m in new.members()] == ["late"]


def test_a_coordinator_fenced_off_stops_and_writes_nothing(postgres, tmp_path: Path) -> None:
    """Another coordinator takes the lease while this one runs (as one may when a database
    restart ended this one's lock session): this one's next write gets a JSON 503, nothing of it
    is stored, and the coordinator stops itself."""
    url = postgres.create_database()
    with LocalCluster(tmp_path / "cluster") as cluster:
        cluster.start_server(extra_args=["--db", url])
        cluster.admin.enroll("before")
        Store(url).take_lease("rival")
        answer = httpx.post(
            f"{cluster.url}/v1/members",
            json={"name": "after"},
            headers={"Authorization": f"Bearer {cluster.admin_token}"},
            timeout=10,
        )
        assert answer.status_code == 503, answer.text
        assert answer.json()["error"] == "unavailable"
        assert "another coordinator took the database" in answer.json()["detail"]
        assert cluster.server is not None
        cluster.server.wait(timeout=30)  # it stopped itself
        log = (cluster.logs / "server.log").read_text()
    assert "another coordinator took the database: stopping this one" in log
    assert [m.name for m in Store(url).members()] == ["before"]
