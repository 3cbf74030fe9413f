"""Private jobs end to end: epsilon every round, the budget stop, the ledger across a crash.

A real coordinator process and real member agents (threads of the test
process). The epsilon the coordinator reports after every round must equal
dp-accounting's for the same events, the job must stop cleanly before the
round that would exceed its budget, and a coordinator killed with SIGKILL and
restarted must continue the ledger where it was: no round lost, and a round
that may have been released before the crash counted again when it reruns.
A private run publishes no participant and no per-member value: read the
admin API, ``fedaas job status``, ``metrics.json`` and the database.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fedaas.algorithms.accounting import dp_sgd_schedule, epsilon, record_epsilon_after
from fedaas.sim.cluster import LocalCluster
from fixtures.agents import StartAgents
from fixtures.specs import make_spec

pytestmark = pytest.mark.slow

Z, DELTA = 2.0, 1e-5


def spec(rounds: int, budget: float | None, **privacy: Any) -> dict[str, Any]:
    settings = {"mechanism": "gaussian", "noise_multiplier": Z, "clip_norm": 0.5, **privacy}
    if budget is not None:
        settings["epsilon_budget"] = budget
    return make_spec(
        "private",
        rounds,
        clients=None,
        min_clients=2,
        seed=3,
        features=4,
        classes=3,
        train={"batch_size": 8, "lr": 0.1},
        privacy=settings,
    )


@pytest.fixture
def federation(tmp_path: Path, start_agents: StartAgents) -> Iterator[LocalCluster]:
    """A coordinator and two agents in threads (``m0``, ``m1``: 60 examples each)."""
    rng = np.random.default_rng(0)
    datasets = {}
    for i in range(2):
        path = tmp_path / f"m{i}.npz"
        y = np.arange(60) % 3
        np.savez(path, x=rng.normal(size=(60, 4)).astype(np.float32) + y[:, None], y=y)
        datasets[f"m{i}"] = str(path)
    with LocalCluster(tmp_path / "cluster") as cluster:
        cluster.start_server()
        with start_agents(cluster, datasets, give_up_after=None):
            yield cluster


def test_epsilon_per_round_matches_dp_accounting_and_budget_stops(federation: LocalCluster) -> None:
    budget = (epsilon(Z, 1.0, 3, DELTA) + epsilon(Z, 1.0, 4, DELTA)) / 2  # room for 3 rounds
    job = federation.admin.submit(spec(rounds=20, budget=budget))
    job = federation.admin.wait(job.id, timeout=90)
    assert job.status == "completed"
    assert "privacy budget reached" in job.reason
    rounds = job.rounds
    assert [r.round for r in rounds] == [1, 2, 3]
    for t, r in enumerate(rounds, start=1):
        assert r.model_extra["epsilon"] == pytest.approx(epsilon(Z, 1.0, t, DELTA), rel=1e-6)
        assert r.private is True and r.clients is None  # not published under client-level DP
        assert r.population == 2 and r.sampling_rate == 1.0 and r.amplification is False
    assert rounds[-1].model_extra["epsilon"] <= budget


def test_restarted_coordinator_continues_the_ledger(federation: LocalCluster) -> None:
    job = federation.admin.submit(spec(rounds=5, budget=None))
    while federation.admin.job(job.id).round < 2:
        time.sleep(0.05)
    federation.kill_server()
    federation.start_server()
    final = federation.admin.wait(job.id, timeout=90)
    assert final.status == "completed", final.reason
    assert [r.round for r in final.rounds] == [1, 2, 3, 4, 5]
    # no round is lost; the interrupted round counts again if it had reached its release
    # (its event is stored before its noise and model exist): at most one extra event
    extra = None
    for t, r in enumerate(final.rounds, start=1):
        spent = r.model_extra["epsilon"]
        if spent != pytest.approx(epsilon(Z, 1.0, t, DELTA), rel=1e-6):
            assert spent == pytest.approx(epsilon(Z, 1.0, t + 1, DELTA), rel=1e-6)
            extra = t if extra is None else extra
        else:
            assert extra is None  # once counted, it stays counted


def record_epsilon(rounds: int) -> float:
    """What a member of the fixture (60 examples, batch 8) has spent after ``rounds`` of DP-SGD."""
    q, steps = dp_sgd_schedule(60, 8, 1)
    return record_epsilon_after(rounds, steps, q, Z, DELTA, accountant="pld")


def test_record_level_job_stops_before_a_member_would_exceed_the_budget(
    federation: LocalCluster,
) -> None:
    budget = (record_epsilon(3) + record_epsilon(4)) / 2  # room for 3 rounds
    job = federation.admin.submit(spec(rounds=20, budget=budget, unit="record", placement="local"))
    job = federation.admin.wait(job.id, timeout=180)
    assert job.status == "completed", job.reason
    assert "privacy budget reached" in job.reason and "record-level" in job.reason
    rounds = job.rounds
    assert [r.round for r in rounds] == [1, 2, 3]
    for t, r in enumerate(rounds, start=1):
        assert r.model_extra["record_epsilon"] == pytest.approx(record_epsilon(t), rel=1e-6)
        assert r.clients == 2
    assert (
        rounds[-1].model_extra["record_epsilon"]
        <= budget
        < rounds[-1].model_extra["record_epsilon_next"]
    )
    assert job.declined == {}


def test_members_refuse_a_round_over_their_record_level_budget(
    federation: LocalCluster, tmp_path: Path
) -> None:
    """Even one round is over budget: the members decline before touching a record."""
    job = federation.admin.submit(
        spec(rounds=3, budget=record_epsilon(1) / 2, unit="record", placement="local")
    )
    job = federation.admin.wait(job.id, timeout=180)
    assert job.status == "failed" and job.rounds == []
    assert set(job.declined) == {"m0", "m1"}
    for reason in job.declined.values():
        assert "record-level privacy budget reached" in reason
    assert "quorum not met" in job.reason and "declined: " in job.reason
    assert not list(tmp_path.glob("members/m*/dpsgd-*.json"))  # no round was counted as spent


def test_a_private_run_publishes_no_participants_and_no_per_member_values(
    federation: LocalCluster, tmp_path: Path
) -> None:
    job = federation.admin.submit(spec(rounds=2, budget=None))
    job = federation.admin.wait(job.id, timeout=90)
    assert job.status == "completed", job.reason
    names = ("m0", "m1")
    forbidden = ("members.", "train_loss", "train_acc", "num_examples", "federated_", "unclipped")

    def clean(text: str) -> None:
        assert not any(name in text for name in names), text[:2000]
        assert not any(key in text for key in forbidden), text[:2000]

    api = federation.admin.t.request("GET", f"/v1/jobs/{job.id}").text  # the admin API
    clean(api)
    for r in job.rounds:
        assert r.participants == [] and r.clients is None and r.bytes_up is None
        assert r.model_extra["epsilon"] > 0 and r.model_extra["amplification"] is False
    env = {**os.environ, "FEDAAS_ADMIN_TOKEN": federation.admin_token}
    cli = [sys.executable, "-m", "fedaas", "job"]
    for args in (["status", job.id], ["status", job.id, "--json"]):
        shown = subprocess.run(
            [*cli, *args, "--server", federation.url], env=env, capture_output=True, text=True
        )
        assert shown.returncode == 0, shown.stderr
        clean(shown.stdout)
    assert "no amplification by sampling claimed" in shown.stdout or "--json" in args
    out = tmp_path / "run"
    fetched = subprocess.run(
        [*cli, "download", job.id, "--out", str(out), "--server", federation.url],
        env=env,
        capture_output=True,
        text=True,
    )
    assert fetched.returncode == 0, fetched.stderr
    clean((out / "metrics.json").read_text())
    (db,) = federation.state.glob("*.db")  # the coordinator's SQLite database
    con = sqlite3.connect(db)
    try:
        receipts = con.execute("SELECT count(*) FROM updates WHERE job_id = ?", (job.id,))
        assert receipts.fetchone()[0] == 0  # no per-member receipts
        rows = con.execute("SELECT participants, metrics FROM rounds WHERE job_id = ?", (job.id,))
        for participants, metrics in rows.fetchall():
            assert json.loads(participants) == []
            clean(metrics)
        clean(str(con.execute("SELECT extra FROM jobs WHERE id = ?", (job.id,)).fetchone()))
    finally:
        con.close()
