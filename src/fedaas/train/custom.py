"""A job's own training and evaluation step: user code, run only where its operator allowed it.

``[train] train_step = "mypkg.steps:train_step"`` (and ``eval_step``) names
a function that does what the built-in tasks do not (segmentation,
multi-label, contrastive losses...). Its signature:

.. code-block:: python

    def train_step(model: torch.nn.Module, loader: BatchLoader,
                   device: torch.device, options: dict) -> dict[str, float]:
        ...  # train `model` in place for this round; return its metrics

- called once per round (``eval_step``: once per federated evaluation, on the
  member's validation split, under ``torch.no_grad``); fedaas then sends
  ``local - global`` as for its own loop;
- ``loader``: iterate it for one pass over the member's data, in batches of
  ``[train] batch_size`` (shuffled anew each pass for training), as ``(x, y)``
  tensors already on ``device``; ``len(loader)`` batches; ``num_examples``;
- ``options``: the job's ``[train.options]`` table plus ``lr`` (this round's
  rate from the schedule), ``epochs``, ``batch_size``, ``round``, ``rounds``,
  ``weight_decay``;
- returns at most :data:`MAX_STEP_METRICS` finite numbers, published as
  ``members.<key>``.

The function is imported by :func:`fedaas.models.registry.load_code`: only
when the member's operator allowed its package (``fedaas client
--allow-code mypkg``), matched on the module name from the spec, never a path.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np
import torch
from torch import nn

from fedaas.data.dataset import Dataset
from fedaas.models.registry import ModelError, load_code
from fedaas.protocol import METRIC_NAME
from fedaas.spec_train import TrainSection
from fedaas.train.device import to_device

MAX_STEP_METRICS = 16
Step = Callable[[nn.Module, "BatchLoader", torch.device, dict[str, Any]], dict[str, float]]


class StepError(ValueError):
    """User code that cannot run here, or that returned something other than metrics."""


class BatchLoader:
    """One pass over a member's data per iteration, as ``(x, y)`` tensors on ``device``."""

    def __init__(
        self,
        data: Dataset,
        batch_size: int,
        device: torch.device,
        rng: np.random.Generator | None = None,
    ) -> None:
        self.data, self.batch_size, self.device, self.rng = data, batch_size, device, rng

    @property
    def num_examples(self) -> int:
        return self.data.num_examples

    def __len__(self) -> int:
        return math.ceil(self.data.num_examples / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for x, y in self.data.batches(self.batch_size, self.rng):
            yield to_device(x, self.device), to_device(y, self.device)


def load_step(name: str, allowed_code: Iterable[str], what: str) -> Step:
    """The user's step function, if this node's operator allowed its package."""
    try:
        return load_code(name, allowed_code, what)
    except ModelError as exc:
        raise StepError(str(exc)) from None


def step_options(cfg: TrainSection, round: int, rounds: int, lr: float) -> dict[str, Any]:
    """What a step receives as ``options``: ``[train.options]`` and the reserved keys."""
    return {
        **cfg.options,
        "lr": lr,
        "epochs": cfg.epochs,
        "batch_size": cfg.batch_size,
        "round": round,
        "rounds": rounds,
        "weight_decay": cfg.weight_decay,
    }


def run_step(
    step: Step,
    name: str,
    module: nn.Module,
    loader: BatchLoader,
    options: dict[str, Any],
) -> dict[str, float]:
    """Call ``step`` and check what it returned (:class:`StepError` with the reason)."""
    try:
        result = step(module, loader, loader.device, dict(options))
    except Exception as exc:
        raise StepError(f"{name} failed: {type(exc).__name__}: {exc}") from exc
    if not isinstance(result, dict):
        raise StepError(f"{name} returned {type(result).__name__}, not a dict of metrics")
    if len(result) > MAX_STEP_METRICS:
        raise StepError(f"{name} returned {len(result)} metrics; at most {MAX_STEP_METRICS}")
    metrics: dict[str, float] = {}
    for key, value in result.items():
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            value = value.item()
        if not (isinstance(key, str) and METRIC_NAME.fullmatch(key)):
            raise StepError(f"{name} returned a metric named {key!r}: use a short name")
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
        ):
            raise StepError(f"{name} returned {key} = {value!r}: metrics are finite numbers")
        metrics[key] = float(value)
    return metrics
