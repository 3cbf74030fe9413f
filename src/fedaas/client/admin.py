"""The operator's calls to the coordinator (enroll members, submit and watch jobs)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

from fedaas.client.transport import Transport

POLL_S = 25.0  # one long-poll for a job's progress


class AdminClient:
    def __init__(self, transport: Transport) -> None:
        self.t = transport

    def enroll(self, name: str) -> dict[str, Any]:
        return self.t.post_json("/v1/members", {"name": name})

    def members(self) -> list[dict[str, Any]]:
        return self.t.get_json("/v1/members")

    def revoke(self, name: str) -> dict[str, Any]:
        return self.t.request("DELETE", f"/v1/members/{quote(name, safe='')}").json()

    def submit(self, spec: dict[str, Any], source: str | None = None) -> dict[str, Any]:
        return self.t.post_json("/v1/jobs", {"spec": spec, "source": source})

    def jobs(self) -> list[dict[str, Any]]:
        return self.t.get_json("/v1/jobs")

    def job(
        self, job_id: str, after_round: int | None = None, timeout: float = POLL_S
    ) -> dict[str, Any]:
        if after_round is None:
            return self.t.get_json(f"/v1/jobs/{job_id}")
        params = {"after_round": after_round, "timeout": timeout}
        return self.t.get_json(f"/v1/jobs/{job_id}", params=params, timeout=timeout)

    def cancel(self, job_id: str) -> dict[str, Any]:
        return self.t.post_json(f"/v1/jobs/{job_id}/cancel", None)

    def download_model(self, job_id: str, out: Path) -> int:
        response = self.t.request("GET", f"/v1/jobs/{job_id}/model")
        out.write_bytes(response.content)
        return int(response.headers.get("X-Fedaas-Round", "0"))

    def follow(
        self, job_id: str, timeout: float | None = None
    ) -> Iterator[tuple[dict[str, Any], list[dict[str, Any]]]]:
        """Yield ``(job, new_rounds)`` as rounds complete, until the job ends.

        With ``timeout`` (seconds), raise :class:`TimeoutError` if the job
        has not ended by then.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        seen = 0
        while True:
            poll = (
                POLL_S if deadline is None else min(POLL_S, max(0.0, deadline - time.monotonic()))
            )
            job = self.job(job_id, after_round=seen, timeout=poll)
            fresh = [r for r in job["rounds"] if r["round"] > seen]
            if fresh:
                seen = fresh[-1]["round"]
            yield job, fresh
            if job["status"] in ("completed", "failed", "cancelled"):
                return
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(
                    f"job {job_id} is still {job['status']} (round {job['round']}) "
                    f"after {timeout:g} s"
                )

    def wait(self, job_id: str, timeout: float | None = None) -> dict[str, Any]:
        """Block until the job ends (or :class:`TimeoutError` after ``timeout`` s); its final description."""
        job: dict[str, Any] = {}
        for job, _ in self.follow(job_id, timeout):  # noqa: B007 - the last one is the answer
            pass
        return job
