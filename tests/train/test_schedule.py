"""The learning rate of a round: a pure function of (round, rounds, [train])."""

from __future__ import annotations

import math

import pytest

from fedaas.spec_train import TrainSection
from fedaas.train.schedule import round_lr


def test_constant_is_the_same_every_round() -> None:
    cfg = TrainSection(lr=0.3)
    assert [round_lr(r, 5, cfg) for r in range(1, 6)] == [0.3] * 5


def test_step_decays_every_lr_step_rounds() -> None:
    cfg = TrainSection(lr=1.0, lr_schedule="step", lr_step_rounds=2, lr_gamma=0.5)
    assert [round_lr(r, 6, cfg) for r in range(1, 7)] == [1.0, 1.0, 0.5, 0.5, 0.25, 0.25]


def test_cosine_runs_from_lr_to_lr_min() -> None:
    cfg = TrainSection(lr=0.1, lr_schedule="cosine", lr_min=0.01)
    rates = [round_lr(r, 11, cfg) for r in range(1, 12)]
    assert rates[0] == pytest.approx(0.1) and rates[-1] == pytest.approx(0.01)
    assert rates[5] == pytest.approx((0.1 + 0.01) / 2)  # half way
    assert all(a > b for a, b in zip(rates, rates[1:], strict=False))
    assert round_lr(1, 1, cfg) == 0.1  # a one-round job trains at lr
    assert math.isclose(round_lr(3, 11, cfg), 0.01 + 0.09 * (1 + math.cos(math.pi * 0.2)) / 2)


@pytest.mark.parametrize(("number", "rounds"), [(0, 5), (6, 5), (1, 0)])
def test_a_round_outside_the_job_is_an_error(number: int, rounds: int) -> None:
    with pytest.raises(ValueError, match="round must lie"):
        round_lr(number, rounds, TrainSection())
