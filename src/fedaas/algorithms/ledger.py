"""The privacy ledger: every round's release, epsilon after each, and the budget.

One :class:`PrivacyEvent` per released round (DP-FedAvg, McMahan et al., ICLR
2018, arXiv:1710.06963: a Poisson-subsampled Gaussian mechanism, or
Ornstein-Uhlenbeck noise accounted with the whitening bound of
:mod:`fedaas.algorithms.accounting`). :class:`PrivacyLedger` composes them
as they come and is part of the coordinator's persisted state (JSON through
:meth:`PrivacyLedger.to_dict`, never pickle). Pure: no files, no network.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from fedaas.algorithms.accounting import (
    Accountant,
    Composition,
    Group,
    Mechanism,
    check_ou_rate,
    check_theta,
    composed,
    ou_effective_multiplier,
)

if TYPE_CHECKING:
    import dp_accounting


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
            check_theta(self.theta)
            check_ou_rate(q)
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
    import dp_accounting  # about a second with SciPy: only for a DP job (see accounting)

    parts: list[dp_accounting.DpEvent] = []
    for z, q, n in groups:
        single: dp_accounting.DpEvent = dp_accounting.GaussianDpEvent(z)
        if q < 1:
            single = dp_accounting.PoissonSampledDpEvent(q, single)
        parts.append(dp_accounting.SelfComposedDpEvent(single, n) if n > 1 else single)
    return parts[0] if len(parts) == 1 else dp_accounting.ComposedDpEvent(parts)


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
        self._composition = Composition(accountant, float(delta))
        self.delta = float(delta)
        self.epsilon_budget = None if epsilon_budget is None else float(epsilon_budget)
        self.accountant: Accountant = accountant
        self.private = bool(private)
        self.events: list[PrivacyEvent] = []
        self.history: list[float] = []  # epsilon after each recorded round
        self._ou_started = False
        self._next: tuple[PrivacyEvent, Composition, float] | None = None

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
        ledger._composition = composed(_groups(events), ledger.delta, ledger.accountant)
        ledger._ou_started = any(event.mechanism == "ou" for event in events)
        ledger.events = events
        if events:  # the accountant, not the stored number, is authoritative
            history[-1] = ledger._composition.epsilon()
        ledger.history = history
        return ledger
