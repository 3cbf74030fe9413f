"""The demo's references (local-only, centralized) use the job's own training code and metrics.

In process and small: each example's spec for two rounds on its own data. The references report
the same metrics the coordinator publishes for the federated model (AUROC and sensitivity for
the binary task, RMSE and R2 for the regression), local-only has one value per member, and the
training follows the job's schedule (a different learning rate per round gives another model).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fedaas.data.dataset import ArrayDataset
from fedaas.data.examples import example_data
from fedaas.sim import baselines
from fedaas.sim.demo import demo_spec

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _setup(name: str, rounds: int = 2) -> tuple:
    found = example_data(name)
    spec, _ = demo_spec(EXAMPLES / f"{name}.toml", len(found.parts), rounds, "unused.npz")
    parts = [ArrayDataset(x, y) for x, y in found.parts]
    return spec, parts, ArrayDataset(*found.test)


@pytest.mark.parametrize(
    ("name", "metrics"),
    [
        ("breast_cancer", {"auroc", "sensitivity", "specificity", "accuracy", "loss"}),
        ("diabetes", {"rmse", "r2", "mae", "loss"}),
    ],
)
def test_references_report_the_jobs_metrics(name: str, metrics: set[str]) -> None:
    spec, parts, test = _setup(name)
    assert spec.evaluation.validation_split == 0  # the demo's members train on all their data
    local = baselines.local_only(spec, parts, test)
    central = baselines.centralized(spec, parts, test)
    assert set(central) == metrics and set(local["metrics"]) == metrics
    assert local["metric"] == baselines.headline(spec) == spec.evaluation.metrics[0]
    assert len(local["per_member"]) == len(parts)
    assert local["min"] <= local["mean"] <= local["max"]
    assert all(np.isfinite(v) for v in central.values())


def test_references_follow_the_jobs_learning_rate_schedule() -> None:
    spec, parts, test = _setup("diabetes", rounds=3)
    constant = baselines.train_alone(spec, parts[0], test, seed=0)
    again = baselines.train_alone(spec, parts[0], test, seed=0)
    assert constant == again  # reproducible
    decayed = spec.model_copy(
        update={"train": spec.train.model_copy(update={"lr_schedule": "step", "lr_step_rounds": 1})}
    )
    assert baselines.train_alone(decayed, parts[0], test, seed=0)["rmse"] != constant["rmse"]
