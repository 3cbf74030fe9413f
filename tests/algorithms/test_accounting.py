"""Privacy accounting (algorithms.accounting, algorithms.ledger) against dp-accounting."""

from __future__ import annotations

import json
import math

import dp_accounting
import pytest
from dp_accounting import pld, rdp

from fedaas.algorithms.accounting import (
    accounted_sampling_rate,
    epsilon,
    gaussian_epsilon,
    noise_for_epsilon,
    ou_effective_multiplier,
)
from fedaas.algorithms.ledger import PrivacyEvent, PrivacyLedger, dp_event

DELTA = 1e-5


def _sampled_gaussian(z: float, q: float, rounds: int) -> dp_accounting.DpEvent:
    event: dp_accounting.DpEvent = dp_accounting.GaussianDpEvent(z)
    if q < 1:
        event = dp_accounting.PoissonSampledDpEvent(q, event)
    return dp_accounting.SelfComposedDpEvent(event, rounds)


def _ou(z: float, theta: float, rounds: int) -> dp_accounting.DpEvent:
    later = z * math.sqrt((1 - abs(theta)) / (1 + abs(theta)))
    return dp_accounting.ComposedDpEvent(
        [dp_accounting.GaussianDpEvent(z), _sampled_gaussian(later, 1.0, rounds - 1)]
    )


def _direct(event: dp_accounting.DpEvent, accountant: str) -> float:
    if accountant == "rdp":
        return rdp.RdpAccountant().compose(event).get_epsilon(DELTA)
    return pld.PLDAccountant(value_discretization_interval=1e-3).compose(event).get_epsilon(DELTA)


# ------------------------------------------------------- reference numbers


@pytest.mark.parametrize(("accountant", "expected"), [("rdp", 2.10), ("pld", 1.83)])
def test_subsampled_gaussian_reference_values(accountant, expected):
    direct = _direct(_sampled_gaussian(1.0, 0.01, 1000), accountant)
    ours = epsilon(1.0, 0.01, 1000, DELTA, accountant=accountant)
    assert round(direct, 2) == expected
    assert round(ours, 2) == expected
    assert ours == pytest.approx(direct, rel=1e-6)


def test_full_participation_reference_values():
    for accountant, expected in (("pld", 4.377), ("rdp", 4.729)):
        direct = _direct(_sampled_gaussian(10.0, 1.0, 100), accountant)
        ours = epsilon(10.0, 1.0, 100, DELTA, accountant=accountant)
        assert ours == pytest.approx(expected, abs=2e-3)
        assert ours == pytest.approx(direct, rel=1e-4)
    assert round(epsilon(10.0, 1.0, 100, DELTA), 1) == 4.4


@pytest.mark.parametrize(
    ("theta", "expected"), [(0.0, 10.0), (0.5, 20.0), (-0.5, 20.0), (0.9, 73.8)]
)
def test_ou_whitening_bound_reference_values(theta, expected):
    direct = _direct(_ou(5.0, theta, 100), "pld")
    ours = epsilon(5.0, 1.0, 100, DELTA, theta=theta, accountant="pld")
    assert direct == pytest.approx(expected, rel=0.01)
    assert ours == pytest.approx(expected, rel=0.01)
    assert ours == pytest.approx(direct, rel=1e-4)
    assert epsilon(5.0, 1.0, 100, DELTA, theta=theta, accountant="rdp") == pytest.approx(
        _direct(_ou(5.0, theta, 100), "rdp"), rel=1e-9
    )


def test_correlated_noise_costs_far_more_than_independent_noise():
    independent = epsilon(5.0, 1.0, 100, DELTA)
    assert epsilon(5.0, 1.0, 100, DELTA, theta=0.9) > 5 * independent
    assert epsilon(5.0, 1.0, 1, DELTA, theta=0.9) == pytest.approx(epsilon(5.0, 1.0, 1, DELTA))
    assert ou_effective_multiplier(5.0, 0.9) == pytest.approx(5.0 * math.sqrt(0.1 / 1.9))


def test_ou_with_subsampling_is_rejected():
    with pytest.raises(ValueError, match="every client takes part in every round"):
        epsilon(5.0, 0.5, 100, DELTA, theta=0.5)
    with pytest.raises(ValueError, match="every client"):
        noise_for_epsilon(5.0, 0.5, 100, DELTA, theta=0.5)
    with pytest.raises(ValueError, match="every client"):
        PrivacyEvent(5.0, 0.5, "ou", 0.5)


def test_gaussian_epsilon_matches_the_pld_accountant():
    for mu in (0.2, 1.0, 3.0):
        direct = _direct(dp_accounting.GaussianDpEvent(1 / mu), "pld")
        assert gaussian_epsilon(mu, DELTA) == pytest.approx(direct, rel=1e-4)
    assert gaussian_epsilon(0.0, DELTA) == 0.0


def test_edge_cases_and_monotonicity():
    assert epsilon(0.0, 0.1, 10, DELTA) == math.inf
    assert epsilon(1.0, 0.1, 0, DELTA) == 0.0
    assert epsilon(1.0, 0.01, 100, DELTA) < epsilon(1.0, 0.01, 200, DELTA)
    assert epsilon(1.0, 0.01, 100, DELTA) < epsilon(1.0, 0.02, 100, DELTA)
    assert epsilon(2.0, 0.01, 100, DELTA) < epsilon(1.0, 0.01, 100, DELTA)
    assert epsilon(0.1, 0.01, 1000, DELTA, accountant="pld") > 500  # huge losses: RDP fallback
    with pytest.raises(ValueError, match="delta"):
        epsilon(1.0, 0.1, 10, 0.0)
    with pytest.raises(ValueError, match="accountant"):
        epsilon(1.0, 0.1, 10, DELTA, accountant="moments")  # type: ignore[arg-type]
    assert accounted_sampling_rate("central", 0.1) == 0.1
    assert accounted_sampling_rate("local", 0.1) == accounted_sampling_rate("distributed", 0.1) == 1


@pytest.mark.parametrize(
    ("q", "rounds", "theta", "accountant"),
    [(0.01, 1000, 0.0, "rdp"), (0.01, 1000, 0.0, "pld"), (1.0, 100, 0.9, "pld")],
)
def test_noise_for_epsilon_finds_the_smallest_sufficient_multiplier(q, rounds, theta, accountant):
    z = noise_for_epsilon(2.0, q, rounds, DELTA, theta=theta, accountant=accountant)
    assert epsilon(z, q, rounds, DELTA, theta=theta, accountant=accountant) <= 2.0
    assert epsilon(z * 0.995, q, rounds, DELTA, theta=theta, accountant=accountant) > 2.0


# ------------------------------------------------------------------- ledger


def test_ledger_matches_dp_accounting_for_mixed_events():
    events = [PrivacyEvent(1.1, 0.05)] * 30 + [PrivacyEvent(0.9, 0.1)] * 20
    events += [PrivacyEvent(4.0, 1.0, "ou", 0.5)] * 10
    later = 4.0 * math.sqrt(0.5 / 1.5)
    expected = dp_accounting.ComposedDpEvent(
        [
            _sampled_gaussian(1.1, 0.05, 30),
            _sampled_gaussian(0.9, 0.1, 20),
            dp_accounting.GaussianDpEvent(4.0),
            _sampled_gaussian(later, 1.0, 9),
        ]
    )
    for accountant in ("rdp", "pld"):
        ledger = PrivacyLedger(DELTA, accountant=accountant)
        for event in events:
            ledger.record(event)
        direct = _direct(expected, accountant)
        assert ledger.epsilon() == pytest.approx(direct, rel=1e-3)
        assert _direct(dp_event(events), accountant) == pytest.approx(direct, rel=1e-9)


def test_ledger_stops_at_the_budget():
    ledger = PrivacyLedger(DELTA, epsilon_budget=2.0, accountant="pld")
    event = PrivacyEvent(1.0, 0.05)
    while not ledger.would_exceed(event):
        before = ledger.epsilon()
        assert ledger.record(event) > before
    assert ledger.epsilon() <= 2.0 < ledger.epsilon_with(event)
    assert ledger.rounds == len(ledger.history) == 20
    assert ledger.history == sorted(ledger.history)
    # one round at a time (convolutions) agrees with composing all at once
    assert ledger.epsilon() == pytest.approx(epsilon(1.0, 0.05, ledger.rounds, DELTA), rel=1e-6)
    assert not PrivacyLedger(DELTA).would_exceed(event)  # no budget, never stops


def test_ledger_round_trips_through_json_and_recomputes_epsilon():
    ledger = PrivacyLedger(DELTA, epsilon_budget=80.0, accountant="rdp", private=False)
    for _ in range(5):
        ledger.record(PrivacyEvent(3.0, 1.0, "ou", 0.7))
    data = json.loads(json.dumps(ledger.to_dict()))
    restored = PrivacyLedger.from_dict(data)
    assert restored.to_dict() == ledger.to_dict()
    assert not restored.private and restored.epsilon_budget == 80.0
    next_event = PrivacyEvent(3.0, 1.0, "ou", 0.7)
    assert restored.record(next_event) == ledger.record(next_event)  # OU continues, not restarts
    data["history"][-1] = 0.0  # a stale or tampered number does not survive a load
    assert PrivacyLedger.from_dict(data).epsilon() == pytest.approx(ledger.history[-2])
    with pytest.raises(ValueError, match="format"):
        PrivacyLedger.from_dict({**data, "format": "x"})
    with pytest.raises(ValueError, match="length"):
        PrivacyLedger.from_dict({**data, "history": []})
    with pytest.raises(ValueError, match="unknown"):
        PrivacyEvent.from_dict({"noise_multiplier": 1.0, "sigma": 2})


def test_privacy_event_validation():
    with pytest.raises(ValueError, match="theta"):
        PrivacyEvent(1.0, 1.0, "gaussian", 0.5)
    with pytest.raises(ValueError, match="sampling rate"):
        PrivacyEvent(1.0, 0.0)
    with pytest.raises(ValueError, match="noise multiplier"):
        PrivacyEvent(-1.0)
    with pytest.raises(ValueError, match="mechanism"):
        PrivacyEvent(1.0, 1.0, "laplace")  # type: ignore[arg-type]
