"""Reference points for a federation: each member alone (local-only), and all data pooled.

Both use the federated job's own code and settings: the model built by the
registry from the same seed, :func:`~fedaas.train.train_local` once per
round with the job's ``[train]`` (task, loss, optimizer, the learning rate
of that round's schedule, ``epochs`` per round), and the same held-out
evaluation with the job's metrics (:func:`~fedaas.train.evaluate`). The only
difference is whose data trains the model. A reference that differs in any
other way would credit (or blame) federation for something else.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from fedaas.data.dataset import ArrayDataset, Dataset
from fedaas.models import build_model
from fedaas.spec import JobSpec
from fedaas.spec_train import job_metrics
from fedaas.train import evaluate, train_local

LOWER_IS_BETTER = frozenset({"loss", "rmse", "mae"})
"""Metrics where a smaller value is the better model."""


def headline(spec: JobSpec) -> str:
    """The metric a demo's table and plot lead with: the job's first metric."""
    metrics = job_metrics(spec)
    return metrics[0] if metrics else "loss"


def scores(spec: JobSpec, module: Any, test: Dataset) -> dict[str, float]:
    """The job's held-out evaluation of ``module``: loss and every metric of the job."""
    result = evaluate(
        module, test, cfg=spec.train, classes=spec.data.classes, metrics=job_metrics(spec)
    )
    out = {"loss": result.loss, **result.metrics}
    if "accuracy" not in out and not math.isnan(result.accuracy):
        out["accuracy"] = result.accuracy
    return out


def train_alone(spec: JobSpec, train: Dataset, test: Dataset, seed: int) -> dict[str, float]:
    """Train the job's model on ``train`` for the job's rounds, as one member would; its scores."""
    module = build_model(spec.model, spec.data, seed=spec.job.seed, task=spec.train.task)
    rounds = spec.job.rounds
    for number in range(1, rounds + 1):
        train_local(module, train, spec.train, seed=[seed, number], round=number, rounds=rounds)
    return scores(spec, module, test)


def training_part(spec: JobSpec, part: Any) -> Any:
    """What a member trains on: its data less the validation split it keeps aside, if any."""
    split = spec.evaluation.validation_split
    return part.split(split, spec.job.seed)[0] if split > 0 else part


def local_only(spec: JobSpec, parts: list[Dataset], test: Dataset) -> dict[str, Any]:
    """Each member trains alone; per metric the mean, min, max and each member's value.

    The headline metric's ``mean``, ``min``, ``max`` and ``per_member`` are
    also at the top level (what the plot's band shows).
    """
    each = [
        train_alone(spec, training_part(spec, part), test, seed=i) for i, part in enumerate(parts)
    ]
    metrics = {
        name: {
            "mean": float(np.mean([s[name] for s in each])),
            "min": float(np.min([s[name] for s in each])),
            "max": float(np.max([s[name] for s in each])),
            "per_member": [s[name] for s in each],
        }
        for name in each[0]
    }
    return {"metric": headline(spec), **metrics[headline(spec)], "metrics": metrics}


def pooled(parts: list[Dataset]) -> ArrayDataset:
    """All members' examples in one dataset (read batch by batch from each)."""
    xs, ys = [], []
    for part in parts:
        for x, y in part.batches(4096):
            xs.append(x)
            ys.append(y)
    return ArrayDataset(np.concatenate(xs), np.concatenate(ys))


def centralized(spec: JobSpec, parts: list[Dataset], test: Dataset) -> dict[str, float]:
    """One model trained on all members' training data pooled; its scores by metric name."""
    return train_alone(spec, pooled([training_part(spec, p) for p in parts]), test, seed=0)
