"""The local optimizer of a job's ``[train]`` section, shared by plain and DP-SGD training.

One factory so that a member's FedAvg/FedProx loop (:mod:`fedaas.train.local`)
and its DP-SGD loop (:mod:`fedaas.train.dp_sgd`, which wraps the optimizer in
Opacus's ``DPOptimizer``) step the same optimizer with the same settings.
"""

from __future__ import annotations

import torch
from torch import nn

from fedaas.spec import TrainSection


def make_optimizer(module: nn.Module, cfg: TrainSection) -> torch.optim.Optimizer:
    """``torch.optim`` optimizer over ``module``'s parameters: SGD (with momentum) or Adam."""
    if cfg.optimizer == "adam":
        return torch.optim.Adam(module.parameters(), lr=cfg.lr)
    return torch.optim.SGD(module.parameters(), lr=cfg.lr, momentum=cfg.momentum, foreach=True)
