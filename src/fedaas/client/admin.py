"""The operator's Python client of the coordinator: enroll members, submit and watch jobs.

Every answer is parsed into its :mod:`fedaas.protocol` model, the same ones
the coordinator declares as its response models.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

from pydantic import TypeAdapter

from fedaas.client.transport import Transport
from fedaas.protocol import (
    ROUND_HEADER,
    Enrolled,
    EnrollRequest,
    JobStatus,
    JobSummary,
    MemberInfo,
    Revoked,
    RoundRecord,
    SubmitRequest,
)

POLL_S = 25.0  # one long-poll for a job's progress
_MEMBERS = TypeAdapter(list[MemberInfo])
_JOBS = TypeAdapter(list[JobSummary])


def _job(job_id: str, action: str = "") -> str:
    """The job's path, its id quoted: whatever it holds (``/``, ``..``, ``?``) stays the id."""
    path = f"/v1/jobs/{quote(job_id, safe='')}"
    return f"{path}/{action}" if action else path


class AdminClient:
    def __init__(self, transport: Transport) -> None:
        self.t = transport

    def enroll(self, name: str) -> Enrolled:
        body = EnrollRequest(name=name).model_dump()
        return Enrolled.model_validate(self.t.post_json("/v1/members", body))

    def renew(self, name: str) -> Enrolled:
        """A new token for an enrolled (or revoked) member; its old token stops working."""
        path = f"/v1/members/{quote(name, safe='')}/token"
        return Enrolled.model_validate(self.t.post_json(path, {}))

    def members(self) -> list[MemberInfo]:
        return _MEMBERS.validate_python(self.t.get_json("/v1/members"))

    def revoke(self, name: str) -> Revoked:
        response = self.t.request("DELETE", f"/v1/members/{quote(name, safe='')}")
        return Revoked.model_validate_json(response.content)

    def submit(self, spec: dict[str, Any], source: str | None = None) -> JobStatus:
        body = SubmitRequest(spec=spec, source=source).model_dump()
        return JobStatus.model_validate(self.t.post_json("/v1/jobs", body))

    def jobs(self) -> list[JobSummary]:
        return _JOBS.validate_python(self.t.get_json("/v1/jobs"))

    def job(
        self,
        job_id: str,
        after_round: int | None = None,
        timeout: float = POLL_S,
        rounds_after: int = 0,
    ) -> JobStatus:
        """The job; with ``after_round``, wait (up to ``timeout``) until it passes that round.
        ``rounds_after``: only the rounds numbered above it in ``rounds``."""
        params: dict[str, Any] = {"rounds_after": rounds_after} if rounds_after else {}
        if after_round is None:
            return JobStatus.model_validate(self.t.get_json(_job(job_id), params=params))
        params.update(after_round=after_round, timeout=timeout)
        data = self.t.get_json(_job(job_id), params=params, timeout=timeout)
        return JobStatus.model_validate(data)

    def resume(self, job_id: str) -> JobStatus:
        """Continue a failed job from its last committed round."""
        return JobStatus.model_validate(self.t.post_json(_job(job_id, "resume"), None))

    def cancel(self, job_id: str) -> JobStatus:
        return JobStatus.model_validate(self.t.post_json(_job(job_id, "cancel"), None))

    def download_model(self, job_id: str, out: Path) -> int:
        """Write the job's latest model to ``out``; returns the round it is from."""
        response = self.t.request("GET", _job(job_id, "model"))
        out.write_bytes(response.content)
        return int(response.headers.get(ROUND_HEADER, "0"))

    def follow(
        self, job_id: str, timeout: float | None = None
    ) -> Iterator[tuple[JobStatus, list[RoundRecord]]]:
        """Yield ``(job, new_rounds)`` as rounds complete, until the job ends.

        Each poll fetches only the new rounds; ``job.rounds`` holds every round
        seen so far, as it was when first seen, and the last ``job`` (the job
        ended) is read whole, so it carries evaluations added after a round
        closed. With ``timeout`` (seconds), raise :class:`TimeoutError` if the job
        has not ended by then.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        seen = 0
        history: list[RoundRecord] = []
        while True:
            poll = (
                POLL_S if deadline is None else min(POLL_S, max(0.0, deadline - time.monotonic()))
            )
            # only the new rounds each time: a long job's history is not resent every round
            job = self.job(job_id, after_round=seen, timeout=poll, rounds_after=seen)
            if job.finished:  # the whole record once (a round's evaluation may come after it)
                job = self.job(job_id)
                yield job, [r for r in job.rounds if r.round > seen]
                return
            fresh = [r for r in job.rounds if r.round > seen]
            history += fresh
            if fresh:
                seen = fresh[-1].round
            yield job.model_copy(update={"rounds": list(history)}), fresh
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(
                    f"job {job_id} is still {job.status} (round {job.round}) after {timeout:g} s"
                )

    def wait(self, job_id: str, timeout: float | None = None) -> JobStatus:
        """Block until the job ends (or :class:`TimeoutError` after ``timeout`` s); its final state."""
        job: JobStatus | None = None
        for job, _ in self.follow(job_id, timeout):  # noqa: B007 - the last one is the answer
            pass
        assert job is not None
        return job
