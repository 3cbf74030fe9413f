"""Who takes part in a round: Poisson sampling for private jobs, a seeded draw otherwise.

Client-level DP (DP-FedAvg, McMahan et al., ICLR 2018, arXiv:1710.06963)
amplifies privacy by subsampling only if (a) every member of the population
the accountant is told about is included independently with probability
``q``, and (b) nobody who sees the release knows who was included. So, under
client-level DP:

- :func:`poisson_sample` includes each *eligible* member (enrolled, not
  revoked, not declined: online or not) with probability ``q``, from the
  operating system's cryptographic source (:func:`fedaas.algorithms.noise.secure_uniform`),
  never from the job seed, which every member knows. A sampled member that
  is offline simply does not report; its inclusion probability is still at
  most ``q``, so the accountant's ``PoissonSampledDpEvent(q, ...)`` over the
  eligible population holds whoever is online.
- the sum of clipped updates is divided by the *expected* count ``q * N``
  (:func:`expected_count`), a fixed denominator, so the release does not
  depend on how many were actually sampled (a number that is not published).

Without DP, :func:`seeded_sample` keeps fedaas's reproducible sampling:
``m`` members without replacement among the online ones, from the job seed
and the round number (a rerun round gets the same sample).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

from fedaas.algorithms.noise import secure_uniform

Uniform = Callable[[int], np.ndarray]
"""``count`` -> uniforms in ``[0, 1)``."""


def sampling_rate(wanted: int, population: int) -> float:
    """The Poisson rate that gives ``wanted`` members in expectation out of ``population``."""
    if population < 1:
        raise ValueError("the population to sample from is empty")
    if wanted < 1:
        raise ValueError("at least one member per round is needed")
    return min(1.0, wanted / population)


def expected_count(rate: float, population: int) -> float:
    """``q * N``: the fixed denominator of DP-FedAvg's mean (McMahan et al. 2018)."""
    if not 0 < rate <= 1 or population < 1:
        raise ValueError("need 0 < rate <= 1 and a non-empty population")
    return rate * population


def poisson_mask(count: int, rate: float, uniform: Uniform = secure_uniform) -> np.ndarray:
    """``count`` independent Bernoulli(``rate``) draws (booleans)."""
    if not 0 < rate <= 1:
        raise ValueError(f"sampling rate must lie in (0, 1], got {rate}")
    if rate == 1:
        return np.ones(count, dtype=bool)
    return uniform(count) < rate


def poisson_sample(
    population: Sequence[int], rate: float, uniform: Uniform = secure_uniform
) -> list[int]:
    """Each member of ``population`` independently with probability ``rate`` (sorted ids)."""
    members = sorted(int(m) for m in population)
    mask = poisson_mask(len(members), rate, uniform)
    return [m for m, keep in zip(members, mask, strict=True) if keep]


def seeded_sample(online: Sequence[int], count: int, seed: int, number: int) -> list[int]:
    """``count`` of ``online`` without replacement, from the job seed and round (no DP)."""
    if not 0 <= count <= len(online):
        raise ValueError(f"cannot take {count} of {len(online)} online members")
    rng = np.random.default_rng([seed, number])
    return sorted(int(m) for m in rng.choice(list(online), size=count, replace=False))


def amplification_note(rate: float, population: int, placement: str) -> str | None:
    """Why no amplification by subsampling is claimed for a round, or ``None`` if it is."""
    if placement != "central":
        return (
            "no amplification claimed: with member-side noise the guarantee holds against "
            "the coordinator, which knows who it sampled (accounted with q = 1)"
        )
    if math.isclose(rate, 1.0):
        return f"no amplification claimed: every one of the {population} eligible members is asked"
    return None
