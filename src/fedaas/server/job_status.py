"""A job as the API shows it (:class:`~fedaas.protocol.JobStatus`): its stored record, the
open round's progress and what the coordinator waits for, read in one place.

The coordinator answers ``GET /v1/jobs/{id}``, the progress long-poll and the
operator view with it. Under client-level DP the open round's counts are left
out (the privacy rules decide what a status shows).
"""

from __future__ import annotations

from fedaas.protocol import JobStatus, RoundProgress, RoundRecord, Waiting
from fedaas.server.db import Job
from fedaas.server.outages import Outage
from fedaas.server.rounds import ActiveJob


def job_status(
    job: Job,
    declined: dict[str, str],
    rounds: list[dict[str, object]],
    active: ActiveJob | None,
    outages: list[Outage],
) -> JobStatus:
    """``job`` with its declines and stored ``rounds`` (as :meth:`~fedaas.server.db.Store.
    job_view` reads them), ``active`` the running job if any, ``outages`` what the
    coordinator waits for now."""
    spec = job.job_spec()
    current = None
    if active is not None and active.id == job.id and active.round is not None:
        state = active.round
        hidden = active.privacy.disclosure.hides_counts  # client-level DP: no counts
        current = RoundProgress(
            round=state.number,
            stage=state.stage.value,
            sampled=None if hidden else len(state.sampled),
            reported=None if hidden else len(state.reported),
        )
    return JobStatus(
        id=job.id,
        name=job.name,
        status=job.status,
        reason=job.reason,
        round=job.round,
        rounds_total=spec.job.rounds,
        current=current,
        created_at=job.created_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
        declined=declined,
        spec=spec,
        source=job.source,
        rounds=[RoundRecord.model_validate(r) for r in rounds],
        waiting_for=[
            Waiting(dependency=o.dependency, since=o.since, error=o.error)
            for o in (outages if job.status == "running" else [])
        ],
    )
