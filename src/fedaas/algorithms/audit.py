"""Empirical privacy audits: play the attacker and bound epsilon from below.

Jagielski, Ullman & Oprea, "Auditing Differentially Private Machine
Learning: How Private is Private SGD?" (NeurIPS 2020) and Nasr et al.,
"Adversary Instantiation: Lower Bounds for Differentially Private Machine
Learning" (IEEE S&P 2021): run the mechanism many times in two neighbouring
worlds, with and without a canary (a member, or a record, whose clipped
contribution points in a fixed direction ``v``), let the attacker score what
it observes, and turn its true and false positive rates into a lower bound on
epsilon with one-sided Clopper-Pearson intervals:

``eps_LB = max(ln((TPR_lo - delta) / FPR_hi), ln((1 - FPR_hi - delta) / (1 - TPR_lo)))``

The threshold is picked on one half of the trials and the bound computed on
the other half, so it holds with the stated confidence. An accountant whose
epsilon falls below ``eps_LB`` is wrong (or the implementation is).

The mechanisms are run as the observer sees them, vectorized over trials
and projected on ``v`` (all other contributions known to the attacker, the
worst case), with fedaas's own noise functions: :func:`gaussian_noise` and
:class:`OUNoise` from the cryptographic, Mironov-mitigated source, and
:func:`poisson_mask` for sampling. Sensitivity (the clip norm) is 1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.stats import beta

from fedaas.algorithms.noise import NoiseSource, secure_noise_source
from fedaas.algorithms.privacy import OUNoise, gaussian_noise
from fedaas.algorithms.sampling import poisson_mask


def clopper_pearson(successes: int, trials: int, alpha: float = 0.05) -> tuple[float, float]:
    """One-sided ``1 - alpha`` Clopper-Pearson bounds ``(lower, upper)`` of a binomial rate."""
    if not 0 <= successes <= trials or trials < 1:
        raise ValueError("need 0 <= successes <= trials and trials >= 1")
    lo = 0.0 if successes == 0 else float(beta.ppf(alpha, successes, trials - successes + 1))
    hi = (
        1.0
        if successes == trials
        else float(beta.ppf(1 - alpha, successes + 1, trials - successes))
    )
    return lo, hi


def _bound(tp: int, fp: int, n_in: int, n_out: int, delta: float, alpha: float) -> float:
    tpr_lo, _ = clopper_pearson(tp, n_in, alpha)
    _, fpr_hi = clopper_pearson(fp, n_out, alpha)
    best = 0.0
    if tpr_lo - delta > 0 and fpr_hi > 0:
        best = max(best, math.log((tpr_lo - delta) / fpr_hi))
    if 1 - fpr_hi - delta > 0 and tpr_lo < 1:
        best = max(best, math.log((1 - fpr_hi - delta) / (1 - tpr_lo)))
    return best


def epsilon_lower_bound(
    present: np.ndarray, absent: np.ndarray, delta: float, alpha: float = 0.05, grid: int = 400
) -> float:
    """``eps_LB`` from attack scores (higher: "canary present"), threshold picked on half.

    ``present``/``absent``: the attacker's score in each trial of each world.
    """
    half_in, half_out = len(present) // 2, len(absent) // 2
    pick_in, test_in = np.sort(present[:half_in]), present[half_in:]
    pick_out, test_out = np.sort(absent[:half_out]), absent[half_out:]
    candidates = np.unique(
        np.quantile(np.concatenate([pick_in, pick_out]), np.linspace(0, 1, grid))
    )
    tp = len(pick_in) - np.searchsorted(pick_in, candidates, side="right")
    fp = len(pick_out) - np.searchsorted(pick_out, candidates, side="right")
    scores = [
        _bound(int(a), int(b), len(pick_in), len(pick_out), delta, alpha)
        for a, b in zip(tp, fp, strict=True)
    ]
    threshold = candidates[int(np.argmax(scores))]
    tp_test = int(np.sum(test_in > threshold))
    fp_test = int(np.sum(test_out > threshold))
    return _bound(tp_test, fp_test, len(test_in), len(test_out), delta, alpha)


@dataclass(frozen=True)
class Audit:
    """One audited mechanism: what the attack proves vs what fedaas reports."""

    name: str
    lower_bound: float
    reported: float


def _normals(trials: int, rounds: int, std: float) -> np.ndarray:
    """Gaussian noise as fedaas draws it: :func:`gaussian_noise` from the secure source."""
    return gaussian_noise({"n": (trials, rounds)}, std, secure_noise_source(), dtype=np.float64)[
        "n"
    ]


def gaussian_scores(
    noise: np.ndarray, std: float, *, rate: float = 1.0, canary: bool
) -> np.ndarray:
    """Scores of the optimal attack on Gaussian releases with sensitivity 1.

    ``noise`` (trials x rounds) is what the mechanism added, std ``std``:
    central noise on the sum, a member's local noise on its own upload, or
    DP-SGD's noise on one step's sum of clipped gradients. Each round the
    canary contributes 1 (along ``v``) with probability ``rate`` (Poisson
    sampling; always when ``rate == 1``). The score is the log-likelihood
    ratio of the two worlds (``sum_t y_t`` when ``rate == 1``).
    """
    y = np.array(noise, dtype=np.float64)
    trials, rounds = y.shape
    if canary:
        y += poisson_mask(trials * rounds, rate).reshape(trials, rounds)
    if rate == 1:
        return y.sum(axis=1)
    llr = np.logaddexp(math.log1p(-rate), math.log(rate) + (y - 0.5) / std**2)
    return llr.sum(axis=1)


def ou_scores(
    trials: int,
    rounds: int,
    sigma: float,
    theta: float,
    *,
    canary: bool,
    source: NoiseSource | None = None,
) -> np.ndarray:
    """Scores of the optimal attack on ``rounds`` releases carrying one OU noise process.

    ``y_t = c_t + z_t`` with ``z`` the AR(1) process of :class:`OUNoise` and,
    with the canary, ``c_t = (-1)^t``: a member may flip its update's
    direction every round, the worst case of the whitening bound (each
    whitened step ``w_t = y_t - theta*y_{t-1}`` then moves by ``1 + theta``).
    The attacker sums ``m_t * w_t / var_t`` (``v' Sigma^-1 y``), ``m_t`` the
    canary's whitened mean.
    """
    source = source or secure_noise_source()
    process = OUNoise({"c": (trials,)}, sigma, theta)
    score = np.zeros(trials)
    previous, before = np.zeros(trials), 0.0
    for t in range(rounds):
        sign = (-1.0) ** t
        y = process.next(source)["c"] + (sign if canary else 0.0)
        if t == 0:
            score += sign * y / sigma**2
        else:
            mean = sign - theta * before
            score += mean * (y - theta * previous) / ((1 - theta**2) * sigma**2)
        previous, before = y, sign
    return score


def audit_gaussian(
    name: str,
    trials: int,
    rounds: int,
    std: float,
    reported: float,
    delta: float,
    rate: float = 1.0,
) -> Audit:
    """Audit ``rounds`` Gaussian releases (std ``std``, sampling ``rate``) against ``reported``."""
    present = gaussian_scores(_normals(trials, rounds, std), std, rate=rate, canary=True)
    absent = gaussian_scores(_normals(trials, rounds, std), std, rate=rate, canary=False)
    return Audit(name, epsilon_lower_bound(present, absent, delta), reported)


def audit_ou(
    name: str, trials: int, rounds: int, sigma: float, theta: float, reported: float, delta: float
) -> Audit:
    """Audit ``rounds`` releases with OU noise (std ``sigma``, correlation ``theta``)."""
    present = ou_scores(trials, rounds, sigma, theta, canary=True)
    absent = ou_scores(trials, rounds, sigma, theta, canary=False)
    return Audit(name, epsilon_lower_bound(present, absent, delta), reported)
