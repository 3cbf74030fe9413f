"""Privacy accounting for client-level DP over rounds, on Google's ``dp-accounting``.

Each DP-FedAvg round (McMahan et al., ICLR 2018, arXiv:1710.06963) is a
Poisson-subsampled Gaussian mechanism with sampling rate ``q`` and noise
multiplier ``z``; rounds compose. Two accountants: Renyi DP (``"rdp"``, the
curves of ``dp_accounting.rdp.RdpAccountant``) and privacy loss distributions
(``"pld"``, tighter; the pessimistic PLDs that ``dp_accounting.pld.PLDAccountant``
builds, composed here one round at a time so that a :class:`PrivacyLedger`
round costs the same at round 1000 as at round 1). Adaptive clipping (Andrew
et al., NeurIPS 2021, arXiv:1905.03871) is accounted with the nominal ``z``.

Ornstein-Uhlenbeck (AR(1)) noise with correlation ``theta`` is accounted with
the whitening bound: ``w_t = y_t - theta*y_{t-1}`` is invertible
post-processing, so round 1 is a Gaussian mechanism with multiplier ``z`` and
every later round one with ``z * sqrt((1-|theta|)/(1+|theta|))``. This needs
every client in every round (``q = 1``). Treating OU rounds as independent
would be unsound and is never done here.

Speed: Gaussian mechanisms without subsampling compose exactly into one
Gaussian mechanism (``1/z^2`` adds up); for PLD that single mechanism is
evaluated with its exact privacy profile (Balle & Wang, ICML 2018, Thm. 8),
which the discretized PLD accountant approaches from above.
"""

from __future__ import annotations

import copy
import logging
import math
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import Any, Literal

import dp_accounting
import numpy as np
from dp_accounting import rdp
from dp_accounting.pld.privacy_loss_distribution import (
    PrivacyLossDistribution,
    from_gaussian_mechanism,
)
from scipy.special import log_ndtr, ndtr

Accountant = Literal["rdp", "pld"]
Mechanism = Literal["gaussian", "ou"]
ACCOUNTANTS: tuple[str, ...] = ("rdp", "pld")
PLD_DISCRETIZATION = 1e-3
"""PLD grid step; the estimate is pessimistic (an upper bound) at any step."""
PLD_MAX_EPSILON = 500.0
"""Once the RDP epsilon exceeds this, PLD (slow for huge losses, and pointless) is
dropped and the RDP bound is returned instead."""

Group = tuple[float, float, int]  # (noise multiplier to account with, sampling rate, rounds)


def _quiet(record: logging.LogRecord) -> bool:
    # dp-accounting's RDP skips fractional orders it cannot evaluate and warns
    # each time (every round); the skipped orders only make the bound looser.
    return not str(record.msg).startswith("_compute_log_a_frac failed to converge")


logging.getLogger("absl").addFilter(_quiet)


def ou_effective_multiplier(noise_multiplier: float, theta: float) -> float:
    """Per-round multiplier of OU rounds after the first: ``z*sqrt((1-|theta|)/(1+|theta|))``."""
    _check_theta(theta)
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


# ------------------------------------------------------------------- events


@dataclass(frozen=True)
class PrivacyEvent:
    """One round's release, as the ledger records it.

    ``noise_multiplier`` is the nominal ``z`` (also with adaptive clipping);
    ``sampling_rate`` the Poisson rate ``q`` to account with;
    ``mechanism`` ``gaussian`` (independent noise) or ``ou`` (AR(1) noise
    with correlation ``theta``; requires ``q = 1``).
    """

    noise_multiplier: float
    sampling_rate: float = 1.0
    mechanism: Mechanism = "gaussian"
    theta: float = 0.0

    def __post_init__(self) -> None:
        z, q = self.noise_multiplier, self.sampling_rate
        if not (isinstance(z, int | float) and math.isfinite(z) and z >= 0):
            raise ValueError(f"noise multiplier must be finite and >= 0, got {z!r}")
        if not (isinstance(q, int | float) and 0 < q <= 1):
            raise ValueError(f"sampling rate must lie in (0, 1], got {q!r}")
        if self.mechanism == "gaussian":
            if self.theta != 0:
                raise ValueError("theta is only meaningful for the 'ou' mechanism")
        elif self.mechanism == "ou":
            _check_theta(self.theta)
            _check_ou_rate(q)
        else:
            raise ValueError(f"unknown mechanism {self.mechanism!r}: use 'gaussian' or 'ou'")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PrivacyEvent:
        unknown = set(data) - {"noise_multiplier", "sampling_rate", "mechanism", "theta"}
        if unknown:
            raise ValueError(f"unknown privacy event keys: {sorted(unknown)}")
        return cls(
            noise_multiplier=float(data["noise_multiplier"]),
            sampling_rate=float(data.get("sampling_rate", 1.0)),
            mechanism=data.get("mechanism", "gaussian"),
            theta=float(data.get("theta", 0.0)),
        )


def _check_theta(theta: float) -> None:
    if not -1.0 < theta < 1.0:
        raise ValueError(f"theta must lie strictly between -1 and 1, got {theta}")


def _check_ou_rate(sampling_rate: float) -> None:
    if sampling_rate != 1.0:
        raise ValueError(
            "OU noise accounting assumes every client takes part in every round "
            f"(sampling rate 1); got sampling rate {sampling_rate:g}"
        )


def _check_delta(delta: float) -> None:
    if not 0 < delta < 1:
        raise ValueError(f"delta must lie in (0, 1), got {delta}")


def _accounted(event: PrivacyEvent, ou_started: bool) -> float:
    """The multiplier to account ``event`` with (OU rounds after the first: whitened)."""
    if event.mechanism == "ou" and ou_started:
        return ou_effective_multiplier(event.noise_multiplier, event.theta)
    return event.noise_multiplier


def _groups(events: Iterable[PrivacyEvent]) -> tuple[Group, ...]:
    counts: Counter[tuple[float, float]] = Counter()
    ou_started = False
    for event in events:
        counts[(_accounted(event, ou_started), event.sampling_rate)] += 1
        ou_started = ou_started or event.mechanism == "ou"
    return tuple(sorted((z, q, n) for (z, q), n in counts.items()))


def dp_event(events: Iterable[PrivacyEvent]) -> dp_accounting.DpEvent:
    """The ``dp_accounting`` event for a sequence of rounds (OU whitening applied)."""
    return _dp_event(_groups(events))


def _dp_event(groups: Iterable[Group]) -> dp_accounting.DpEvent:
    parts: list[dp_accounting.DpEvent] = []
    for z, q, n in groups:
        single: dp_accounting.DpEvent = dp_accounting.GaussianDpEvent(z)
        if q < 1:
            single = dp_accounting.PoissonSampledDpEvent(q, single)
        parts.append(dp_accounting.SelfComposedDpEvent(single, n) if n > 1 else single)
    return parts[0] if len(parts) == 1 else dp_accounting.ComposedDpEvent(parts)


# ----------------------------------------------------------------- epsilon


def gaussian_epsilon(mu: float, delta: float) -> float:
    """Exact epsilon of a Gaussian mechanism with ``sensitivity / std = mu`` (mu-GDP).

    ``delta(eps) = Phi(mu/2 - eps/mu) - e^eps * Phi(-mu/2 - eps/mu)``
    (Balle & Wang 2018), inverted by bisection; returns an upper end.
    """
    _check_delta(delta)
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


_ORDERS = np.asarray(rdp.RdpAccountant().orders, dtype=np.float64)


@lru_cache(maxsize=256)
def _single_rdp(z: float, q: float) -> np.ndarray:
    event = dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(z))
    return np.asarray(rdp.RdpAccountant().compose(event).rdp, dtype=np.float64)


@lru_cache(maxsize=256)
def _single_pld(z: float, q: float) -> PrivacyLossDistribution:
    return from_gaussian_mechanism(
        standard_deviation=z, sampling_prob=q, value_discretization_interval=PLD_DISCRETIZATION
    )


class _Composition:
    """Rounds composed so far, kept so that adding one round is cheap.

    Unsampled Gaussian rounds compose exactly into one Gaussian mechanism
    (``full`` = sum of ``1/z^2``); subsampled rounds are kept as a summed RDP
    curve and, for the PLD accountant, as a composed privacy loss distribution.
    """

    def __init__(self, accountant: str, delta: float) -> None:
        if accountant not in ACCOUNTANTS:
            raise ValueError(f"unknown accountant {accountant!r}: use 'rdp' or 'pld'")
        _check_delta(delta)
        self.accountant = accountant
        self.delta = delta
        self.full = 0.0
        self.sampled_rdp = np.zeros_like(_ORDERS)
        self.sampled_pld: PrivacyLossDistribution | None = None
        self.has_sampled = False
        self.infinite = False

    def copy(self) -> _Composition:
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
        curve = self.sampled_rdp + _ORDERS * self.full / 2  # Gaussian RDP: alpha / (2 z^2)
        return float(rdp.rdp_privacy_accountant.compute_epsilon(_ORDERS, curve, self.delta)[0])

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
            total = total.compose(
                from_gaussian_mechanism(
                    standard_deviation=self.full**-0.5,
                    value_discretization_interval=PLD_DISCRETIZATION,
                )
            )
        return float(total.get_epsilon_for_delta(self.delta))


@lru_cache(maxsize=512)
def _epsilon(groups: tuple[Group, ...], delta: float, accountant: str) -> float:
    return _composed(groups, delta, accountant).epsilon()


def _composed(groups: Iterable[Group], delta: float, accountant: str) -> _Composition:
    composition = _Composition(accountant, delta)
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
    _check_theta(theta)
    if theta == 0 or rounds == 0:
        return ((noise_multiplier, sampling_rate, rounds),)
    _check_ou_rate(sampling_rate)
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
    _check_delta(delta)
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


# ------------------------------------------------------------------ ledger

LEDGER_FORMAT = "fedaas.privacy-ledger/1"


class PrivacyLedger:
    """Every round's privacy event, epsilon after each round, and the budget.

    Adding a round costs one PLD convolution, independent of how many rounds
    came before. Part of the coordinator's persisted state: :meth:`to_dict`
    gives a JSON-compatible dict and :meth:`from_dict` rebuilds the ledger,
    recomputing the current epsilon from the events. ``private=False`` marks
    a reproducibility run (fixed-seed noise): its epsilon is not a guarantee.
    """

    def __init__(
        self,
        delta: float,
        epsilon_budget: float | None = None,
        accountant: Accountant = "pld",
        private: bool = True,
    ) -> None:
        if epsilon_budget is not None and not epsilon_budget > 0:
            raise ValueError(f"epsilon budget must be positive, got {epsilon_budget}")
        self._composition = _Composition(accountant, float(delta))
        self.delta = float(delta)
        self.epsilon_budget = None if epsilon_budget is None else float(epsilon_budget)
        self.accountant: Accountant = accountant
        self.private = bool(private)
        self.events: list[PrivacyEvent] = []
        self.history: list[float] = []  # epsilon after each recorded round
        self._ou_started = False
        self._next: tuple[PrivacyEvent, _Composition, float] | None = None

    @property
    def rounds(self) -> int:
        return len(self.events)

    def epsilon(self) -> float:
        """Epsilon spent so far (0 before the first round)."""
        return self.history[-1] if self.history else 0.0

    def epsilon_with(self, event: PrivacyEvent) -> float:
        """Epsilon if ``event`` were recorded next (nothing changes)."""
        if self._next is None or self._next[0] != event:
            composition = self._composition.copy()
            composition.add(_accounted(event, self._ou_started), event.sampling_rate)
            self._next = (event, composition, composition.epsilon())
        return self._next[2]

    def would_exceed(self, event: PrivacyEvent) -> bool:
        """Whether running one more round like ``event`` would exceed the budget."""
        return self.epsilon_budget is not None and self.epsilon_with(event) > self.epsilon_budget

    def record(self, event: PrivacyEvent) -> float:
        """Record one released round; returns the epsilon spent after it."""
        eps = self.epsilon_with(event)
        assert self._next is not None
        self._composition = self._next[1]
        self._next = None
        self._ou_started = self._ou_started or event.mechanism == "ou"
        self.events.append(event)
        self.history.append(eps)
        return eps

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": LEDGER_FORMAT,
            "delta": self.delta,
            "epsilon_budget": self.epsilon_budget,
            "accountant": self.accountant,
            "private": self.private,
            "events": [event.to_dict() for event in self.events],
            "history": list(self.history),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PrivacyLedger:
        if data.get("format") != LEDGER_FORMAT:
            raise ValueError(f"not a privacy ledger (format {data.get('format')!r})")
        ledger = cls(
            delta=float(data["delta"]),
            epsilon_budget=data.get("epsilon_budget"),
            accountant=data["accountant"],
            private=bool(data["private"]),
        )
        events = [PrivacyEvent.from_dict(item) for item in data["events"]]
        history = [float(value) for value in data["history"]]
        if len(history) != len(events):
            raise ValueError("privacy ledger history and events differ in length")
        ledger._composition = _composed(_groups(events), ledger.delta, ledger.accountant)
        ledger._ou_started = any(event.mechanism == "ou" for event in events)
        ledger.events = events
        if events:  # the accountant, not the stored number, is authoritative
            history[-1] = ledger._composition.epsilon()
        ledger.history = history
        return ledger
