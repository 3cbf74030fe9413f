"""Local training (FedAvg, FedProx) and evaluation loops, shared by members and the coordinator."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from fedaas.data.dataset import Dataset
from fedaas.spec import TrainSection
from fedaas.train.optim import make_optimizer


@dataclass(frozen=True)
class EvalResult:
    loss: float
    accuracy: float
    examples: int


def _plain_sgd(cfg: TrainSection) -> bool:
    """Plain SGD (no momentum) is stepped directly as ``p -= lr * g``.

    On the small models of cross-silo jobs ``torch.optim``'s per-step
    bookkeeping (profiler hooks, ``zero_grad``) costs a fifth of a step.
    """
    return cfg.optimizer == "sgd" and cfg.momentum == 0


def train_local(
    module: nn.Module,
    data: Dataset,
    cfg: TrainSection,
    seed: int | Sequence[int],
    epochs: int | None = None,
) -> dict[str, float]:
    """Train in place for ``cfg.epochs`` epochs of shuffled mini-batch SGD/Adam.

    With ``cfg.mu > 0`` this is FedProx local training (Li et al., MLSys 2020,
    arXiv:1812.06127): every step adds ``mu * (w - w_start)`` to the gradient,
    pulling the local model towards the global one it started from.
    Returns the mean training loss and accuracy over the last epoch.
    """
    module.train()
    optimizer = None if _plain_sgd(cfg) else make_optimizer(module, cfg)
    params = [p for p in module.parameters() if p.requires_grad]
    loss_fn = nn.CrossEntropyLoss()
    anchor = [p.detach().clone() for p in params] if cfg.mu > 0 else None
    rng = np.random.default_rng(seed)
    loss_sum, correct, seen = torch.zeros(()), torch.zeros((), dtype=torch.long), 0
    for _ in range(epochs if epochs is not None else cfg.epochs):
        loss_sum, correct, seen = torch.zeros(()), torch.zeros((), dtype=torch.long), 0
        for x_np, y_np in data.batches(cfg.batch_size, rng):
            xb, yb = torch.from_numpy(x_np), torch.from_numpy(y_np)
            logits = module(xb)
            loss = loss_fn(logits, yb)
            grads = torch.autograd.grad(loss, params, allow_unused=True)
            with torch.no_grad():
                for i, (p, g) in enumerate(zip(params, grads, strict=True)):
                    if g is None:  # not used by the forward pass: left as it is
                        continue
                    if anchor is not None:
                        g.add_(p - anchor[i], alpha=cfg.mu)
                    if optimizer is None:
                        p.add_(g, alpha=-cfg.lr)
                    else:
                        p.grad = g
                if optimizer is not None:
                    optimizer.step()
                # accumulate as tensors: no per-step Python round trips
                loss_sum += loss.detach() * len(yb)
                correct += (logits.argmax(1) == yb).sum()
            seen += len(yb)
    n = max(seen, 1)
    return {"train_loss": float(loss_sum) / n, "train_accuracy": int(correct) / n}


@torch.no_grad()
def evaluate(module: nn.Module, data: Dataset, batch_size: int = 4096) -> EvalResult:
    """Mean cross-entropy loss and accuracy of ``module`` on ``data``."""
    module.eval()
    loss_fn = nn.CrossEntropyLoss(reduction="sum")
    loss_sum, correct = 0.0, 0
    for xb, yb in data.batches(batch_size):
        logits = module(torch.from_numpy(xb))
        target = torch.from_numpy(yb)
        loss_sum += float(loss_fn(logits, target))
        correct += int((logits.argmax(1) == target).sum())
    n = max(data.num_examples, 1)
    return EvalResult(loss=loss_sum / n, accuracy=correct / n, examples=data.num_examples)
