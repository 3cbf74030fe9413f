"""Evaluation metrics that are right when federated: members send states, the coordinator sums.

An AUROC, F1 or R² averaged over members is not the metric of the pooled
data (a member with only negatives has no AUROC at all). Every metric here
is a function of a SUM over examples (a "state", as in torchmetrics, whose
states all reduce by ``sum`` across processes): confusion counts
(``tp, fp, tn, fn`` per class, from :class:`MulticlassStatScores` /
:class:`BinaryStatScores`), a binned confusion matrix at fixed thresholds
for AUROC (:class:`BinaryAUROC` with ``thresholds=``; Davis & Goadrich
2006 on curves from confusion counts), and error sums for regression.
Members compute states on their validation split (:class:`MetricStates`),
send them as numbers, the coordinator checks (:func:`check_states`), sums
(:func:`merge_states`) and computes (:func:`compute_metrics`): the result
equals the metric on the pooled data, up to the AUROC's binning (the
trapezoid over :data:`AUROC_THRESHOLDS` evenly spaced thresholds). The
coordinator's held-out evaluation runs the same code on its own data.

State layout (``dict[str, list[float]]``): ``loss``: ``[sum, examples]``;
``stats``: tp, fp, tn, fn (one per class; binary: one each, at threshold
0.5 on the sigmoid); ``auroc``: the ``(thresholds, 2, 2)`` confusion
matrices; ``regression``: ``[n, sum(e), sum(e^2), sum(|e|), sum(y), sum(y^2)]``
with ``e = prediction - target``.

``torchmetrics`` is imported by the first evaluation, not with this module:
it loads SciPy's signal processing (about 1.5 s), which a member agent that
only trains never needs.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from torchmetrics import Metric

AUROC_THRESHOLDS = 200
"""Evenly spaced thresholds of the binned AUROC: its error against the exact value is O(1/200)."""
States = dict[str, list[float]]

_built = threading.local()


def _reused(key: tuple[object, ...], make: Callable[[], Metric]) -> Metric:
    """The metric ``make()`` builds, built once per thread and ``key`` and reset for each use.

    Building a torchmetrics object (its argument checks, its registered states)
    costs more than evaluating a small model on a small held-out set, and the
    coordinator evaluates every round. One evaluation at a time per thread
    uses a given object: :func:`evaluate <fedaas.train.local.evaluate>` reads
    its states out before it returns.
    """
    cache: dict[tuple[object, ...], Metric] = _built.__dict__.setdefault("metrics", {})
    metric = cache.get(key)
    if metric is None:
        metric = cache[key] = make()
    else:
        metric.reset()
    return metric


def _stats_metric(task: str, classes: int | None, device: torch.device) -> Metric:
    from torchmetrics.classification import BinaryStatScores, MulticlassStatScores

    if task == "binary":
        return _reused(("stats", task, device), lambda: BinaryStatScores().to(device))
    width = int(classes or 2)
    return _reused(
        ("stats", width, device),
        lambda: MulticlassStatScores(num_classes=width, average=None).to(device),
    )


def _needs(names: tuple[str, ...], task: str) -> set[str]:
    kinds = {"loss"}
    if task == "regression":
        return kinds | ({"regression"} if names else set())
    kinds.add("stats")  # accuracy is always reported for a classification
    if "auroc" in names:
        kinds.add("auroc")
    return kinds


class MetricStates:
    """Accumulates one evaluation's states, batch by batch, on the batches' device."""

    def __init__(
        self, task: str, classes: int | None, names: tuple[str, ...], device: torch.device
    ) -> None:
        self.task, self.names, self.classes = task, names, classes
        kinds = _needs(names, task)
        self.loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        self.count = 0
        self.stats = _stats_metric(task, classes, device) if "stats" in kinds else None
        self.auroc = _auroc(device) if "auroc" in kinds else None
        self.regression = (
            torch.zeros(6, dtype=torch.float64, device=device) if "regression" in kinds else None
        )

    @torch.no_grad()
    def update(self, output: torch.Tensor, target: torch.Tensor, loss_sum: torch.Tensor) -> None:
        """Add a batch: the prepared output (:func:`fedaas.train.losses.prepare`) and labels."""
        self.loss_sum += loss_sum.detach().double()
        self.count += int(target.shape[0])
        if self.task == "binary":
            probs = torch.sigmoid(output.float())
            if self.stats is not None:
                self.stats.update(probs, target.long())
            if self.auroc is not None:
                self.auroc.update(probs, target.long())
        elif self.task == "classification" and self.stats is not None:
            self.stats.update(output.argmax(1), target.long())
        elif self.regression is not None:
            e, y = output.double() - target.double(), target.double()
            self.regression += torch.stack(
                [
                    torch.tensor(float(len(y)), dtype=torch.float64, device=y.device),
                    e.sum(),
                    (e * e).sum(),
                    e.abs().sum(),
                    y.sum(),
                    (y * y).sum(),
                ]
            )

    def states(self) -> States:
        """The states as plain numbers (for a report or :func:`compute_metrics`)."""
        out: States = {"loss": [float(self.loss_sum), float(self.count)]}
        if self.stats is not None:
            out["stats"] = [
                float(v) for k in ("tp", "fp", "tn", "fn") for v in getattr(self.stats, k).flatten()
            ]
        if self.auroc is not None:
            out["auroc"] = [float(v) for v in self.auroc.confmat.flatten()]
        if self.regression is not None:
            out["regression"] = [float(v) for v in self.regression]
        return out


def state_sizes(task: str, classes: int | None, names: tuple[str, ...]) -> dict[str, int]:
    """How many numbers each state of the job has (what a report must hold, exactly)."""
    kinds = _needs(names, task)
    width = 1 if task == "binary" else int(classes or 0)
    sizes = {"loss": 2}
    if "stats" in kinds:
        sizes["stats"] = 4 * width
    if "auroc" in kinds:
        sizes["auroc"] = 4 * AUROC_THRESHOLDS
    if "regression" in kinds:
        sizes["regression"] = 6
    return sizes


def check_states(
    states: States, task: str, classes: int | None, names: tuple[str, ...], examples: int
) -> list[str]:
    """Every way a member's reported states cannot be the states of ``examples`` examples."""
    sizes = state_sizes(task, classes, names)
    if set(states) != set(sizes):
        return [f"metric states must be {sorted(sizes)}, got {sorted(states)}"]
    found: list[str] = []
    for key, size in sizes.items():
        values = states[key]
        if len(values) != size:
            found.append(f"metric state {key!r} must hold {size} numbers, got {len(values)}")
        elif not all(math.isfinite(v) for v in values):
            found.append(f"metric state {key!r} holds NaN or Inf")
    if found:
        return found
    if states["loss"][1] != examples or states["loss"][0] < 0:
        found.append(f"the loss state counts {states['loss'][1]:g} examples, the report {examples}")
    counts = [*states.get("stats", []), *states.get("auroc", [])]
    if any(v < 0 or v > examples or v != round(v) for v in counts):
        found.append(f"confusion counts must be whole numbers in 0..{examples}")
    if "auroc" in states and any(
        sum(states["auroc"][4 * i : 4 * i + 4]) != examples for i in range(AUROC_THRESHOLDS)
    ):
        found.append(f"every binned confusion matrix must count the {examples} examples")
    if "regression" in states:
        n, _, sq, ab, _, y2 = states["regression"]
        if n != examples or sq < 0 or ab < 0 or y2 < 0:
            found.append("the regression sums do not describe the reported examples")
    return found


def merge_states(parts: list[tuple[float, States]]) -> States:
    """The weighted sum ``sum_i w_i * states_i`` of members' states (same keys and sizes).

    A weight of 1 is the plain sum (the pooled data's state); a weight below 1
    counts a member's examples fractionally (the coordinator's example cap).
    """
    if not parts:
        raise ValueError("no states to merge")
    merged: States = {k: [0.0] * len(v) for k, v in parts[0][1].items()}
    for weight, states in parts:
        for key, values in states.items():
            total = merged[key]
            for i, v in enumerate(values):
                total[i] += weight * v
    return merged


def _auroc(device: torch.device | None = None) -> Metric:
    from torchmetrics.classification import BinaryAUROC

    cpu = torch.device("cpu")
    return _reused(
        ("auroc", device or cpu),
        lambda: BinaryAUROC(thresholds=AUROC_THRESHOLDS).to(device or cpu),
    )


def _load(metric: Metric, values: dict[str, torch.Tensor]) -> Metric:
    for key, value in values.items():
        setattr(metric, key, value)
    metric._update_count = 1  # computed from loaded states, not from update()
    return metric


def _classification(states: States, task: str, classes: int | None, name: str) -> float:
    from torchmetrics.classification import (
        BinaryAccuracy,
        BinaryF1Score,
        BinaryRecall,
        BinarySpecificity,
        MulticlassAccuracy,
        MulticlassF1Score,
        MulticlassRecall,
        MulticlassSpecificity,
    )

    width = 1 if task == "binary" else int(classes or 2)
    flat = torch.tensor(states["stats"], dtype=torch.float64).view(4, width)
    tp, fp, tn, fn = (flat[i] for i in range(4))
    if task == "binary":
        if name == "balanced_accuracy":
            sens = tp / (tp + fn) if float(tp + fn) else torch.zeros(1)
            spec = tn / (tn + fp) if float(tn + fp) else torch.zeros(1)
            return float((sens + spec) / 2)
        cls = {
            "accuracy": BinaryAccuracy,
            "f1": BinaryF1Score,
            "sensitivity": BinaryRecall,
            "specificity": BinarySpecificity,
        }[name]
        metric: Metric = _reused((name, task), cls)
    else:
        make = {
            "accuracy": lambda: MulticlassAccuracy(num_classes=width, average="micro"),
            "balanced_accuracy": lambda: MulticlassRecall(num_classes=width, average="macro"),
            "f1": lambda: MulticlassF1Score(num_classes=width, average="macro"),
            "sensitivity": lambda: MulticlassRecall(num_classes=width, average="macro"),
            "specificity": lambda: MulticlassSpecificity(num_classes=width, average="macro"),
        }
        metric = _reused((name, width), make[name])
    return float(_load(metric, {"tp": tp, "fp": fp, "tn": tn, "fn": fn}).compute())


def _regression(states: States, name: str) -> float:
    from torchmetrics.regression import MeanAbsoluteError, MeanSquaredError, R2Score

    n, _, sq, ab, sy, sy2 = (torch.tensor(v, dtype=torch.float64) for v in states["regression"])
    if float(n) <= 0:
        return math.nan
    if name == "mae":
        metric: Metric = _load(
            _reused(("mae",), MeanAbsoluteError), {"sum_abs_error": ab, "total": n}
        )
    elif name == "rmse":
        rmse = _reused(("rmse",), lambda: MeanSquaredError(squared=False))
        metric = _load(rmse, {"sum_squared_error": sq, "total": n})
    else:
        if float(sy2 - sy * sy / n) <= 0:  # constant targets: R² is undefined
            return math.nan
        metric = _load(
            _reused(("r2",), R2Score),
            {"sum_squared_error": sy2, "sum_error": sy, "residual": sq, "total": n},
        )
    return float(metric.compute())


def compute_metrics(
    states: States, task: str, classes: int | None, names: tuple[str, ...]
) -> dict[str, float]:
    """``loss`` and each metric in ``names`` from (summed) states."""
    loss_sum, count = states["loss"]
    out = {"loss": loss_sum / count if count > 0 else math.nan}
    for name in names:
        if name == "auroc":
            confmat = torch.tensor(states["auroc"], dtype=torch.float64).view(
                AUROC_THRESHOLDS, 2, 2
            )
            metric = _load(_auroc(), {"confmat": confmat})
            out[name] = float(metric.compute())
        elif task == "regression":
            out[name] = _regression(states, name)
        else:
            out[name] = _classification(states, task, classes, name)
    return out
