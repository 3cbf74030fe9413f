"""Members that miss a training deadline sit out 1, 2, 4, ... rounds, unless the quorum needs them."""

from __future__ import annotations

from types import SimpleNamespace

from fedaas.algorithms.server_optimizers import ServerOptimizer
from fedaas.server.eligibility import candidates, note_misses
from fedaas.server.privacy import JobPrivacy
from fedaas.server.rounds import ActiveJob, RoundState
from fedaas.spec import parse_spec
from fixtures.specs import make_spec


def _job(min_clients: int) -> ActiveJob:
    spec = parse_spec(make_spec(clients=None, min_clients=min_clients))
    manifest = {"w": (2,)}
    return ActiveJob(
        id="job-x",
        spec=spec,
        manifest=manifest,
        max_upload=1,
        completed_round=0,
        privacy=JobPrivacy(spec, None, None),
        optimizer=ServerOptimizer("fedavg", manifest, 1.0),
    )


MEMBERS = [SimpleNamespace(id=i, name=f"m{i}", revoked_at=None) for i in (1, 2, 3)]


def _round(job: ActiveJob, number: int, reported: set[int]) -> None:
    state = RoundState(number=number, deadline=0.0, sampled={1: "m1", 2: "m2", 3: "m3"})
    state.reported = dict.fromkeys(reported, 10)
    note_misses(job, state)


def test_a_member_that_keeps_missing_sits_out_longer_each_time() -> None:
    job = _job(min_clients=1)
    _round(job, 1, {1, 2})  # m3 misses once: sits out round 2
    assert set(candidates(MEMBERS, job, 2)[1]) == {1, 2}
    assert set(candidates(MEMBERS, job, 3)[1]) == {1, 2, 3}
    _round(job, 3, {1, 2})  # second miss in a row: rounds 4 and 5
    assert [3 in candidates(MEMBERS, job, n)[1] for n in (4, 5, 6)] == [False, False, True]
    _round(job, 6, {1, 2, 3})  # it answered: the record is cleared
    assert job.missed == {} and set(candidates(MEMBERS, job, 7)[1]) == {1, 2, 3}


def test_the_quorum_takes_benched_members_back() -> None:
    job = _job(min_clients=3)
    _round(job, 1, {1, 2})
    everyone, eligible = candidates(MEMBERS, job, 2)
    assert set(everyone) == set(eligible) == {1, 2, 3}
