"""The coordinator's privacy settings for members: noise shares that survive dropouts."""

from __future__ import annotations

import math
from typing import Any

import pytest

from fedaas.protocol import ClientPrivacy
from fedaas.server.privacy import JobPrivacy
from fedaas.spec import parse_spec


def job_privacy(min_clients: int, **privacy: Any) -> JobPrivacy:
    spec = parse_spec(
        {
            "job": {"name": "shares", "rounds": 3},
            "model": {"name": "logreg"},
            "data": {"features": 4, "classes": 2},
            "federation": {"min_clients": min_clients},
            "privacy": {"noise_multiplier": 2.0, "clip_norm": 0.5, **privacy},
        }
    )
    return JobPrivacy(spec, None, None)


def noise_std(privacy: JobPrivacy, sampled: int) -> float:
    """The noise std each of ``sampled`` members is told to add."""
    instructions = privacy.instructions(sampled)
    assert isinstance(instructions, ClientPrivacy)
    return instructions.noise_std


def test_distributed_shares_fully_noise_any_quorum_of_reports() -> None:
    privacy = job_privacy(7, mechanism="gaussian", placement="distributed")
    share = noise_std(privacy, 10)
    assert share == pytest.approx(2.0 * 0.5 / math.sqrt(7))
    for reported in range(7, 11):  # the sum's noise std never falls below z * S
        assert math.sqrt(reported) * share >= 2.0 * 0.5 - 1e-12
    assert noise_std(job_privacy(7, mechanism="gaussian", placement="distributed"), 5) == (
        pytest.approx(2.0 * 0.5 / math.sqrt(5))  # fewer sampled than the quorum: all of them
    )


def test_local_and_central_shares_do_not_depend_on_the_quorum() -> None:
    assert noise_std(job_privacy(3, mechanism="gaussian", placement="local"), 10) == (
        pytest.approx(1.0)
    )
    assert noise_std(job_privacy(3, mechanism="gaussian"), 10) == 0.0
