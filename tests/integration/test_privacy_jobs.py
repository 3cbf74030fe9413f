"""Private jobs end to end: epsilon every round, the budget stop, the ledger across a crash.

A real coordinator process and real member agents (threads of the test
process). The epsilon the coordinator reports after every round must equal
dp-accounting's for the same events, the job must stop cleanly before the
round that would exceed its budget, and a coordinator killed with SIGKILL and
restarted must continue the ledger where it was: no round lost or counted
twice.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fedaas.algorithms.accounting import epsilon
from fedaas.client import agent as agent_module
from fedaas.client.agent import Agent
from fedaas.client.privacy import privatize
from fedaas.client.transport import Transport
from fedaas.sim.cluster import LocalCluster
from fedaas.train_dp import dp_sgd_schedule, record_epsilon_after

pytestmark = pytest.mark.slow

Z, DELTA = 2.0, 1e-5


def spec(rounds: int, budget: float | None, **privacy: Any) -> dict[str, Any]:
    settings = {"mechanism": "gaussian", "noise_multiplier": Z, "clip_norm": 0.5, **privacy}
    if budget is not None:
        settings["epsilon_budget"] = budget
    return {
        "job": {"name": "private", "rounds": rounds, "seed": 3},
        "model": {"name": "logreg"},
        "data": {"features": 4, "classes": 3},
        "train": {"batch_size": 8, "lr": 0.1},
        "federation": {"min_clients": 2, "round_timeout": 60},
        "privacy": settings,
    }


@pytest.fixture
def federation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[LocalCluster]:
    monkeypatch.setattr(agent_module, "POLL_S", 0.5)
    rng = np.random.default_rng(0)
    agents = []
    with LocalCluster(tmp_path / "cluster") as cluster:
        cluster.start_server()
        for i in range(2):
            path = tmp_path / f"m{i}.npz"
            y = np.arange(60) % 3
            np.savez(path, x=rng.normal(size=(60, 4)).astype(np.float32) + y[:, None], y=y)
            token = cluster.admin.enroll(f"m{i}")["token"]
            agent = Agent(
                Transport(cluster.url, token, give_up_after=None),
                str(path),
                state_dir=tmp_path / f"s{i}",
            )
            threading.Thread(target=agent.run, daemon=True).start()
            agents.append(agent)
        yield cluster
        for agent in agents:
            agent.stop.set()


def test_epsilon_per_round_matches_dp_accounting_and_budget_stops(federation: LocalCluster) -> None:
    budget = (epsilon(Z, 1.0, 3, DELTA) + epsilon(Z, 1.0, 4, DELTA)) / 2  # room for 3 rounds
    job = federation.admin.submit(spec(rounds=20, budget=budget))
    job = federation.admin.wait(job["id"], timeout=90)
    assert job["status"] == "completed"
    assert "privacy budget reached" in job["reason"]
    rounds = job["rounds"]
    assert [r["round"] for r in rounds] == [1, 2, 3]
    for t, r in enumerate(rounds, start=1):
        assert r["epsilon"] == pytest.approx(epsilon(Z, 1.0, t, DELTA), rel=1e-6)
        assert r["private"] is True and r["clients"] == 2
    assert rounds[-1]["epsilon"] <= budget


def test_restarted_coordinator_continues_the_ledger(federation: LocalCluster) -> None:
    job = federation.admin.submit(spec(rounds=5, budget=None))
    while federation.admin.job(job["id"])["round"] < 2:
        time.sleep(0.05)
    federation.kill_server()
    federation.start_server()
    final = federation.admin.wait(job["id"], timeout=90)
    assert final["status"] == "completed", final["reason"]
    assert [r["round"] for r in final["rounds"]] == [1, 2, 3, 4, 5]
    for t, r in enumerate(final["rounds"], start=1):
        assert r["epsilon"] == pytest.approx(epsilon(Z, 1.0, t, DELTA), rel=1e-6)


def test_member_ou_noise_survives_a_restart(tmp_path: Path) -> None:
    """Local OU noise: the state file continues the AR(1) process across agent restarts."""
    info = {
        "mechanism": "ou",
        "placement": "local",
        "clip_norm": 1.0,
        "noise_std": 1.0,
        "theta": 0.9,
    }
    zero = {"w": np.zeros(20_000, dtype=np.float32)}
    first, _ = privatize(zero, info, 1, tmp_path, "job-x", "member")
    # a "restarted" agent has nothing in memory; only the state folder remains
    second, _ = privatize(zero, info, 2, tmp_path, "job-x", "member")
    correlation = np.corrcoef(first["w"], second["w"])[0, 1]
    assert correlation == pytest.approx(0.9, abs=0.02)
    fresh, _ = privatize(zero, info, 1, tmp_path / "other", "job-x", "member")
    assert abs(np.corrcoef(second["w"], fresh["w"])[0, 1]) < 0.05


def record_epsilon(rounds: int) -> float:
    """What a member of the fixture (60 examples, batch 8) has spent after ``rounds`` of DP-SGD."""
    q, steps = dp_sgd_schedule(60, 8, 1)
    return record_epsilon_after(rounds, steps, q, Z, DELTA, accountant="pld")


def test_record_level_job_stops_before_a_member_would_exceed_the_budget(
    federation: LocalCluster,
) -> None:
    budget = (record_epsilon(3) + record_epsilon(4)) / 2  # room for 3 rounds
    job = federation.admin.submit(spec(rounds=20, budget=budget, unit="record", placement="local"))
    job = federation.admin.wait(job["id"], timeout=180)
    assert job["status"] == "completed", job["reason"]
    assert "privacy budget reached" in job["reason"] and "record-level" in job["reason"]
    rounds = job["rounds"]
    assert [r["round"] for r in rounds] == [1, 2, 3]
    for t, r in enumerate(rounds, start=1):
        assert r["record_epsilon"] == pytest.approx(record_epsilon(t), rel=1e-6)
        assert r["clients"] == 2
    assert rounds[-1]["record_epsilon"] <= budget < rounds[-1]["record_epsilon_next"]
    assert job["declined"] == {}


def test_members_refuse_a_round_over_their_record_level_budget(
    federation: LocalCluster, tmp_path: Path
) -> None:
    """Even one round is over budget: the members decline before touching a record."""
    job = federation.admin.submit(
        spec(rounds=3, budget=record_epsilon(1) / 2, unit="record", placement="local")
    )
    job = federation.admin.wait(job["id"], timeout=180)
    assert job["status"] == "failed" and job["rounds"] == []
    assert set(job["declined"]) == {"m0", "m1"}
    for reason in job["declined"].values():
        assert "record-level privacy budget reached" in reason
    assert "quorum not met" in job["reason"] and "declined: " in job["reason"]
    assert not list(tmp_path.glob("s*/dpsgd-*.json"))  # no round was counted as spent
