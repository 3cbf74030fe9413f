"""The coordinator's privacy settings for members: noise shares that survive dropouts."""

from __future__ import annotations

import math
from typing import Any

import pytest

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


def test_distributed_shares_fully_noise_any_quorum_of_reports() -> None:
    privacy = job_privacy(7, mechanism="gaussian", placement="distributed")
    share = privacy.task_info(10)["noise_std"]
    assert share == pytest.approx(2.0 * 0.5 / math.sqrt(7))
    for reported in range(7, 11):  # the sum's noise std never falls below z * S
        assert math.sqrt(reported) * share >= 2.0 * 0.5 - 1e-12
    assert job_privacy(7, mechanism="gaussian", placement="distributed").task_info(5)[
        "noise_std"
    ] == pytest.approx(2.0 * 0.5 / math.sqrt(5))  # fewer sampled than the quorum: all of them


def test_local_and_central_shares_do_not_depend_on_the_quorum() -> None:
    assert job_privacy(3, mechanism="gaussian", placement="local").task_info(10)[
        "noise_std"
    ] == pytest.approx(1.0)
    assert job_privacy(3, mechanism="gaussian").task_info(10)["noise_std"] == 0.0
