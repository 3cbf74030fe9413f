"""The train package's public face: the optimizer factory and the lazy DP-SGD entry points."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from torch import nn

import fedaas.train
from fedaas.algorithms import accounting
from fedaas.spec import TrainSection
from fedaas.train import dp_sgd, make_optimizer


@pytest.mark.parametrize(
    ("cfg", "kind", "settings"),
    [
        (TrainSection(lr=0.1, momentum=0.9), torch.optim.SGD, {"lr": 0.1, "momentum": 0.9}),
        (TrainSection(optimizer="adam", lr=0.01), torch.optim.Adam, {"lr": 0.01}),
    ],
)
def test_make_optimizer_follows_the_train_section(
    cfg: TrainSection, kind: type, settings: dict[str, float]
) -> None:
    module = nn.Linear(3, 2)
    optimizer = make_optimizer(module, cfg)
    assert type(optimizer) is kind
    group = optimizer.param_groups[0]
    assert {key: group[key] for key in settings} == settings
    assert len(group["params"]) == 2


def test_package_reexports_without_importing_opacus_until_needed() -> None:
    assert fedaas.train.train_local_dp is dp_sgd.train_local_dp
    assert fedaas.train.record_epsilon_after is accounting.record_epsilon_after
    assert fedaas.train.dp_sgd_schedule is accounting.dp_sgd_schedule
    with pytest.raises(AttributeError):
        fedaas.train.no_such_name  # noqa: B018
    code = "import sys, fedaas.train; print('opacus' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"  # the coordinator only evaluates: no Opacus import
