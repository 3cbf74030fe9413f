"""Canary audits: the attacker's empirical epsilon must stay below the reported epsilon.

Jagielski et al. (NeurIPS 2020), Nasr et al. (IEEE S&P 2021): many trials of
the mechanism itself (not whole federations), with and without a canary whose
clipped contribution points along a fixed direction, as the party the
guarantee is about sees them: the noised sum (central), a member's uploads
(local, as the coordinator sees them), the OU-noised models, DP-SGD's
noised gradient sums (record level). The noise comes from fedaas's own
functions (``JobPrivacy.central_noise``, ``MemberPrivacy.privatize``,
``OUNoise``, the secure source). Clopper-Pearson at 95%, threshold picked on
held-out trials. Each audit must also have power (a clear lower bound), and
two audits show the test can fail: OU noise accounted as independent rounds,
and distributed shares as the coordinator sees them (why ``distributed`` is
refused).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fedaas.algorithms.accounting import epsilon, record_epsilon_after
from fedaas.algorithms.audit import (
    audit_gaussian,
    audit_ou,
    clopper_pearson,
    epsilon_lower_bound,
    gaussian_scores,
)
from fedaas.algorithms.privacy import noise_std
from fedaas.client.privacy import MemberPrivacy
from fedaas.protocol import ClientPrivacy
from fedaas.server.privacy import JobPrivacy
from fedaas.spec import parse_spec

DELTA = 1e-5
TRIALS = 100_000  # per world; half picks the threshold, half gives the bound


def test_clopper_pearson_bounds() -> None:
    lo, hi = clopper_pearson(50, 100)
    assert 0.40 < lo < 0.42 and 0.58 < hi < 0.60
    assert clopper_pearson(0, 10)[0] == 0.0 and clopper_pearson(10, 10)[1] == 1.0
    with pytest.raises(ValueError):
        clopper_pearson(11, 10)


def test_no_canary_no_bound() -> None:
    """Two identical worlds: the attack proves nothing (the bound is not an artefact)."""
    rng = np.random.default_rng(0)
    assert epsilon_lower_bound(rng.normal(size=TRIALS), rng.normal(size=TRIALS), DELTA) < 0.1


def _job_privacy(z: float, **privacy: object) -> JobPrivacy:
    spec = parse_spec(
        {
            "job": {"name": "audit", "rounds": 10},
            "model": {"name": "logreg"},
            "data": {"features": 4, "classes": 2},
            "privacy": {"mechanism": "gaussian", "noise_multiplier": z, **privacy},
        }
    )
    privacy_state = JobPrivacy(spec, None, None)
    privacy_state.sample(1, [1], [1])
    return privacy_state


def test_central_gaussian_audit_stays_below_the_reported_epsilon() -> None:
    z, rounds = 1.0, 4
    job = _job_privacy(z)  # the coordinator's own noise function, clip norm 1
    worlds = [
        job.central_noise({"n": (TRIALS * rounds,)}, 1)["n"].reshape(TRIALS, rounds)
        for _ in range(2)
    ]
    present = gaussian_scores(worlds[0], z, canary=True)
    absent = gaussian_scores(worlds[1], z, canary=False)
    lower, reported = epsilon_lower_bound(present, absent, DELTA), epsilon(z, 1.0, rounds, DELTA)
    assert 2.5 < lower < reported


def test_central_poisson_sampled_audit_stays_below_the_reported_epsilon() -> None:
    """Amplification by subsampling holds for the sampling fedaas uses (q = 0.1)."""
    z, q, rounds = 0.5, 0.1, 2
    audit = audit_gaussian(
        "central q=0.1", TRIALS, rounds, z, epsilon(z, q, rounds, DELTA), DELTA, q
    )
    assert 2.0 < audit.lower_bound < audit.reported


def test_local_noise_audit_of_a_members_uploads_as_the_coordinator_sees_them(
    tmp_path: Path,
) -> None:
    z, rounds = 1.0, 4
    member = MemberPrivacy(tmp_path, "canary")
    instructions = ClientPrivacy(
        mechanism="gaussian", placement="local", clip_norm=1.0, noise_std=noise_std(z, 1.0, "local")
    )
    worlds = []
    for _ in range(2):  # the member's own privatize() on a zero update: its noise alone
        zero = {"u": np.zeros(TRIALS * rounds, dtype=np.float32)}
        noised, _ = member.privatize(zero, instructions, job_id="j", number=1)
        worlds.append(noised["u"].reshape(TRIALS, rounds))
    present = gaussian_scores(worlds[0], z, canary=True)
    absent = gaussian_scores(worlds[1], z, canary=False)
    lower = epsilon_lower_bound(present, absent, DELTA)
    assert 2.5 < lower < epsilon(z, 1.0, rounds, DELTA)  # local: accounted with q = 1


def test_ou_audit_stays_below_the_whitening_bound_and_breaks_independent_accounting() -> None:
    z, theta, rounds = 8.0, 0.9, 5
    audit = audit_ou(
        "ou", TRIALS, rounds, z, theta, epsilon(z, 1.0, rounds, DELTA, theta=theta), DELTA
    )
    assert audit.lower_bound < audit.reported
    naive = epsilon(z, 1.0, rounds, DELTA)  # OU rounds wrongly accounted as independent
    assert audit.lower_bound > naive + 0.5


def test_record_level_dp_sgd_audit_stays_below_the_members_epsilon() -> None:
    """DP-SGD steps on a canary record: Poisson rate q, noise z on each step's sum."""
    q, z, steps = 0.1, 0.6, 10
    reported = record_epsilon_after(1, steps, q, z, DELTA, accountant="pld")
    audit = audit_gaussian("record", TRIALS, steps, z, reported, DELTA, q)
    assert 2.0 < audit.lower_bound < audit.reported


def test_distributed_shares_would_break_the_epsilon_fedaas_used_to_report() -> None:
    """z = 4, quorum 10, T = 5: each upload carries z/sqrt(10); the coordinator sees it alone."""
    z, quorum, rounds = 4.0, 10, 5
    share = noise_std(z, 1.0, "distributed", members=quorum)
    audit = audit_gaussian(
        "distributed", TRIALS, rounds, share, epsilon(z, 1.0, rounds, DELTA), DELTA
    )
    assert audit.lower_bound > audit.reported + 1.0  # hence refused at spec validation
