"""A real federation: coordinator and member processes over HTTP on loopback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fedaas import tensors
from fedaas.sim.cluster import LocalCluster

pytestmark = pytest.mark.slow

JOB = """
[job]
name = "three-rounds"
rounds = 3
seed = 1

[model]
name = "mlp"
hidden = [32]

[data]
features = 64
classes = 10

[train]
lr = 0.1
batch_size = 16

[federation]
clients_per_round = 3
min_clients = 3
round_timeout = 120

[evaluation]
holdout = "{holdout}"
validation_split = 0.2
"""


def fedaas(
    *args: str, env: dict[str, str] | None = None, timeout: float = 180
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "fedaas", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def test_operator_runs_a_three_round_job(tmp_path: Path) -> None:
    data = tmp_path / "data"
    exported = fedaas(
        "datasets",
        "export",
        "digits",
        "--clients",
        "3",
        "--alpha",
        "0.5",
        "--seed",
        "0",
        "--out",
        str(data),
    )
    assert exported.returncode == 0, exported.stderr
    assert sorted(p.name for p in data.iterdir()) == [
        "client_0.npz",
        "client_1.npz",
        "client_2.npz",
        "test.npz",
    ]

    spec = tmp_path / "job.toml"
    spec.write_text(JOB.format(holdout=data / "test.npz"))
    out = tmp_path / "run"
    with LocalCluster(tmp_path / "cluster") as cluster:
        cluster.start_server()
        for i in range(3):
            token = fedaas(
                "enroll",
                f"org-{i}",
                "--server",
                cluster.url,
                env={"FEDAAS_ADMIN_TOKEN": cluster.admin_token},
            )
            assert token.returncode == 0, token.stderr
            cluster.start_client(
                f"org-{i}", str(data / f"client_{i}.npz"), token=token.stdout.strip()
            )
        submitted = fedaas(
            "job",
            "submit",
            str(spec),
            "--server",
            cluster.url,
            "--wait",
            "--out",
            str(out),
            env={"FEDAAS_ADMIN_TOKEN": cluster.admin_token},
        )
    assert submitted.returncode == 0, submitted.stdout + submitted.stderr
    assert "round   3/3" in submitted.stdout

    metrics = json.loads((out / "metrics.json").read_text())
    rounds = metrics["rounds"]
    assert [r["round"] for r in rounds] == [1, 2, 3]
    for r in rounds:
        for key in ("accuracy", "loss", "clients", "seconds", "bytes_up", "bytes_down"):
            assert r[key] is not None, key
        assert r["clients"] == 3
        assert r["participants"] == ["org-0", "org-1", "org-2"]
        assert 0 < r["federated_accuracy"] <= 1 and r["federated_examples"] > 0
        assert r["bytes_up"] > 0 and r["bytes_down"] > 0
    assert rounds[-1]["loss"] < rounds[0]["loss"]
    assert metrics["job"]["status"] == "completed"

    state, meta = tensors.load(out / "model.safetensors")
    assert meta["round"] == "3"
    assert set(state) == {"0.weight", "0.bias", "2.weight", "2.bias"}
    assert all(np.isfinite(v).all() for v in state.values())
    assert (out / "job.toml").read_text() == spec.read_text()
    assert (out / "accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_demo_writes_the_comparison(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    result = fedaas("demo", "--clients", "3", "--rounds", "4", "--out", str(out), timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert len(metrics["rounds"]) == 4
    local = metrics["baselines"]["local_only"]
    assert local["min"] <= local["mean"] <= local["max"]
    assert len(local["per_member"]) == 3
    assert 0 < metrics["baselines"]["centralized"]["accuracy"] <= 1
    assert (out / "accuracy.png").stat().st_size > 10_000
    assert "held-out accuracy" in result.stdout
    # a row per metric: every name whole at the 80 columns of a pipe, nothing cut with "…"
    table = result.stdout[result.stdout.index("held-out accuracy") :]
    assert "\u2026" not in table, table
    for name in ("accuracy", "balanced_accuracy", "f1", "loss", "(pooled data)"):
        assert f" {name} " in table, (name, table)
