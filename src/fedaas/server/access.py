"""Which jobs' models a member may download: only those it takes or took part in.

The operator may download any job's model. A member's token opens the model
of a job only while the member is sampled (or asked to evaluate) in its open
round, or once one of its updates was committed in one of the job's rounds;
never a job it declined (or was excluded from), and never another job. The
global model is the federation's shared result: a member that refused the
job, or never joined it, has no claim to it.
"""

from __future__ import annotations

from sqlalchemy import select

from fedaas.server.auth import Principal
from fedaas.server.db import Store, Update
from fedaas.server.errors import Forbidden
from fedaas.server.rounds import ActiveJob


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
