"""The operator's calls to the coordinator (enroll members, submit and watch jobs)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

from fedaas.client.transport import Transport


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
        self, job_id: str, after_round: int | None = None, timeout: float = 25.0
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

    def follow(self, job_id: str) -> Iterator[tuple[dict[str, Any], list[dict[str, Any]]]]:
        """Yield ``(job, new_rounds)`` as rounds complete, until the job ends."""
        seen = 0
        while True:
            job = self.job(job_id, after_round=seen)
            fresh = [r for r in job["rounds"] if r["round"] > seen]
            if fresh:
                seen = fresh[-1]["round"]
            yield job, fresh
            if job["status"] in ("completed", "failed", "cancelled"):
                return

    def wait(self, job_id: str) -> dict[str, Any]:
        """Block until the job ends; returns its final description."""
        job: dict[str, Any] = {}
        for job, _ in self.follow(job_id):  # noqa: B007 - the last one is the answer
            pass
        return job
