"""Privacy accounting: epsilon of composed Gaussian mechanisms, on Google's ``dp-accounting``.

Each DP-FedAvg round (McMahan et al., ICLR 2018, arXiv:1710.06963) is a
Poisson-subsampled Gaussian mechanism with sampling rate ``q`` and noise
multiplier ``z``; rounds compose. Two accountants: Renyi DP (``"rdp"``, the
curves of ``dp_accounting.rdp.RdpAccountant``) and privacy loss distributions
(``"pld"``, tighter; the pessimistic PLDs that ``dp_accounting.pld.PLDAccountant``
builds, composed here one round at a time by :class:`Composition` so that a
ledger round (:mod:`fedaas.algorithms.ledger`) costs the same at round 1000 as
at round 1). Adaptive clipping (Andrew et al., NeurIPS 2021, arXiv:1905.03871)
is accounted with the nominal ``z``.

Ornstein-Uhlenbeck (AR(1)) noise with correlation ``theta`` is accounted with
the whitening bound: ``w_t = y_t - theta*y_{t-1}`` is invertible
post-processing, so round 1 is a Gaussian mechanism with multiplier ``z`` and
every later round one with ``z * sqrt((1-|theta|)/(1+|theta|))``. This needs
every client in every round (``q = 1``). Treating OU rounds as independent
would be unsound and is never done here.

Record-level DP (DP-SGD, Abadi et al., CCS 2016, arXiv:1607.00133) is the
same mechanism one level down: every optimizer step is a Poisson-subsampled
Gaussian mechanism on one member's records (:func:`dp_sgd_schedule`,
:func:`record_epsilon_after`).

Speed: Gaussian mechanisms without subsampling compose exactly into one
Gaussian mechanism (``1/z^2`` adds up); for PLD that single mechanism is
evaluated with its exact privacy profile (Balle & Wang, ICML 2018, Thm. 8),
which the discretized PLD accountant approaches from above. ``dp-accounting`` (a second of
SciPy imports) is loaded by the first epsilon: a process without DP never waits for it.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Iterable
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

if TYPE_CHECKING:
    from dp_accounting.pld.privacy_loss_distribution import PrivacyLossDistribution

Accountant = Literal["rdp", "pld"]
Mechanism = Literal["gaussian", "ou"]
ACCOUNTANTS: tuple[str, ...] = ("rdp", "pld")
PLD_DISCRETIZATION = 1e-3
"""PLD grid step; the estimate is pessimistic (an upper bound) at any step."""
PLD_MAX_EPSILON = 500.0
"""Past this RDP epsilon PLD (slow for huge losses, and pointless) gives way to the RDP bound."""

Group = tuple[float, float, int]  # (noise multiplier to account with, sampling rate, rounds)


def _quiet(record: logging.LogRecord) -> bool:
    # dp-accounting warns of each order it skips (every round); skipping only loosens the bound
    return not str(record.msg).startswith("_compute_log_a_frac failed to converge")


logging.getLogger("absl").addFilter(_quiet)


def ou_effective_multiplier(noise_multiplier: float, theta: float) -> float:
    """Per-round multiplier of OU rounds after the first: ``z*sqrt((1-|theta|)/(1+|theta|))``."""
    check_theta(theta)
    return noise_multiplier * math.sqrt((1 - abs(theta)) / (1 + abs(theta)))


def accounted_sampling_rate(placement: str, sampling_rate: float) -> float:
    """The sampling rate to account with, given where the noise is added.

    Amplification by subsampling only holds against parties who do not know
    who was sampled. With ``central`` noise the coordinator is trusted, so
    ``q`` applies (to everyone who sees the models). With ``distributed`` or
    ``local`` noise the guarantee is meant to hold against the coordinator,
    which chose the sample: account with ``q = 1``.
    """
    if placement == "central":
        return sampling_rate
    if placement in ("distributed", "local"):
        return 1.0
    raise ValueError(f"unknown placement {placement!r}")


def check_theta(theta: float) -> None:
    if not -1.0 < theta < 1.0:
        raise ValueError(f"theta must lie strictly between -1 and 1, got {theta}")


def check_ou_rate(sampling_rate: float) -> None:
    if sampling_rate != 1.0:
        every = "OU noise accounting assumes every client takes part in every round"
        raise ValueError(f"{every} (sampling rate 1); got sampling rate {sampling_rate:g}")


def check_delta(delta: float) -> None:
    if not 0 < delta < 1:
        raise ValueError(f"delta must lie in (0, 1), got {delta}")


def gaussian_epsilon(mu: float, delta: float) -> float:
    """Exact epsilon of a Gaussian mechanism with ``sensitivity / std = mu`` (mu-GDP).

    ``delta(eps) = Phi(mu/2 - eps/mu) - e^eps * Phi(-mu/2 - eps/mu)``
    (Balle & Wang 2018), inverted by bisection; returns an upper end.
    """
    from scipy.special import log_ndtr, ndtr  # 0.2 s to import: on first use

    check_delta(delta)
    if mu <= 0:
        return 0.0
    if math.isinf(mu):
        return math.inf

    def delta_of(eps: float) -> float:
        return float(ndtr(mu / 2 - eps / mu) - math.exp(eps + log_ndtr(-mu / 2 - eps / mu)))

    if delta_of(0.0) <= delta:
        return 0.0
    lo, hi = 0.0, 1.0
    while delta_of(hi) > delta:
        lo, hi = hi, 2 * hi
    while hi - lo > 1e-10 * hi:
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if delta_of(mid) <= delta else (mid, hi)
    return hi


@lru_cache(maxsize=1)
def _orders() -> np.ndarray:  # the orders of dp_accounting's default RdpAccountant
    import dp_accounting

    return np.asarray(dp_accounting.rdp.RdpAccountant().orders, dtype=np.float64)


@lru_cache(maxsize=256)
def _single_rdp(z: float, q: float) -> np.ndarray:
    import dp_accounting

    event = dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(z))
    return np.asarray(dp_accounting.rdp.RdpAccountant().compose(event).rdp, dtype=np.float64)


def _gaussian_pld(z: float, q: float = 1.0) -> PrivacyLossDistribution:
    import dp_accounting

    return dp_accounting.pld.privacy_loss_distribution.from_gaussian_mechanism(
        standard_deviation=z, sampling_prob=q, value_discretization_interval=PLD_DISCRETIZATION
    )


_single_pld = lru_cache(maxsize=256)(_gaussian_pld)  # a subsampled round's (z, q) recurs


class Composition:
    """Rounds composed so far, kept so that adding one round is cheap.

    Unsampled Gaussian rounds compose exactly into one Gaussian mechanism
    (``full`` = sum of ``1/z^2``); subsampled rounds are kept as a summed RDP
    curve and, for the PLD accountant, as a composed privacy loss distribution.
    """

    def __init__(self, accountant: str, delta: float) -> None:
        if accountant not in ACCOUNTANTS:
            raise ValueError(f"unknown accountant {accountant!r}: use 'rdp' or 'pld'")
        check_delta(delta)
        self.accountant = accountant
        self.delta = delta
        self.full = 0.0
        self.sampled_rdp = np.zeros_like(_orders())
        self.sampled_pld: PrivacyLossDistribution | None = None
        self.has_sampled = False
        self.infinite = False

    def copy(self) -> Composition:
        other = copy.copy(self)
        other.sampled_rdp = self.sampled_rdp.copy()  # PLD objects are never mutated
        return other

    def add(self, z: float, q: float, count: int = 1) -> None:
        if count <= 0:
            return
        if z == 0:
            self.infinite = True
        if self.infinite:
            return
        if q == 1:
            self.full += count / z**2
            return
        self.has_sampled = True
        self.sampled_rdp = self.sampled_rdp + count * _single_rdp(z, q)
        if self.accountant == "pld" and self._rdp_epsilon() <= PLD_MAX_EPSILON:
            piece = _single_pld(z, q) if count == 1 else _single_pld(z, q).self_compose(count)
            self.sampled_pld = (
                piece if self.sampled_pld is None else self.sampled_pld.compose(piece)
            )
        else:  # losses this large make PLD slow and add nothing: RDP from here on
            self.sampled_pld = None

    def _rdp_epsilon(self) -> float:
        from dp_accounting.rdp.rdp_privacy_accountant import compute_epsilon

        curve = self.sampled_rdp + _orders() * self.full / 2  # Gaussian RDP: alpha / (2 z^2)
        return float(compute_epsilon(_orders(), curve, self.delta)[0])

    def epsilon(self) -> float:
        if self.infinite:
            return math.inf
        if not self.has_sampled and self.full == 0:
            return 0.0
        if self.accountant == "pld" and not self.has_sampled:
            return gaussian_epsilon(math.sqrt(self.full), self.delta)
        if self.accountant == "rdp" or self.sampled_pld is None:
            return self._rdp_epsilon()
        total = self.sampled_pld
        if self.full > 0:
            total = total.compose(_gaussian_pld(self.full**-0.5))
        return float(total.get_epsilon_for_delta(self.delta))


@lru_cache(maxsize=512)
def _epsilon(groups: tuple[Group, ...], delta: float, accountant: str) -> float:
    return composed(groups, delta, accountant).epsilon()


def composed(groups: Iterable[Group], delta: float, accountant: str) -> Composition:
    composition = Composition(accountant, delta)
    for z, q, n in groups:
        composition.add(z, q, n)
    return composition


def _rounds_groups(
    noise_multiplier: float, sampling_rate: float, rounds: int, theta: float
) -> tuple[Group, ...]:
    if not (math.isfinite(noise_multiplier) and noise_multiplier >= 0):
        raise ValueError(f"noise multiplier must be finite and >= 0, got {noise_multiplier}")
    if not 0 < sampling_rate <= 1:
        raise ValueError(f"sampling rate must lie in (0, 1], got {sampling_rate}")
    if rounds < 0:
        raise ValueError(f"rounds must be >= 0, got {rounds}")
    check_theta(theta)
    if theta == 0 or rounds == 0:
        return ((noise_multiplier, sampling_rate, rounds),)
    check_ou_rate(sampling_rate)
    later = ou_effective_multiplier(noise_multiplier, theta)
    return ((noise_multiplier, 1.0, 1), (later, 1.0, rounds - 1))


def epsilon(
    noise_multiplier: float,
    sampling_rate: float,
    rounds: int,
    delta: float,
    *,
    theta: float = 0.0,
    accountant: Accountant = "pld",
) -> float:
    """Epsilon after ``rounds`` rounds at ``delta``.

    ``theta == 0``: independent Gaussian noise, Poisson sampling at rate ``q``.
    ``theta != 0``: OU noise, whitening bound, requires ``sampling_rate == 1``.
    """
    check_delta(delta)
    groups = _rounds_groups(noise_multiplier, sampling_rate, rounds, theta)
    return _epsilon(groups, float(delta), accountant)


def noise_for_epsilon(
    target_epsilon: float,
    sampling_rate: float,
    rounds: int,
    delta: float,
    *,
    theta: float = 0.0,
    accountant: Accountant = "pld",
    rel_tol: float = 1e-3,
) -> float:
    """Smallest noise multiplier (to ``rel_tol``) whose epsilon is at most the target.

    Bisection in log space; the returned value always meets the target.
    """
    if not (math.isfinite(target_epsilon) and target_epsilon > 0):
        raise ValueError(f"target epsilon must be positive and finite, got {target_epsilon}")
    if rounds < 1:
        raise ValueError("rounds must be >= 1")
    _rounds_groups(1.0, sampling_rate, rounds, theta)  # validates the inputs

    def eps_of(z: float, which: str) -> float:
        return epsilon(z, sampling_rate, rounds, delta, theta=theta, accountant=which)  # type: ignore[arg-type]

    start = _solve(lambda z: eps_of(z, "rdp"), target_epsilon, 1.0, 2.0, rel_tol)
    if accountant == "rdp":
        return start
    return _solve(lambda z: eps_of(z, accountant), target_epsilon, start, 1.1, rel_tol)


def _solve(eps_of: Any, target: float, start: float, factor: float, rel_tol: float) -> float:
    lo = hi = start
    while eps_of(hi) > target:
        lo, hi = hi, hi * factor
        if hi > 1e6:
            raise ValueError(f"epsilon {target:g} is out of reach (noise multiplier > 1e6)")
    if lo == hi:
        while eps_of(lo) <= target:
            lo, hi = lo / factor, lo
            if lo < 1e-3:
                return hi
    while hi / lo > 1 + rel_tol:
        mid = math.sqrt(lo * hi)
        lo, hi = (lo, mid) if eps_of(mid) <= target else (mid, hi)
    return hi


# record level (DP-SGD) --------------------------------------------------------------
def dp_sgd_schedule(num_examples: int, batch_size: int, epochs: int) -> tuple[float, int]:
    """``(q, steps)`` of one round: Poisson rate ``min(1, batch/n)``, ``epochs*ceil(n/batch)`` steps."""
    if num_examples < 1 or batch_size < 1 or epochs < 0:
        raise ValueError("need num_examples >= 1, batch_size >= 1 and epochs >= 0")
    q = min(1.0, batch_size / num_examples)
    return q, epochs * math.ceil(num_examples / batch_size)


def record_epsilon_after(
    rounds: int,
    steps_per_round: int,
    q: float,
    z: float,
    delta: float,
    *,
    accountant: Accountant = "rdp",
) -> float:
    """Cumulative record-level epsilon at ``delta`` after ``rounds`` rounds of DP-SGD.

    Each round is ``steps_per_round`` Poisson-subsampled Gaussian steps
    (``dp_accounting.PoissonSampledDpEvent(q, GaussianDpEvent(z))``); all
    ``rounds * steps_per_round`` of them compose (the same records are used in
    every round the member takes part in). Count only the rounds this member
    trained in. ``z = 0`` gives ``inf``; no steps give 0.
    """
    if rounds < 0 or steps_per_round < 0:
        raise ValueError("rounds and steps_per_round must be >= 0")
    steps = rounds * steps_per_round
    if steps == 0:
        return 0.0
    return epsilon(float(z), float(q), steps, float(delta), accountant=accountant)
