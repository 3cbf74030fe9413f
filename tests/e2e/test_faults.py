"""Fault injection: kill the coordinator and members at random points.

Several short jobs run on one federation of real processes. In each, the
coordinator (SIGKILL, restarted on the same state and port) or a member
(SIGKILL, restarted with its token) dies at a random moment. Every job must
finish with each round counted exactly once, and reach the accuracy of an
undisturbed run within noise. ``fedaas job submit --wait`` must ride
through a coordinator restart.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fedaas import tensors
from fedaas.data.digits import digits_federation
from fedaas.data.source import write_npz
from fedaas.protocol import JobStatus
from fedaas.sim.cluster import LocalCluster
from fixtures.specs import make_spec

pytestmark = pytest.mark.slow

ROUNDS = 6
MEMBERS = 3


def spec(holdout: Path, seed: int) -> dict[str, Any]:
    s = make_spec(
        f"faults-{seed}",
        ROUNDS,
        clients=MEMBERS,
        min_clients=2,
        timeout=6,
        seed=0,
        features=64,
        classes=10,
        model="mlp",
        train={"lr": 0.1, "batch_size": 16, "epochs": 2},
        evaluation={"holdout": str(holdout)},
    )
    s["model"]["hidden"] = [32]
    return s


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalCluster, Path]]:
    work = tmp_path_factory.mktemp("faults")
    parts, (x_test, y_test) = digits_federation(MEMBERS, 1.0, 0)
    write_npz(str(work / "test.npz"), x_test, y_test)
    with LocalCluster(work / "cluster") as cluster:
        cluster.start_server()
        for i, (x, y) in enumerate(parts):
            write_npz(str(work / f"m{i}.npz"), x, y)
            cluster.start_client(f"m{i}", str(work / f"m{i}.npz"))
        cluster.wait_online(MEMBERS)
        yield cluster, work / "test.npz"


def check_rounds(job: JobStatus) -> None:
    assert job.status == "completed", job.reason
    assert [r.round for r in job.rounds] == list(range(1, ROUNDS + 1))
    assert all(r.clients >= 2 for r in job.rounds)


def wait_round(cluster: LocalCluster, job_id: str, number: int) -> None:
    while cluster.admin.job(job_id).round < number:
        time.sleep(0.02)


def test_jobs_survive_random_crashes(federation: tuple[LocalCluster, Path]) -> None:
    cluster, holdout = federation
    calm = cluster.admin.wait(cluster.admin.submit(spec(holdout, 0)).id)
    check_rounds(calm)
    reference = calm.rounds[-1].accuracy
    assert reference > 0.5

    rng = random.Random(1234)
    for trial in range(1, 4):
        job_id = cluster.admin.submit(spec(holdout, trial)).id
        wait_round(cluster, job_id, rng.randint(1, ROUNDS - 2))
        time.sleep(rng.uniform(0.0, 0.15))  # anywhere inside the next round
        if trial % 2:
            cluster.kill_server()
            cluster.start_server()
        else:
            victim = f"m{rng.randrange(MEMBERS)}"
            cluster.kill_client(victim)
            time.sleep(rng.uniform(0.5, 2.0))
            cluster.restart_client(victim)
        job = cluster.admin.wait(job_id)
        check_rounds(job)
        assert job.rounds[-1].accuracy == pytest.approx(reference, abs=0.08)


def test_submit_wait_rides_through_a_coordinator_restart(
    federation: tuple[LocalCluster, Path], tmp_path: Path
) -> None:
    cluster, holdout = federation
    job_file = tmp_path / "job.toml"
    s = spec(holdout, 99)
    job_file.write_text(
        "\n".join(
            f"[{section}]\n"
            + "\n".join(f"{k} = {v!r}".replace("'", '"') for k, v in values.items())
            for section, values in s.items()
        ).replace("True", "true")
    )
    out = tmp_path / "run"
    waiter = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "fedaas",
            "job",
            "submit",
            str(job_file),
            "--server",
            cluster.url,
            "--wait",
            "--out",
            str(out),
        ],
        env={**os.environ, "FEDAAS_ADMIN_TOKEN": cluster.admin_token},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not any(j.name == "faults-99" for j in cluster.admin.jobs()):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        job_id = next(j.id for j in cluster.admin.jobs() if j.name == "faults-99")
        wait_round(cluster, job_id, 2)
        cluster.kill_server()
        time.sleep(1.0)
        cluster.start_server()
        output, _ = waiter.communicate(timeout=120)
    finally:
        if waiter.poll() is None:
            waiter.kill()
    assert waiter.returncode == 0, output
    for number in range(1, ROUNDS + 1):
        assert output.count(f"round {number:>3}/{ROUNDS}") == 1, output
    assert (out / "metrics.json").exists() and (out / "model.safetensors").exists()


def test_a_restarted_coordinator_waits_for_members_slower_than_the_round_timeout(
    federation: tuple[LocalCluster, Path],
) -> None:
    """Members in a long backoff reconnect after ``round_timeout``: the job goes on."""
    cluster, holdout = federation
    job_id = cluster.admin.submit(spec(holdout, 11)).id
    wait_round(cluster, job_id, 1)
    names = [f"m{i}" for i in range(MEMBERS)]
    for name in names:
        cluster.kill_client(name)
    cluster.kill_server()
    cluster.start_server()
    time.sleep(6 + 2)  # past the job's round_timeout with nobody online
    for name in names:
        cluster.restart_client(name)
    job = cluster.admin.wait(job_id)
    check_rounds(job)


def test_a_job_whose_quorum_cannot_be_met_fails_with_the_reason(
    federation: tuple[LocalCluster, Path],
) -> None:
    cluster, holdout = federation
    impossible = spec(holdout, 7)
    impossible["federation"] = {"min_clients": MEMBERS + 1, "round_timeout": 2}
    started = time.monotonic()
    job = cluster.admin.wait(cluster.admin.submit(impossible).id)
    assert job.status == "failed"
    assert "quorum not met" in job.reason and f"min_clients is {MEMBERS + 1}" in job.reason
    assert time.monotonic() - started < 30
    assert job.rounds == []


def test_the_reconnect_grace_outlasts_the_members_backoff() -> None:
    from itertools import islice

    from fedaas.client.transport import backoff_delays
    from fedaas.server.runner import RECONNECT_GRACE_S

    assert max(islice(backoff_delays(), 64)) < RECONNECT_GRACE_S


def test_server_momentum_survives_a_coordinator_crash(
    federation: tuple[LocalCluster, Path],
) -> None:
    """FedAvgM killed mid-job ends with the model of an undisturbed run: its momentum was kept."""
    cluster, holdout = federation

    def job(seed: int) -> dict[str, Any]:
        s = spec(holdout, seed)
        s["job"]["seed"] = 5  # both runs train identically
        s["strategy"] = {"name": "fedavgm", "server_lr": 0.5}
        s["federation"]["round_timeout"] = 60  # every member in every round, even after a restart
        return s

    def final_model(job_id: str) -> dict[str, np.ndarray]:
        body = cluster.admin.t.request("GET", f"/v1/jobs/{job_id}/model").content
        return tensors.decode(body)[0]

    calm = cluster.admin.wait(cluster.admin.submit(job(21)).id)
    check_rounds(calm)
    job_id = cluster.admin.submit(job(22)).id
    wait_round(cluster, job_id, 3)
    cluster.kill_server()
    cluster.start_server()
    crashed = cluster.admin.wait(job_id)
    check_rounds(crashed)
    assert [r.clients for r in crashed.rounds] == [MEMBERS] * ROUNDS
    expected, got = final_model(calm.id), final_model(job_id)
    for name, value in expected.items():
        np.testing.assert_allclose(got[name], value, rtol=1e-4, atol=1e-5)
