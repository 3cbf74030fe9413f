"""A job naming its own train_step/eval_step, with real coordinator and member processes.

The member started without ``--allow-code steps_pkg`` declines the job and
says why; the one started with it runs the custom step, and the step's
metrics (and the eval_step's) arrive at the coordinator as ``members.*``,
next to the federated F1/AUROC computed from the summed metric states; the
coordinator's held-out F1/AUROC are those of the final model on the holdout.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from fedaas import tensors
from fedaas.data.source import open_dataset, write_dataset
from fedaas.models import build_model, set_state
from fedaas.sim.cluster import LocalCluster
from fedaas.spec import parse_spec
from fedaas.train import evaluate

pytestmark = pytest.mark.slow

STEPS = Path(__file__).resolve().parents[1] / "train"  # the steps_pkg package


def _spec(holdout: str) -> dict:
    return {
        "job": {"name": "custom-step", "rounds": 2, "seed": 3},
        "model": {"name": "logreg"},
        "data": {"features": 4, "classes": 2},  # binary: one logit
        "train": {
            "train_step": "steps_pkg.steps:train_step",
            "eval_step": "steps_pkg.steps:eval_step",
            "options": {"scale": 1.0},
            "task": "binary",
            "lr": 0.05,
            "batch_size": 8,
        },
        "federation": {"clients_per_round": 2, "min_clients": 1, "round_timeout": 120},
        "evaluation": {"holdout": holdout, "validation_split": 0.25, "metrics": ["f1", "auroc"]},
    }


def test_only_a_member_that_allowed_the_code_runs_it(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    urls = []
    for name in ("careful", "willing", "holdout"):
        x = rng.normal(size=(60, 4)).astype(np.float32)
        urls.append(write_dataset(str(tmp_path), name, x, (x[:, 0] > 0).astype(np.int64), "npz"))
    with LocalCluster(tmp_path / "cluster") as cluster:
        cluster.start_server()
        cluster.start_client("careful", urls[0])  # no --allow-code
        token = cluster.admin.enroll("willing").token
        state = str(cluster.workdir / "members" / "willing")
        path = os.pathsep.join(filter(None, [str(STEPS), os.environ.get("PYTHONPATH")]))
        args = ["client", "--server", cluster.url, "--data", urls[1], "--state", state]
        cluster.clients["willing"] = cluster._spawn(
            [*args, "--allow-code", "steps_pkg"],
            "client-willing",
            cluster._env(FEDAAS_TOKEN=token, PYTHONPATH=path),
        )
        cluster.wait_online(2)
        job = cluster.admin.wait(cluster.admin.submit(_spec(urls[2])).id, timeout=240)
        cluster.admin.download_model(job.id, tmp_path / "final.safetensors")
    assert job.status == "completed", job
    reason = job.declined["careful"]
    assert (
        "train_step 'steps_pkg.steps:train_step' is code this member's operator has not allowed"
        in reason
    )
    assert "--allow-code" in reason and "willing" not in job.declined
    for record in job.rounds:
        metrics = record.model_dump()
        assert metrics["participants"] == ["willing"]
        assert metrics["members.l1"] > 0 and metrics["members.batches"] == 6  # 45 examples / 8
        assert metrics["members.eval.val_l1"] > 0 and metrics["members.eval.grad_enabled"] == 0
        assert 0 <= metrics["federated_f1"] <= 1 and metrics["federated_examples"] == 15
        assert 0 <= metrics["federated_auroc"] <= 1
    assert [r.model_dump()["members.round"] for r in job.rounds] == [1, 2]
    # the coordinator's held-out evaluation reports the same metrics, computed the same way
    spec = parse_spec(_spec(urls[2]))
    module = build_model(spec.model, spec.data, task="binary")
    set_state(module, tensors.decode((tmp_path / "final.safetensors").read_bytes())[0])
    holdout = open_dataset(urls[2], spec.data)
    mine = evaluate(module, holdout, cfg=spec.train, classes=2, metrics=("f1", "auroc"))
    last = job.rounds[-1].model_dump()
    assert last["f1"] == pytest.approx(mine.metrics["f1"]) and last["loss"] == pytest.approx(
        mine.loss
    )
    assert last["auroc"] == pytest.approx(mine.metrics["auroc"])
