"""Federated metrics: the sum of the members' states gives the pooled data's metric.

AUROC and F1 averaged over members are not the pooled values; the states
(binned confusion, tp/fp/tn/fn, error sums) summed across members are, up to
the AUROC's binning. Checked against scikit-learn on the pooled data.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import numpy as np
import pytest
import torch
from sklearn import metrics as sk

from fedaas.train.metrics import (
    AUROC_THRESHOLDS,
    MetricStates,
    check_states,
    compute_metrics,
    merge_states,
)

CPU = torch.device("cpu")
T = TypeVar("T")
BINARY = ("accuracy", "balanced_accuracy", "f1", "auroc", "sensitivity", "specificity")


def _states(task: str, classes: int | None, names: tuple[str, ...], out, y) -> dict:
    states = MetricStates(task, classes, names, CPU)
    for part in np.array_split(np.arange(len(y)), 3):  # several batches
        o, t = torch.as_tensor(out[part]), torch.as_tensor(y[part])
        states.update(o, t, torch.zeros(()))
    return states.states()


def _hospitals(seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """Three members with very different prevalence and score calibration."""
    rng = np.random.default_rng(seed)
    parts = []
    for n, prevalence, shift in ((400, 0.1, 1.5), (250, 0.5, 0.0), (150, 0.85, -1.5)):
        y = (rng.random(n) < prevalence).astype(np.int64)
        logit = 1.2 * (2 * y - 1) + shift + rng.normal(size=n)
        parts.append((logit.astype(np.float32), y))
    return parts


def test_federated_auroc_and_f1_equal_the_pooled_values() -> None:
    parts = _hospitals()
    merged = merge_states([(1.0, _states("binary", 2, BINARY, o, y)) for o, y in parts])
    federated = compute_metrics(merged, "binary", 2, BINARY)
    logit = np.concatenate([o for o, _ in parts])
    y = np.concatenate([t for _, t in parts])
    prob, pred = 1 / (1 + np.exp(-logit)), (logit > 0).astype(int)
    pooled_auroc = sk.roc_auc_score(y, prob)
    assert federated["auroc"] == pytest.approx(pooled_auroc, abs=2.0 / AUROC_THRESHOLDS)
    assert federated["f1"] == pytest.approx(sk.f1_score(y, pred), abs=1e-6)
    assert federated["accuracy"] == pytest.approx(sk.accuracy_score(y, pred), abs=1e-6)
    assert federated["sensitivity"] == pytest.approx(sk.recall_score(y, pred), abs=1e-6)
    assert federated["specificity"] == pytest.approx(sk.recall_score(1 - y, 1 - pred), abs=1e-6)
    assert federated["balanced_accuracy"] == pytest.approx(
        sk.balanced_accuracy_score(y, pred), abs=1e-6
    )
    # the merged state IS the pooled data's state: the same binned AUROC, to the last bit
    pooled = compute_metrics(_states("binary", 2, BINARY, logit, y), "binary", 2, BINARY)
    assert federated == pytest.approx(pooled, abs=1e-12)
    # and the average of the members' own values is measurably wrong: what fedaas must not do
    own = [
        compute_metrics(_states("binary", 2, BINARY, o, t), "binary", 2, BINARY) for o, t in parts
    ]
    assert abs(np.mean([m["auroc"] for m in own]) - pooled_auroc) > 0.02
    assert abs(np.mean([m["f1"] for m in own]) - sk.f1_score(y, pred)) > 0.02


def test_multiclass_macro_metrics_equal_the_pooled_values() -> None:
    rng = np.random.default_rng(1)
    names = ("accuracy", "balanced_accuracy", "f1", "sensitivity", "specificity")
    logits = rng.normal(size=(900, 5)).astype(np.float32)
    y = rng.integers(0, 5, 900)
    logits[np.arange(900), y] += rng.random(900).astype(np.float32) * 2
    cuts = [0, 100, 500, 900]
    members = [(logits[a:b], y[a:b]) for a, b in zip(cuts, cuts[1:], strict=False)]
    merged = merge_states([(1.0, _states("classification", 5, names, o, t)) for o, t in members])
    got = compute_metrics(merged, "classification", 5, names)
    pred = logits.argmax(1)
    assert got["accuracy"] == pytest.approx(sk.accuracy_score(y, pred))
    assert got["f1"] == pytest.approx(sk.f1_score(y, pred, average="macro"))
    assert got["balanced_accuracy"] == pytest.approx(sk.balanced_accuracy_score(y, pred))
    assert got["sensitivity"] == pytest.approx(sk.recall_score(y, pred, average="macro"))


def test_regression_metrics_equal_the_pooled_values() -> None:
    rng = np.random.default_rng(2)
    names = ("mae", "rmse", "r2")
    y = rng.normal(3.0, 2.0, 600).astype(np.float32)
    out = (y + rng.normal(0, 0.7, 600)).astype(np.float32)
    members = [(out[a:b], y[a:b]) for a, b in ((0, 50), (50, 400), (400, 600))]
    merged = merge_states([(1.0, _states("regression", None, names, o, t)) for o, t in members])
    got = compute_metrics(merged, "regression", None, names)
    assert got["mae"] == pytest.approx(sk.mean_absolute_error(y, out), rel=1e-6)
    assert got["rmse"] == pytest.approx(np.sqrt(sk.mean_squared_error(y, out)), rel=1e-6)
    assert got["r2"] == pytest.approx(sk.r2_score(y, out), rel=1e-6)


def test_weights_below_one_count_a_member_fractionally() -> None:
    o, y = _hospitals()[1]
    states = _states("binary", 2, BINARY, o, y)
    half = merge_states([(0.5, states)])
    assert compute_metrics(half, "binary", 2, BINARY) == pytest.approx(
        compute_metrics(states, "binary", 2, BINARY)
    )
    assert half["stats"] == [v / 2 for v in states["stats"]]


def test_states_that_cannot_describe_the_report_are_refused() -> None:
    o, y = _hospitals()[0]
    good = _states("binary", 2, BINARY, o, y)
    n = len(y)
    assert check_states(good, "binary", 2, BINARY, n) == []
    assert "must be" in check_states({"loss": [0.0, n]}, "binary", 2, BINARY, n)[0]
    inflated = {**good, "stats": [v * 1000 for v in good["stats"]]}
    assert any("whole numbers in 0.." in p for p in check_states(inflated, "binary", 2, BINARY, n))
    skewed = {**good, "auroc": [*good["auroc"][:-1], good["auroc"][-1] + 1]}
    assert any("count the" in p for p in check_states(skewed, "binary", 2, BINARY, n))
    assert any("examples" in p for p in check_states(good, "binary", 2, BINARY, n + 1))
    short = {**good, "auroc": good["auroc"][:10]}
    assert any("must hold 800" in p for p in check_states(short, "binary", 2, BINARY, n))


def _in_a_new_thread(work: Callable[[], T]) -> T:
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(work).result()


def test_an_evaluation_right_after_another_gives_what_it_gives_in_a_fresh_thread() -> None:
    """A thread builds its torchmetrics objects once and resets them for each use (the
    coordinator evaluates every round): nothing of one evaluation, states or computed
    values, carries into the next."""
    parts = _hospitals(3)
    rng = np.random.default_rng(4)
    y = rng.normal(size=200).astype(np.float32)
    cases = [("binary", 2, BINARY, o, t) for o, t in parts] + [
        (
            "regression",
            None,
            ("mae", "rmse", "r2"),
            (y + rng.normal(0, s, 200)).astype(np.float32),
            y,
        )
        for s in (0.3, 1.0)
    ]

    def evaluate(task: str, classes: int | None, names: tuple[str, ...], out, target) -> dict:
        return compute_metrics(_states(task, classes, names, out, target), task, classes, names)

    in_turn = _in_a_new_thread(lambda: [evaluate(*case) for case in cases])
    alone = [_in_a_new_thread(lambda c=case: evaluate(*c)) for case in cases]
    assert in_turn == alone
    assert in_turn[0] != in_turn[1] and in_turn[-2] != in_turn[-1]  # the cases do differ
