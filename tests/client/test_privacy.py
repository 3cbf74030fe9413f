"""MemberPrivacy: clipping and the member's noise share, OU state, the record-level ledger."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fedaas.algorithms.accounting import dp_sgd_schedule, record_epsilon_after
from fedaas.algorithms.privacy import global_norm
from fedaas.client.privacy import BudgetSpent, MemberPrivacy
from fedaas.protocol import ClientPrivacy, NoPrivacy, RecordPrivacy
from fedaas.spec import TrainSection
from fedaas.spec_privacy import PrivacyGaussian, PrivacyNone, PrivacyRecord

CFG = TrainSection(batch_size=8, epochs=1)
N = 60  # examples of the member


def client(placement: str = "central", **settings: object) -> ClientPrivacy:
    return ClientPrivacy.model_validate(
        {"mechanism": "gaussian", "placement": placement, "clip_norm": 1.0, **settings}
    )


def record(budget: float | None = None, z: float = 2.0) -> RecordPrivacy:
    return RecordPrivacy(noise_multiplier=z, clip_norm=1.0, delta=1e-5, epsilon_budget=budget)


def spent(rounds: int, z: float = 2.0) -> float:
    q, steps = dp_sgd_schedule(N, CFG.batch_size, CFG.epochs)
    return record_epsilon_after(rounds, steps, q, z, 1e-5, accountant="pld")


# ---------------------------------------------------------------- client level


def test_privatize_clips_to_the_norm_and_says_whether_it_had_to(tmp_path: Path) -> None:
    member = MemberPrivacy(tmp_path, "member")
    big = {"w": np.full(100, 1.0, dtype=np.float32), "b": np.full(3, -2.0, dtype=np.float32)}
    update, unclipped = member.privatize(big, client(clip_norm=0.5), job_id="j", number=1)
    assert not unclipped and global_norm(update) <= 0.5
    assert global_norm(update) == pytest.approx(0.5, rel=1e-5)
    assert update["w"].dtype == np.float32
    np.testing.assert_allclose(update["w"] / update["w"][0], 1.0)  # direction kept
    small = {"w": np.full(4, 0.1, dtype=np.float32)}
    update, unclipped = member.privatize(small, client(), job_id="j", number=1)
    assert unclipped and np.array_equal(update["w"], small["w"])  # central: no member noise
    for instructions in (NoPrivacy(), record()):
        same, unclipped = member.privatize(big, instructions, job_id="j", number=1)
        assert same is big and unclipped
    assert not list(tmp_path.iterdir())  # nothing to keep for these


def test_local_noise_has_the_std_the_coordinator_asked_for(tmp_path: Path) -> None:
    member = MemberPrivacy(tmp_path, "member")
    zero = {"w": np.zeros(200_000, dtype=np.float32)}
    update, unclipped = member.privatize(zero, client("local", noise_std=0.7), job_id="j", number=1)
    assert unclipped and update["w"].dtype == np.float32
    assert float(np.mean(update["w"])) == pytest.approx(0.0, abs=0.01)
    assert float(np.std(update["w"])) == pytest.approx(0.7, rel=0.01)
    again, _ = member.privatize(zero, client("local", noise_std=0.7), job_id="j", number=1)
    assert not np.array_equal(again["w"], update["w"])  # fresh, secure noise every time


def test_reproducible_noise_repeats_per_member_and_differs_between_members(
    tmp_path: Path,
) -> None:
    instructions = client("distributed", noise_std=1.0, reproducible=True, seed=3)
    zero = {"w": np.zeros(1000, dtype=np.float32)}
    first, _ = MemberPrivacy(tmp_path, "a").privatize(zero, instructions, job_id="j", number=2)
    again, _ = MemberPrivacy(tmp_path, "a").privatize(zero, instructions, job_id="j", number=2)
    other, _ = MemberPrivacy(tmp_path, "b").privatize(zero, instructions, job_id="j", number=2)
    assert np.array_equal(first["w"], again["w"]) and not np.array_equal(first["w"], other["w"])


def test_member_ou_noise_survives_a_restart(tmp_path: Path) -> None:
    """Local OU noise: the state file continues the AR(1) process across agent restarts."""
    instructions = client("local", mechanism="ou", noise_std=1.0, theta=0.9)
    zero = {"w": np.zeros(20_000, dtype=np.float32)}
    first, _ = MemberPrivacy(tmp_path, "member").privatize(
        zero, instructions, job_id="job-x", number=1
    )
    # a "restarted" agent has nothing in memory; only the state folder remains
    second, _ = MemberPrivacy(tmp_path, "member").privatize(
        zero, instructions, job_id="job-x", number=2
    )
    correlation = np.corrcoef(first["w"], second["w"])[0, 1]
    assert correlation == pytest.approx(0.9, abs=0.02)
    fresh, _ = MemberPrivacy(tmp_path / "other", "member").privatize(
        zero, instructions, job_id="job-x", number=1
    )
    assert abs(np.corrcoef(second["w"], fresh["w"])[0, 1]) < 0.05


# ---------------------------------------------------------------- record level


def test_record_round_is_written_to_the_ledger_before_training(tmp_path: Path) -> None:
    member = MemberPrivacy(tmp_path / "state", "member")
    assert member.rounds_spent("j") == 0
    metrics = member.start_record_round("j", record(budget=100.0), N, CFG)
    # the agent has not trained yet: the round already counts (a crash can't undo it)
    ledger = json.loads(member.ledger_path().read_text())
    assert ledger["dataset"] == member.dataset and [e["job"] for e in ledger["rounds"]] == ["j"]
    assert metrics == {
        "record_epsilon": pytest.approx(spent(1), rel=1e-12),
        "record_epsilon_next": pytest.approx(spent(2), rel=1e-12),
    }
    restarted = MemberPrivacy(tmp_path / "state", "member")
    metrics = restarted.start_record_round("j", record(), N, CFG)
    assert restarted.rounds_spent("j") == 2 and restarted.rounds_spent("other-job") == 0
    assert metrics == {"record_epsilon": pytest.approx(spent(2), rel=1e-12)}  # no budget: no next
    assert member.start_record_round("k", record(z=0.0), N, CFG) == {}  # epsilon is infinite


def test_budget_spent_is_raised_before_the_round_is_counted(tmp_path: Path) -> None:
    member = MemberPrivacy(tmp_path, "member")
    with pytest.raises(BudgetSpent, match="record-level privacy budget reached: after 0 round"):
        member.start_record_round("j", record(budget=spent(1) / 2), N, CFG)
    assert not member.ledger_path().exists()  # nothing spent, no record touched
    budget = (spent(2) + spent(3)) / 2  # room for 2 rounds
    for _ in range(2):
        member.start_record_round("j", record(budget=budget), N, CFG)
    with pytest.raises(BudgetSpent, match="after 2 round"):
        member.start_record_round("j", record(budget=budget), N, CFG)
    assert member.rounds_spent("j") == 2


def test_the_ledger_is_per_dataset_so_a_new_job_id_does_not_reset_the_budget(
    tmp_path: Path,
) -> None:
    """Issue 9: a coordinator that renames the job every round gets no fresh budget."""
    member = MemberPrivacy(tmp_path, "file:///data/members.npz")
    budget = (spent(2) + spent(3)) / 2  # room for 2 rounds on this dataset, whatever the job
    member.start_record_round("job-aaaa", record(budget=budget), N, CFG)
    second = member.start_record_round("job-bbbb", record(budget=budget), N, CFG)
    assert second["record_epsilon"] == pytest.approx(spent(2), rel=1e-9)  # composed across jobs
    with pytest.raises(BudgetSpent, match="after 2 round.*all jobs"):
        member.start_record_round("job-cccc", record(budget=budget), N, CFG)
    assert member.rounds_spent() == 2 and member.rounds_spent("job-cccc") == 0
    assert "job-" not in member.ledger_path().name  # keyed by the dataset, not a job id
    # another dataset of the same member has its own ledger
    other = MemberPrivacy(tmp_path, "file:///data/other.npz")
    assert other.ledger_path() != member.ledger_path()
    assert other.start_record_round("job-cccc", record(budget=budget), N, CFG)


def test_the_member_policy_caps_epsilon_below_the_jobs_budget(tmp_path: Path) -> None:
    member = MemberPrivacy(tmp_path, "member")
    cap = (spent(1) + spent(2)) / 2
    member.start_record_round("j", record(budget=100.0), N, CFG, max_epsilon=cap)
    with pytest.raises(BudgetSpent, match=f"> {cap:g}"):
        member.start_record_round("j", record(budget=100.0), N, CFG, max_epsilon=cap)
    # rounds with another noise multiplier compose with the earlier ones (heterogeneous ledger)
    mixed = member.start_record_round("k", record(z=4.0), N, CFG)
    assert spent(1) < mixed["record_epsilon"] < spent(2)


def test_unsafe_job_ids_never_name_a_state_file(tmp_path: Path) -> None:
    from fedaas.client.statepaths import UnsafeName

    member = MemberPrivacy(tmp_path / "state", "member")
    zero = {"w": np.zeros(4, np.float32)}
    ou = client("local", mechanism="ou", noise_std=0.1, theta=0.5)
    for bad in ("x/../../../../elsewhere/NAME", "..", "a/b", "job\\x", "j\u00e9b", ""):
        with pytest.raises(UnsafeName):
            member.privatize(zero, ou, job_id=bad, number=1)
    assert not (tmp_path / "elsewhere").exists() and list(tmp_path.iterdir()) == []


def _client_spec(budget: float | None) -> PrivacyGaussian:
    return PrivacyGaussian(
        mechanism="gaussian", noise_multiplier=2.0, clip_norm=1.0, epsilon_budget=budget
    )


def test_client_level_budgets_add_up_per_dataset_and_a_refusal_writes_nothing(
    tmp_path: Path,
) -> None:
    member = MemberPrivacy(tmp_path, "s3://bucket/hospital-a.npz")
    member.commit_job("job-1", _client_spec(5.0), max_epsilon=8.0)
    member.commit_job("job-1", _client_spec(5.0), max_epsilon=8.0)  # a restart: counted once
    with pytest.raises(BudgetSpent, match="committed epsilon 5; job job-2's epsilon_budget 4"):
        member.commit_job("job-2", _client_spec(4.0), max_epsilon=8.0)
    assert member.commitments() == {"job-1": 5.0}
    member.commit_job("job-3", _client_spec(3.0), max_epsilon=8.0)
    assert member.commitments() == {"job-1": 5.0, "job-3": 3.0}
    other = MemberPrivacy(tmp_path, "s3://bucket/hospital-b.npz")  # other data: its own sum
    other.commit_job("job-2", _client_spec(4.0), max_epsilon=8.0)
    assert other.commitments() == {"job-2": 4.0}


def test_only_a_client_level_budget_under_a_cap_is_committed(tmp_path: Path) -> None:
    member = MemberPrivacy(tmp_path, "/data/a.npz")
    member.commit_job("no-cap", _client_spec(5.0), max_epsilon=None)
    member.commit_job("no-budget", _client_spec(None), max_epsilon=8.0)
    member.commit_job("none", PrivacyNone(mechanism="none"), max_epsilon=8.0)
    record = PrivacyRecord(
        mechanism="gaussian", unit="record", noise_multiplier=2.0, clip_norm=1.0, epsilon_budget=5.0
    )
    member.commit_job("record", record, max_epsilon=8.0)  # the DP-SGD ledger counts those
    assert member.commitments() == {}
