"""Members whose data does not fit the job decline it, naming why, and upload nothing.

A real coordinator process and three real member agents (in threads of the
test process): one with good data, one whose data has the wrong number of
features, one whose labels are out of range. The round closes with the good
member's update alone; the job's ``declined`` map names each mismatch.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from fedaas.sim.cluster import LocalCluster
from fixtures.agents import AgentThreads, StartAgents
from fixtures.specs import make_spec

pytestmark = pytest.mark.slow

FEATURES, CLASSES = 4, 3
SPEC = make_spec(
    "member-data",
    clients=None,
    seed=0,
    features=FEATURES,
    classes=CLASSES,
    train={"batch_size": 8},
)


def _write_npz(path: Path, features: int, labels: np.ndarray) -> str:
    rng = np.random.default_rng(len(labels) + features)
    np.savez(path, x=rng.normal(size=(labels.size, features)).astype(np.float32), y=labels)
    return str(path)


@pytest.fixture
def datasets(tmp_path: Path) -> dict[str, str]:
    labels = np.arange(40) % CLASSES
    bad_labels = labels.copy()
    bad_labels[[3, 17]] = [5, 4]
    return {
        "good": _write_npz(tmp_path / "good.npz", FEATURES, labels),
        "wide": _write_npz(tmp_path / "wide.npz", FEATURES + 1, labels),
        "labels": _write_npz(tmp_path / "labels.npz", FEATURES, bad_labels),
    }


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    with LocalCluster(tmp_path / "cluster") as cluster:
        cluster.start_server()
        yield cluster


@pytest.fixture
def members(
    cluster: LocalCluster, datasets: dict[str, str], start_agents: StartAgents
) -> Iterator[AgentThreads]:
    """The three agents, each with a transport that records its requests."""
    with start_agents(cluster, datasets, give_up_after=30.0) as team:
        yield team


def test_members_with_mismatched_data_decline_and_upload_nothing(
    cluster: LocalCluster, members: AgentThreads
) -> None:
    job_id = cluster.admin.submit(SPEC).id
    job = cluster.admin.wait(job_id, timeout=120)
    transports = members.transports
    assert job.status == "completed", job
    assert set(job.declined) == {"wide", "labels"}
    wide, labels = job.declined["wide"], job.declined["labels"]
    assert "data has 5 features, the job expects 4" in wide
    assert "label 5 is out of range: the job has classes 0..2" in labels
    for reason in (wide, labels):  # the member's file paths stay on its machine
        assert "<data>" in reason and ".npz" not in reason, reason
    assert len(wide.split("; ")) == 1 and len(labels.split("; ")) == 1  # one problem each

    (first,) = job.rounds
    assert first.clients == 1
    assert first.participants == ["good"]

    # the declining members asked for their task, declined once, and sent no update
    for name in ("wide", "labels"):
        sent = transports[name].after_start
        assert ("POST", f"/v1/jobs/{job_id}/decline") in sent
        assert sent.count(("POST", f"/v1/jobs/{job_id}/decline")) == 1
        assert not [s for s in sent if s[0] == "PUT" or s[1].endswith("/model")], sent
    uploads = [s for s in transports["good"].after_start if s[0] == "PUT"]
    assert uploads == [("PUT", f"/v1/jobs/{job_id}/rounds/1/update")]

    db = cluster.state / "fedaas.db"
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as con:
        rows = con.execute(
            "SELECT m.name FROM updates u JOIN members m ON m.id = u.member_id WHERE u.job_id = ?",
            (job_id,),
        ).fetchall()
    assert rows == [("good",)]


def test_a_restarted_coordinator_remembers_who_declined(
    cluster: LocalCluster, members: AgentThreads
) -> None:
    """After a restart the declining members are not asked again: the rounds go on without them."""
    job_id = cluster.admin.submit({**SPEC, "job": {**SPEC["job"], "rounds": 3}}).id
    job = cluster.admin.job(job_id, after_round=0, timeout=30)
    assert job.round >= 1 and set(job.declined) == {"wide", "labels"}, job
    cluster.kill_server()
    cluster.start_server()
    job = cluster.admin.wait(job_id, timeout=120)
    assert job.status == "completed", job
    assert [r.participants for r in job.rounds] == [["good"]] * 3
    for name in ("wide", "labels"):
        sent = members.transports[name].sent
        assert sent.count(("POST", f"/v1/jobs/{job_id}/decline")) == 1, sent
