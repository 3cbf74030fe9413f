"""Local training: the fast plain-SGD path computes what torch.optim computes."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from fedaas.data.dataset import ArrayDataset
from fedaas.spec import TrainSection
from fedaas.train import train_local


def data(n: int = 70, features: int = 8, classes: int = 3) -> ArrayDataset:
    rng = np.random.default_rng(5)
    x = rng.normal(size=(n, features)).astype(np.float32)
    return ArrayDataset(x, rng.integers(0, classes, size=n).astype(np.int64))


def model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))


def reference(module: nn.Module, ds: ArrayDataset, cfg: TrainSection, seed: int) -> None:
    """The textbook loop: torch.optim, with FedProx as an explicit proximal term in the loss."""
    opt: torch.optim.Optimizer
    if cfg.optimizer == "adam":
        opt = torch.optim.Adam(module.parameters(), lr=cfg.lr)
    else:
        opt = torch.optim.SGD(module.parameters(), lr=cfg.lr, momentum=cfg.momentum)
    start = [p.detach().clone() for p in module.parameters()]
    rng = np.random.default_rng(seed)
    for _ in range(cfg.epochs):
        for xb, yb in ds.batches(cfg.batch_size, rng):
            opt.zero_grad()
            loss = nn.functional.cross_entropy(module(torch.from_numpy(xb)), torch.from_numpy(yb))
            prox = sum(
                ((p - p0) ** 2).sum() for p, p0 in zip(module.parameters(), start, strict=True)
            )
            (loss + cfg.mu / 2 * prox).backward()
            opt.step()


@pytest.mark.parametrize(
    "cfg",
    [
        TrainSection(lr=0.1, batch_size=16, epochs=2),
        TrainSection(lr=0.1, batch_size=16, epochs=2, mu=0.5),
        TrainSection(lr=0.1, batch_size=16, epochs=2, momentum=0.9),
        TrainSection(optimizer="adam", lr=0.01, batch_size=16, epochs=2, mu=0.1),
    ],
    ids=["sgd", "fedprox", "momentum", "adam-fedprox"],
)
def test_train_local_matches_the_textbook_loop(cfg: TrainSection) -> None:
    ours, theirs = model(), model()
    ds = data()
    metrics = train_local(ours, ds, cfg, seed=3)
    reference(theirs, ds, cfg, seed=3)
    for a, b in zip(ours.parameters(), theirs.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert 0 <= metrics["train_accuracy"] <= 1 and metrics["train_loss"] > 0


class WithSpare(nn.Module):
    """A user's model with a parameter its forward pass never uses."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(8, 3)
        self.spare = nn.Parameter(torch.ones(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def test_a_parameter_the_forward_pass_does_not_use_is_left_alone() -> None:
    module = WithSpare()
    before = copy.deepcopy(module.state_dict())
    train_local(module, data(), TrainSection(lr=0.1, mu=0.3), seed=0)
    assert torch.equal(module.spare, before["spare"])
    assert not torch.equal(module.body.weight, before["body.weight"])
