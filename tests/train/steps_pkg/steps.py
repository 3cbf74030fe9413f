"""A custom ``train_step``/``eval_step`` pair, as a user would write them (here: L1 regression loss).

fedaas imports this module only where the operator allowed ``steps_pkg``
(``fedaas client --allow-code steps_pkg``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def train_step(
    model: nn.Module, loader: Any, device: torch.device, options: dict[str, Any]
) -> dict[str, float]:
    """Epochs of SGD on the mean absolute error of the first output against the label."""
    optimizer = torch.optim.SGD(model.parameters(), lr=options["lr"])
    total, seen = 0.0, 0
    for _ in range(options["epochs"]):
        total, seen = 0.0, 0
        for x, y in loader:
            optimizer.zero_grad()
            loss = (model(x)[:, 0] - y.float() * options["scale"]).abs().mean()
            loss.backward()
            optimizer.step()
            total += loss.item() * len(y)
            seen += len(y)
    return {"l1": total / max(seen, 1), "batches": float(len(loader)), "round": options["round"]}


def eval_step(
    model: nn.Module, loader: Any, device: torch.device, options: dict[str, Any]
) -> dict[str, float]:
    """The mean absolute error on the member's validation split."""
    total, seen = 0.0, 0
    for x, y in loader:
        total += float((model(x)[:, 0] - y.float() * options["scale"]).abs().sum())
        seen += len(y)
    return {"val_l1": total / max(seen, 1), "grad_enabled": float(torch.is_grad_enabled())}


def not_metrics(
    model: nn.Module, loader: Any, device: torch.device, options: dict[str, Any]
) -> dict[str, float]:
    return {"bad": float("nan")}
