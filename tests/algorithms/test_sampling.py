"""Sampling: Poisson over every eligible member under DP (cryptographic), seeded otherwise."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from fedaas.algorithms.accounting import epsilon
from fedaas.algorithms.sampling import (
    expected_count,
    poisson_sample,
    sampling_rate,
    seeded_sample,
)
from fedaas.server.privacy import JobPrivacy
from fedaas.spec import parse_spec


def job(federation: dict[str, Any], **privacy: Any) -> JobPrivacy:
    spec = parse_spec(
        {
            "job": {"name": "s", "rounds": 100, "seed": 5},
            "model": {"name": "logreg"},
            "data": {"features": 4, "classes": 2},
            "federation": federation,
            "privacy": privacy,
        }
    )
    return JobPrivacy(spec, None, None)


def test_rate_and_fixed_denominator() -> None:
    assert sampling_rate(10, 100) == 0.1 and sampling_rate(12, 10) == 1.0
    assert expected_count(0.1, 100) == pytest.approx(10.0)
    with pytest.raises(ValueError):
        sampling_rate(1, 0)


def test_poisson_sample_includes_each_member_with_probability_q() -> None:
    members = list(range(50))
    counts = np.zeros(50)
    for _ in range(2000):
        counts[poisson_sample(members, 0.2)] += 1
    assert np.all(np.abs(counts / 2000 - 0.2) < 0.05)
    assert poisson_sample(members, 1.0) == members


def test_without_dp_the_sample_is_seeded_and_reproducible() -> None:
    privacy = job({"clients_per_round": 3})
    first = privacy.sample(4, list(range(10)), list(range(10)))
    assert (
        first
        == privacy.sample(4, list(range(10)), list(range(10)))
        == seeded_sample(list(range(10)), 3, 5, 4)
    )


def test_under_dp_the_job_seed_does_not_determine_the_sample() -> None:
    a = job({"clients_per_round": 5}, mechanism="gaussian", noise_multiplier=1.0)
    b = job({"clients_per_round": 5}, mechanism="gaussian", noise_multiplier=1.0)
    members = list(range(20))
    draws_a = [tuple(a.sample(t, members, members)) for t in range(1, 6)]
    draws_b = [tuple(b.sample(t, members, members)) for t in range(1, 6)]
    assert draws_a != draws_b  # same seed, same rounds: different samples (P ~ 1e-25 otherwise)


def test_ten_of_a_hundred_online_reports_the_epsilon_of_the_population_sampled_from() -> None:
    """The issue's case: 100 enrolled, 10 online, 10 wanted per round, z = 1, T = 100.

    The old code took all 10 online members and reported q = 0.1 (eps 7.05)
    while each of them was in every round (the truth, q = 1, is 91.8). Now the
    sample is Poisson over all 100 at q = 0.1: each online member is in a
    round with probability 0.1, so q = 0.1 holds, and epsilon is that of
    q = 0.1 over N = 100.
    """
    z, rounds, delta = 1.0, 100, 1e-5
    privacy = job(
        {"clients_per_round": 10, "min_clients": 1}, mechanism="gaussian", noise_multiplier=z
    )
    eligible, online = list(range(100)), list(range(10))
    taken = np.zeros(100)
    for t in range(1, rounds + 1):
        chosen = privacy.sample(t, eligible, online)
        taken[chosen] += 1
        privacy.open_round(t, len(eligible))
        metrics = privacy.close_round(t, unclipped=0, reported=0, member_metrics=[])
    assert taken[:10].mean() == pytest.approx(0.1 * rounds, abs=4)  # online: rate q, not 1
    assert taken.sum() == pytest.approx(0.1 * 100 * rounds, rel=0.2)  # offline ones too
    assert metrics["sampling_rate"] == 0.1 and metrics["population"] == 100
    assert metrics["amplification"] is True
    assert metrics["epsilon"] == pytest.approx(epsilon(z, 0.1, rounds, delta), rel=1e-6)
    assert privacy.denominator(reported=3) == pytest.approx(10.0)  # q * N, whoever reported


def test_q_equal_one_says_no_amplification_is_claimed() -> None:
    privacy = job({}, mechanism="gaussian", noise_multiplier=1.0)
    members = list(range(4))
    assert privacy.sample(1, members, members[:2]) == members  # offline ones too: they miss it
    privacy.open_round(1, 4)
    metrics = privacy.close_round(1, unclipped=0, reported=2, member_metrics=[])
    assert metrics["amplification"] is False and metrics["sampling_rate"] == 1.0
    assert "every one of the 4 eligible members" in metrics["amplification_note"]
