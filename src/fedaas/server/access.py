"""Which jobs a member token may see: only those it takes or took part in.

The operator may read and download any job. A member's token opens a job
(its model, ``GET /v1/jobs/{id}/model``, and its status,
``GET /v1/jobs/{id}``) only while the member is sampled (or asked to
evaluate) in its open round, or once one of its updates was committed in one
of the job's rounds; never a job it declined (or was excluded from), and
never another job. The global model is the federation's shared result: a
member that refused the job, or never joined it, has no claim to it.

What a member sees of a job is :func:`member_view`: the job's own record
(spec, status, and per round the coordinator's evaluation of the global
model on its held-out data, and the privacy accounting) without anything
computed from other members' data or about them: who took part in a round,
who declined and why, members' own metrics (``members.*``) and federated
evaluation (``federated_*``; with few members, a member could subtract its
own share and learn another's), nor the coordinator's operations (which
dependency it waits for, and its error).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import select

from fedaas.protocol import JobStatus, RoundRecord
from fedaas.server.auth import Principal
from fedaas.server.db import Store, Update
from fedaas.server.errors import Forbidden
from fedaas.server.rounds import ActiveJob

if TYPE_CHECKING:
    from fedaas.server.coordinator import Coordinator


def check_model_access(active: ActiveJob | None, store: Store, job_id: str, who: Principal) -> None:
    """Raise :class:`Forbidden` unless ``who`` may download job ``job_id``'s models."""
    if who.role != "client" or who.member_id is None:
        return
    member = who.member_id
    if active is not None and active.id == job_id:
        if member in active.declined:
            raise _refused(job_id, "declined or was excluded from")
        state = active.round
        if state is not None and (member in state.sampled or member in state.evaluators):
            return  # the hot path: a sampled member fetching its round's model
    if who.name in store.declined(job_id):
        raise _refused(job_id, "declined")
    if not took_part(store, job_id, member):
        raise _refused(job_id, "takes no part in")


def check_job_access(active: ActiveJob | None, store: Store, job_id: str, who: Principal) -> None:
    """Raise :class:`Forbidden` unless ``who`` may read job ``job_id`` (the same rule as its model)."""
    check_model_access(active, store, job_id, who)


def readable_job(
    coordinator: Coordinator, job_id: str, who: Principal, rounds_after: int = 0
) -> JobStatus:
    """Job ``job_id`` as the coordinator describes it (its rounds after ``rounds_after``), if
    ``who`` may read it (404 for an unknown job, whoever asks). Reads the database: the API
    calls it in a thread."""
    job = coordinator.describe(job_id, rounds_after)
    check_job_access(coordinator.inbox.job, coordinator.store, job_id, who)
    return job


def downloadable_model(
    coordinator: Coordinator, job_id: str, number: int | None, who: Principal
) -> tuple[Path, int]:
    """The model file of round ``number`` (default: the latest) if ``who`` may download it,
    and its round. Reads the database: the API calls it in a thread."""
    path, number = coordinator.model_file(job_id, number)
    check_model_access(coordinator.inbox.job, coordinator.store, job_id, who)
    return path, number


_FROM_MEMBERS = ("members.", "federated_")


def member_view(job: JobStatus, who: Principal) -> JobStatus:
    """``job`` as ``who`` may see it: in full for the operator, without others' details for a member."""
    if who.role != "client":
        return job
    held_out = job.spec.evaluation.holdout is not None
    rounds = []
    for record in job.rounds:
        values = record.model_dump()
        kept = {k: v for k, v in values.items() if not k.startswith(_FROM_MEMBERS)}
        if not held_out:  # then the round's own metrics are the members' (federated) ones
            kept = {k: v for k, v in kept.items() if k in _ALWAYS or "epsilon" in k}
        rounds.append(RoundRecord.model_validate(kept | {"participants": []}))
    declined = {name: why for name, why in job.declined.items() if name == who.name}
    return job.model_copy(update={"rounds": rounds, "declined": declined, "waiting_for": []})


_ALWAYS = frozenset({"round", "seconds", "clients", "bytes_up", "bytes_down", "private", "delta"})


def took_part(store: Store, job_id: str, member_id: int) -> bool:
    """Whether an update of the member was committed in one of the job's rounds."""
    with store.session() as s:
        query = select(Update.id).where(Update.job_id == job_id, Update.member_id == member_id)
        return s.scalar(query.limit(1)) is not None


def _refused(job_id: str, why: str) -> Forbidden:
    return Forbidden(
        f"this member {why} job {job_id}: its model is for the job's members and operator",
        "not_a_participant",
    )
