"""The operator's view announces a round once its record is final (pure: no processes).

A round with federated evaluation is committed first and its evaluation is
added to the record afterwards, while the members evaluate. Announced at
commit, the log line, the Prometheus metrics and MLflow would all miss the
evaluation whenever members take longer than the observer's tick to evaluate
(a member agent's first evaluation alone loads torchmetrics). Who is online
is read from the coordinator itself (a real store, no processes).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fedaas.protocol import JobStatus, JobSummary, RoundProgress, RoundRecord
from fedaas.server.artifacts import Artifacts
from fedaas.server.coordinator import Coordinator
from fedaas.server.db import Store
from fedaas.server.observer import BaseListener, Observer
from fedaas.spec import parse_spec
from fixtures.specs import make_spec

SPEC = parse_spec(make_spec("observed", 2))


class Job:
    """The coordinator as the observer reads it: one job, moved along by the test."""

    def __init__(self) -> None:
        self.status: JobStatus = JobStatus(
            id="job-0123456789ab",
            name="observed",
            status="queued",
            round=0,
            rounds_total=2,
            created_at=0.0,
            spec=SPEC,
        )

        self.records_read = 0
        """Round records the observer has read, summed over its scans."""

    def update(self, **fields: Any) -> None:
        self.status = self.status.model_copy(update=fields)

    def jobs(self) -> list[JobSummary]:
        s = self.status
        return [JobSummary(id=s.id, name=s.name, status=s.status, round=s.round, created_at=0.0)]

    def online_names(self) -> set[str]:
        return set()

    def describe(self, job_id: str, rounds_after: int = 0) -> JobStatus:
        assert job_id == self.status.id
        rounds = [r for r in self.status.rounds if r.round > rounds_after]
        self.records_read += len(rounds)
        return self.status.model_copy(update={"rounds": rounds})


class Heard(BaseListener):
    def __init__(self) -> None:
        self.rounds: list[RoundRecord] = []
        self.finished: list[str] = []

    def round_closed(self, job: JobStatus, record: RoundRecord) -> None:
        self.rounds.append(record)

    def job_finished(self, job: JobStatus) -> None:
        self.finished.append(job.status)


def _record(number: int, accuracy: float | None) -> RoundRecord:
    return RoundRecord(round=number, seconds=0.1, clients=2, accuracy=accuracy)


def _round_1_evaluating(job: Job) -> None:
    """Round 1 committed (no evaluation in its record yet); the members evaluate it."""
    job.update(
        status="running",
        started_at=1.0,
        round=1,
        current=RoundProgress(round=1, stage="evaluating"),
        rounds=[_record(1, None)],
    )


def test_a_round_is_announced_after_its_federated_evaluation_not_at_commit() -> None:
    job, heard = Job(), Heard()
    observer = Observer(job, [heard])
    observer.scan()
    _round_1_evaluating(job)
    observer.scan()
    observer.scan()  # every tick while they evaluate
    assert heard.rounds == []
    job.update(current=RoundProgress(round=2, stage="training"), rounds=[_record(1, 0.8)])
    observer.scan()
    assert [(r.round, r.accuracy) for r in heard.rounds] == [(1, 0.8)]
    job.update(  # the last round: committed, evaluated, the job completed in one tick
        status="completed", round=2, current=None, rounds=[_record(1, 0.8), _record(2, 0.9)]
    )
    observer.scan()
    assert [(r.round, r.accuracy) for r in heard.rounds] == [(1, 0.8), (2, 0.9)]
    assert heard.finished == ["completed"]


def test_a_job_that_ends_during_an_evaluation_still_announces_the_committed_round() -> None:
    job, heard = Job(), Heard()
    observer = Observer(job, [heard])
    observer.scan()
    _round_1_evaluating(job)
    observer.scan()
    job.update(status="cancelled", current=None)
    observer.scan()
    assert [r.round for r in heard.rounds] == [1] and heard.finished == ["cancelled"]


def test_a_long_job_costs_each_scan_its_new_rounds_not_its_history() -> None:
    """The observer scans every second while a job runs: rereading every past round each
    time made a late round of a long job cost the coordinator twice an early one."""
    job, heard = Job(), Heard()
    observer = Observer(job, [heard])
    observer.scan()
    records: list[RoundRecord] = []
    job.update(status="running", started_at=1.0)
    for number in range(1, 301):
        records.append(_record(number, 0.5))
        job.update(round=number, rounds=list(records), rounds_total=300)
        observer.scan()
        observer.scan()  # a tick with nothing new reads nothing
    assert [r.round for r in heard.rounds] == list(range(1, 301))
    assert job.records_read == 300  # each round read once (the whole history: 45150)


def test_the_online_members_it_reads_leave_at_once_when_revoked(tmp_path: Path) -> None:
    """The view reads who is online every second; names come from the database once, and
    a revoked member is out at once and stays out, even if a request it had in flight
    marks it seen afterwards."""
    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    coordinator = Coordinator(store, Artifacts(tmp_path / "artifacts"))
    ids = {name: store.add_member(name, name * 32).id for name in ("ana", "ben", "cy")}
    for name in ("ana", "ben"):
        coordinator.presence.seen(ids[name])
    assert coordinator.online_names() == {"ana", "ben"}
    store.revoke_member(ids["ben"])
    coordinator.member_revoked(ids["ben"])
    coordinator.presence.seen(ids["ben"])  # its last request, authenticated before the revoke
    coordinator.presence.seen(ids["cy"])
    assert coordinator.online_names() == {"ana", "cy"}
