"""JobPrivacy: the coordinator's one owner of a job's privacy state, round by round.

Reference values come from :mod:`fedaas.algorithms.accounting` (itself tested
against dp-accounting); what is checked here is that the job's object asks
the accountant the right questions, stops at the budget (client and record
level), and restores exactly the same state from what it persisted.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fedaas.algorithms.accounting import epsilon
from fedaas.protocol import ClientPrivacy, NoPrivacy, RecordPrivacy
from fedaas.server.privacy import BudgetReached, JobPrivacy, PrivacyError
from fedaas.spec import JobSpec, parse_spec

Z, DELTA = 2.0, 1e-5


def job_spec(per_round: int | None = None, **privacy: Any) -> JobSpec:
    return parse_spec(
        {
            "job": {"name": "dp", "rounds": 50, "seed": 7},
            "model": {"name": "logreg"},
            "data": {"features": 4, "classes": 2},
            "federation": {} if per_round is None else {"clients_per_round": per_round},
            "privacy": privacy,
        }
    )


def run_round(
    privacy: JobPrivacy,
    number: int,
    eligible: int = 10,
    member_metrics: list[tuple[int, dict[str, float]]] | None = None,
) -> dict[str, Any]:
    chosen = privacy.sample(number, list(range(eligible)), list(range(eligible)))
    privacy.open_round(number, eligible)
    return privacy.close_round(
        number,
        unclipped=len(chosen) // 2,
        reported=len(chosen),
        member_metrics=member_metrics or [],
    )


def restored(privacy: JobPrivacy, spec: JobSpec, ou_path: Path | None = None) -> JobPrivacy:
    """A JobPrivacy rebuilt the way a restarted coordinator does: from stored JSON."""
    return JobPrivacy(spec, json.loads(json.dumps(privacy.persisted())), ou_path)


def test_client_level_epsilon_every_round_and_the_budget_stop() -> None:
    q = 0.5
    budget = (epsilon(Z, q, 3, DELTA) + epsilon(Z, q, 4, DELTA)) / 2  # room for 3 rounds
    privacy = JobPrivacy(
        job_spec(5, mechanism="gaussian", noise_multiplier=Z, epsilon_budget=budget), None, None
    )
    assert privacy.active and privacy.client_level
    for t in (1, 2, 3):
        metrics = run_round(privacy, t, eligible=10)
        assert metrics == {
            "epsilon": pytest.approx(epsilon(Z, q, t, DELTA), rel=1e-9),
            "delta": DELTA,
            "clip_norm": 1.0,
            "private": True,
            "sampling_rate": q,
            "population": 10,
            "amplification": True,
        }
    with pytest.raises(BudgetReached, match=r"privacy budget reached: epsilon .* after round 3"):
        privacy.open_round(4, 10)
    assert privacy.ledger is not None and privacy.ledger.rounds == 3  # nothing was recorded


def test_client_level_weights_denominator_and_instructions() -> None:
    privacy = JobPrivacy(
        job_spec(
            9, mechanism="ou", noise_multiplier=Z, theta=0.5, placement="local", clip_norm=0.5
        ),
        None,
        None,
    )
    privacy.sample(1, list(range(10)), list(range(10)))
    assert privacy.weight(123) == 1.0 and privacy.denominator(7) == pytest.approx(9.0)  # q*N
    assert privacy.instructions() == ClientPrivacy(
        mechanism="ou", placement="local", clip_norm=0.5, noise_std=Z * 0.5, theta=0.5, seed=7
    )
    privacy.open_round(1, 10)  # local noise is accounted with q = 1 whoever is sampled
    metrics = privacy.close_round(1, unclipped=0, reported=9, member_metrics=[])
    assert metrics["sampling_rate"] == 1.0 and metrics["amplification"] is False
    assert "coordinator, which knows who it sampled" in metrics["amplification_note"]
    central = JobPrivacy(job_spec(9, mechanism="ou", noise_multiplier=Z, theta=0.5), None, None)
    with pytest.raises(PrivacyError, match="OU noise needs every member"):
        central.open_round(1, 10)
    none = JobPrivacy(job_spec(), None, None)
    assert not none.active and none.instructions() == NoPrivacy()
    assert none.weight(123) == 123.0 and none.denominator(10) is None
    none.open_round(1, 10)
    assert none.close_round(1, unclipped=0, reported=1, member_metrics=[]) == {}
    assert none.persisted() == {} and none.central_noise({"w": (3,)}, 1) is None


def test_persisted_state_restores_the_same_ledger_and_clip_norm() -> None:
    spec = job_spec(
        mechanism="gaussian", noise_multiplier=Z, adaptive_clipping=True, reproducible=True
    )
    privacy = JobPrivacy(spec, None, None)
    for t in (1, 2, 3):
        run_round(privacy, t, eligible=40)
    assert privacy.clip_norm != 1.0  # adaptive clipping moved it
    again = restored(privacy, spec)
    assert again.persisted() == privacy.persisted()
    assert again.clip_norm == privacy.clip_norm
    assert again.instructions() == privacy.instructions()
    assert run_round(again, 4, eligible=40) == run_round(
        privacy, 4, eligible=40
    )  # reproducible: the same sample and count noise, so the same clip norm


def test_close_round_without_open_round_is_a_bug() -> None:
    privacy = JobPrivacy(job_spec(mechanism="gaussian", noise_multiplier=Z), None, None)
    with pytest.raises(RuntimeError, match="without open_round"):
        privacy.close_round(1, unclipped=1, reported=1, member_metrics=[])
    with pytest.raises(RuntimeError, match="without open_round"):
        privacy.record_release(1)


def test_record_level_budget_stops_the_job_via_open_round_and_survives_a_restart() -> None:
    spec = job_spec(unit="record", noise_multiplier=1.0, epsilon_budget=3.0, accountant="rdp")
    privacy = JobPrivacy(spec, None, None)
    assert privacy.active and privacy.record_level and not privacy.client_level
    # members send no example count under DP: a plain mean over the reports
    assert privacy.weight(None) == 1.0 and privacy.denominator(10) == 10.0
    assert privacy.instructions() == RecordPrivacy(
        noise_multiplier=1.0,
        clip_norm=1.0,
        delta=DELTA,
        accountant="rdp",
        epsilon_budget=3.0,
        seed=7,
    )
    reports = [
        (30, {"train_loss": 0.5, "record_epsilon": 1.0, "record_epsilon_next": 2.0}),
        (60, {"train_loss": 0.4, "record_epsilon": 1.5, "record_epsilon_next": 2.5}),
    ]
    metrics = run_round(privacy, 1, eligible=2, member_metrics=reports)
    assert metrics == {
        "record_epsilon": 1.5,
        "delta": DELTA,
        "record_epsilon_next": 2.5,
        "private": True,
    }
    assert privacy.persisted() == {"record_epsilon_next": 2.5}
    # a round where nobody reports a next epsilon keeps the running maximum
    assert run_round(privacy, 2, eligible=2) == {"private": True}
    later = [(30, {"record_epsilon": 2.5, "record_epsilon_next": 3.2})]
    run_round(privacy, 3, eligible=2, member_metrics=later)
    message = r"after round 3, one more round of DP-SGD would bring a member's record-level epsilon"
    with pytest.raises(BudgetReached, match=message):
        privacy.open_round(4, 2)
    with pytest.raises(BudgetReached, match="record-level"):
        privacy.check_budget(4)  # before waiting for members: no sampling needed
    again = restored(privacy, spec)
    assert again.record is not None and again.record.epsilon_next == 3.2
    with pytest.raises(BudgetReached, match="record-level"):
        again.open_round(4, 2)


def test_central_gaussian_noise_has_std_z_times_clip_norm() -> None:
    privacy = JobPrivacy(
        job_spec(mechanism="gaussian", noise_multiplier=Z, clip_norm=0.5), None, None
    )
    noise = privacy.central_noise({"w": (200_000,), "b": (3,)}, 1)
    assert noise is not None and set(noise) == {"w", "b"} and noise["w"].dtype == np.float32
    assert float(np.std(noise["w"])) == pytest.approx(Z * 0.5, rel=0.01)
    local = JobPrivacy(
        job_spec(mechanism="gaussian", noise_multiplier=Z, placement="local"), None, None
    )
    assert local.central_noise({"w": (3,)}, 1) is None


def test_central_ou_noise_state_is_saved_and_continues_after_a_restart(tmp_path: Path) -> None:
    spec = job_spec(mechanism="ou", noise_multiplier=1.0, theta=0.9)
    privacy = JobPrivacy(spec, None, None)
    path = tmp_path / "ou.safetensors"
    assert privacy.save_ou(path) is False and not path.exists()  # no noise drawn yet
    manifest = {"w": (20_000,)}
    first = privacy.central_noise(manifest, 1)
    assert first is not None and privacy.save_ou(path) is True
    again = JobPrivacy(spec, json.loads(json.dumps(privacy.persisted())), path)
    second = again.central_noise(manifest, 2)
    assert second is not None
    correlation = float(np.corrcoef(first["w"], second["w"])[0, 1])
    assert correlation == pytest.approx(0.9, abs=0.02)
    assert math.isclose(float(np.std(second["w"])), 1.0, rel_tol=0.03)


def test_a_reproducible_record_level_run_is_flagged_not_private() -> None:
    spec = job_spec(unit="record", noise_multiplier=1.0, reproducible=True)
    privacy = JobPrivacy(spec, None, None)
    assert run_round(privacy, 1, eligible=2)["private"] is False


def test_the_release_is_recorded_before_the_round_closes_and_counted_again_on_a_rerun() -> None:
    """A round whose model may have been written is in the stored ledger; a rerun adds another."""
    spec = job_spec(mechanism="gaussian", noise_multiplier=Z)
    privacy = JobPrivacy(spec, None, None)
    privacy.sample(1, list(range(4)), list(range(4)))
    privacy.open_round(1, 4)
    privacy.record_release(1)
    privacy.record_release(1)  # idempotent
    stored = json.loads(json.dumps(privacy.persisted()))  # what the runner saves before the model
    assert stored["ledger"]["events"] and len(stored["ledger"]["events"]) == 1
    # the coordinator crashes here; the restarted one reruns round 1 with fresh noise
    again = JobPrivacy(spec, stored, None)
    metrics = run_round(again, 1, eligible=4)
    assert again.ledger is not None and again.ledger.rounds == 2
    assert metrics["epsilon"] == pytest.approx(epsilon(Z, 1.0, 2, DELTA), rel=1e-9)
