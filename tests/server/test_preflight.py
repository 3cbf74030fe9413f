"""What ``job submit`` and the dashboard flag before a job runs (pure: spec + member list)."""

from __future__ import annotations

from fedaas.protocol import MemberInfo
from fedaas.server.preflight import preflight
from fedaas.spec import parse_spec
from fixtures.specs import make_spec


def _members(online: int, offline: int = 0, revoked: int = 0) -> list[MemberInfo]:
    states = [(True, False)] * online + [(False, False)] * offline + [(False, True)] * revoked
    return [
        MemberInfo(id=i, name=f"m{i}", online=on, revoked=gone)
        for i, (on, gone) in enumerate(states)
    ]


def test_too_few_enrolled_members_block_the_job(spec_data: dict) -> None:
    found = preflight(parse_spec(spec_data), _members(3))  # the unedited example
    assert found.blocking == [
        "federation.min_clients is 10 but only 3 member(s) are enrolled: no round can reach "
        "its quorum (enroll more members or lower min_clients)"
    ]
    assert not any("no evaluation" in note for note in found.notes)  # it evaluates (issue 11)
    del spec_data["evaluation"]
    bare = preflight(parse_spec(spec_data), _members(3))
    assert any("no evaluation" in note for note in bare.notes)


def test_revoked_members_do_not_count_and_offline_ones_are_named() -> None:
    spec = parse_spec(make_spec(min_clients=3, clients=None))
    assert "only 2 member(s) are enrolled" in preflight(spec, _members(2, revoked=4)).blocking[0]
    waiting = preflight(spec, _members(1, offline=2)).blocking
    assert waiting and "only 1 of 3 enrolled member(s) are online" in waiting[0]


def test_a_job_that_can_run_and_evaluates_is_not_flagged() -> None:
    spec = parse_spec(make_spec(min_clients=2, clients=2, evaluation={"validation_split": 0.2}))
    assert preflight(spec, _members(2)).all == []
    bigger = parse_spec(make_spec(min_clients=2, clients=5, evaluation={"holdout": "t.npz"}))
    assert preflight(bigger, _members(3)).notes == [
        "federation.clients_per_round is 5 but only 3 member(s) are enrolled: each round "
        "samples all of them"
    ]
