"""What a member tells the coordinator when it takes no further part in a job.

The reason goes with the decline, the member's data location in it replaced
by ``<data>`` (its own log keeps the full text), and is remembered: a
coordinator that asks again (it restarted) gets the same answer.
"""

from __future__ import annotations

from pathlib import Path

from fedaas import storage
from fedaas.client.transport import Transport
from fedaas.protocol import MAX_REASON, DeclineReport


class Declines:
    """The jobs this member declined and why (memory only: a restarted agent decides again)."""

    def __init__(self, transport: Transport, data_url: str) -> None:
        self.t = transport
        self.data_url = data_url
        self.reasons: dict[str, str] = {}  # job id -> why this member takes no part

    def __contains__(self, job_id: str) -> bool:
        return job_id in self.reasons

    def send(self, job_id: str, reason: str) -> None:
        """Tell the coordinator that this member takes no further part in the job."""
        self.reasons[job_id] = reason
        report = DeclineReport(reason=self.without_paths(reason)[:MAX_REASON])
        self.t.post_json(f"/v1/jobs/{job_id}/decline", report.model_dump())

    def without_paths(self, text: str) -> str:
        """``text`` with the member's data location named ``<data>``."""
        places = {self.data_url, storage.redact_url(self.data_url)}
        if storage.is_local(self.data_url):
            local = Path(self.data_url.removeprefix("file://")).expanduser()
            places |= {str(local), str(local.resolve()), f"file://{local.resolve()}"}
        for place in sorted(places, key=len, reverse=True):  # longest first: no half-replaced
            text = text.replace(place, "<data>")
        return text
