"""``train_local`` moves and switches a module only when it must, with the same result."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from fedaas.data.dataset import ArrayDataset
from fedaas.spec import TrainSection
from fedaas.train import train_local
from fedaas.train.local import ready


def _model() -> nn.Module:
    torch.manual_seed(0)
    shared = nn.Linear(4, 4)
    model = nn.Sequential(nn.Linear(8, 4), nn.Dropout(0.5), shared, nn.ReLU(), shared)
    model[0].bias.requires_grad_(False)
    model.register_buffer("scale", torch.ones(4))
    return model


def test_ready_lists_the_trainable_parameters_as_parameters_does() -> None:
    model = _model()
    model.eval()
    params = ready(model, torch.device("cpu"))
    assert params == [p for p in model.parameters() if p.requires_grad]  # shared once
    assert all(m.training for m in model.modules())  # an eval() module trains in train mode
    assert ready(model, torch.device("cpu")) == params


def test_ready_moves_a_module_that_is_elsewhere() -> None:
    model = _model()  # on the CPU; "meta" stands in for a GPU this machine may not have
    params = ready(model, torch.device("meta"))
    assert all(t.device.type == "meta" for t in [*model.parameters(), *model.buffers()])
    assert params == [p for p in model.parameters() if p.requires_grad]


def test_training_after_eval_is_training_in_train_mode() -> None:
    rng = np.random.default_rng(0)
    data = ArrayDataset(rng.normal(size=(40, 8)).astype(np.float32), rng.integers(0, 4, 40))
    cfg = TrainSection(lr=0.1, batch_size=8, epochs=1)
    results = []
    for evaluated_first in (False, True):
        model = _model()
        if evaluated_first:
            model.eval()
        torch.manual_seed(1)  # dropout's draws
        train_local(model, data, cfg, seed=[0])
        results.append([p.detach().clone() for p in model.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*results, strict=True))
