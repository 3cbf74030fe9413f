"""The coordinator's privacy settings for members: who adds noise, and how much."""

from __future__ import annotations

from typing import Any

import pytest

from fedaas.protocol import ClientPrivacy
from fedaas.server.privacy import JobPrivacy
from fedaas.spec import SpecError, parse_spec


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
    privacy.sample(1, list(range(sampled)), list(range(sampled)))
    instructions = privacy.instructions()
    assert isinstance(instructions, ClientPrivacy)
    return instructions.noise_std


def test_distributed_placement_is_refused_without_secure_aggregation() -> None:
    """Each share carries z/sqrt(quorum) of the noise and the coordinator sees it alone."""
    with pytest.raises(SpecError, match=r"'distributed' needs \[secure_aggregation\] enabled"):
        job_privacy(7, mechanism="gaussian", placement="distributed")


def test_local_and_central_shares_do_not_depend_on_the_quorum() -> None:
    assert noise_std(job_privacy(3, mechanism="gaussian", placement="local"), 10) == (
        pytest.approx(1.0)
    )
    assert noise_std(job_privacy(3, mechanism="gaussian"), 10) == 0.0
