"""The loss of each task, and how a model's output meets its labels.

- ``classification``: the model outputs one logit per class; cross-entropy
  with optional ``class_weights``; labels are class indices (int64).
- ``binary``: the model outputs ONE logit (``[data] classes = 2``, labels 0
  and 1); ``BCEWithLogitsLoss`` with optional ``pos_weight``.
- ``regression``: the model outputs one value; MSE or Huber; labels are real.

:func:`task_loss` returns a loss with ``reduction="sum"`` or ``"mean"``;
:func:`prepare` turns a model output and its labels into the shapes and
dtypes the loss wants (the one place that knows them).
"""

from __future__ import annotations

import torch
from torch import nn

from fedaas.spec_train import TrainSection


def task_loss(cfg: TrainSection, device: torch.device, reduction: str = "mean") -> nn.Module:
    """The loss module of ``cfg.task`` (weights on ``device``)."""
    if cfg.task == "binary":
        pos = None if cfg.pos_weight is None else torch.tensor([cfg.pos_weight], device=device)
        return nn.BCEWithLogitsLoss(pos_weight=pos, reduction=reduction)
    if cfg.task == "regression":
        if cfg.loss == "huber":
            return nn.HuberLoss(delta=cfg.huber_delta, reduction=reduction)
        return nn.MSELoss(reduction=reduction)
    weight = None
    if cfg.class_weights is not None:
        weight = torch.tensor(cfg.class_weights, dtype=torch.float32, device=device)
    if weight is not None and reduction == "sum":
        # the weighted mean divides by the summed weights: a sum keeps them as weights
        return nn.CrossEntropyLoss(weight=weight, reduction="sum")
    return nn.CrossEntropyLoss(weight=weight, reduction=reduction)


def prepare(
    task: str, output: torch.Tensor, target: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(output, target)`` as the task's loss takes them (float32 outputs for the loss)."""
    output = output.float()
    if task == "classification":
        return output, target.long()
    if output.ndim == 2 and output.shape[1] == 1:
        output = output[:, 0]
    elif output.ndim != 1:
        raise ValueError(
            f"task '{task}' needs a model with one output, got outputs of shape "
            f"{tuple(output.shape)}"
        )
    return output, target.float()


def correct(task: str, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor | None:
    """How many predictions are right (a 0-d tensor); ``None`` for a regression."""
    if task == "classification":
        return (output.argmax(1) == target).sum()
    if task == "binary":
        return ((output > 0).long() == target.long()).sum()
    return None
