"""Reference points for a federation: each member alone, and all data pooled."""

from __future__ import annotations

import numpy as np

from fedaas.data.dataset import ArrayDataset
from fedaas.models import build_model
from fedaas.spec import JobSpec
from fedaas.train import evaluate, train_local


def _train_and_test(spec: JobSpec, train: ArrayDataset, test: ArrayDataset, seed: int) -> float:
    module = build_model(spec.model, spec.data, seed=spec.job.seed)
    train_local(module, train, spec.train, seed=seed, epochs=spec.job.rounds * spec.train.epochs)
    return evaluate(module, test).accuracy


def local_only(
    spec: JobSpec, parts: list[ArrayDataset], test: ArrayDataset
) -> dict[str, float | list[float]]:
    """Each member trains alone for rounds x epochs epochs with the job's settings."""
    scores = [_train_and_test(spec, part, test, seed=i) for i, part in enumerate(parts)]
    return {
        "mean": float(np.mean(scores)),
        "min": float(np.min(scores)),
        "max": float(np.max(scores)),
        "per_member": scores,
    }


def centralized(spec: JobSpec, parts: list[ArrayDataset], test: ArrayDataset) -> dict[str, float]:
    """One model trained on all members' training data pooled."""
    pooled = ArrayDataset(
        np.concatenate([p.x for p in parts]), np.concatenate([p.y for p in parts])
    )
    return {"accuracy": _train_and_test(spec, pooled, test, seed=0)}
