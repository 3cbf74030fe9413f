"""The local optimizer of a job's ``[train]`` section, shared by plain and DP-SGD training.

One factory so that a member's FedAvg/FedProx loop (:mod:`fedaas.train.local`)
and its DP-SGD loop (:mod:`fedaas.train.dp_sgd`, which wraps the optimizer in
Opacus's ``DPOptimizer``) step the same optimizer with the same settings.
"""

from __future__ import annotations

import torch
from torch import nn

from fedaas.spec_train import TrainSection


def make_optimizer(
    module: nn.Module, cfg: TrainSection, lr: float | None = None
) -> torch.optim.Optimizer:
    """``torch.optim`` optimizer over ``module``'s parameters: SGD (with momentum) or Adam.

    ``lr``: this round's rate (:func:`fedaas.train.schedule.round_lr`), default ``cfg.lr``;
    ``cfg.weight_decay`` is the optimizer's L2 decay.
    """
    rate = cfg.lr if lr is None else lr
    if cfg.optimizer == "adam":
        return torch.optim.Adam(module.parameters(), lr=rate, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(
        module.parameters(),
        lr=rate,
        momentum=cfg.momentum,
        weight_decay=cfg.weight_decay,
        foreach=True,
    )
