"""The model back to every member: a finished job's final model, kept in the member's state folder.

The global model is the federation's shared result, and every member that
trained for a job gets it when the job completes. The agent notes each job
it sent an update for (:meth:`FinishedJobs.took_part`); while such a job is
open it asks the coordinator for the job's state before a task poll, at most
once per poll interval (``GET /v1/jobs/{id}?rounds_after=N``, the rounds after the last it
trained in; the member's view: the coordinator answers only for
jobs this member took part in). Once the job is ``completed`` it downloads
the final model (``GET /v1/jobs/{id}/model``, the round the job ended at)
and keeps it, untouched, with the job's spec in
``<state>/finished-<job id>/`` (the folder name built only by
:func:`~fedaas.client.statepaths.state_folder` from a checked id):

- ``model.safetensors``: the bytes the coordinator served, bit-identical to
  its own final model (checked: finite tensors of the job's round);
- ``spec.json`` (and ``job.toml`` when the job was submitted as TOML);
- ``job.json``: the job's record as this member may see it (status, rounds).

That folder is a run folder: ``fedaas.load_model(folder)`` rebuilds the
``torch.nn.Module``. A job that failed or was cancelled leaves nothing.

When the member trained in the job's last round it asks again within
:data:`ENDING_POLL_S` (the agent polls for tasks that briefly too), so the
model arrives moments after the job ends, not a long-poll later.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from fedaas import tensors
from fedaas.client.statepaths import check_id, state_folder
from fedaas.client.transport import ApiClientError, Transport
from fedaas.protocol import ROUND_HEADER, JobStatus

log = logging.getLogger("fedaas.agent")

ENDING_POLL_S = 1.0
"""How long a task poll lasts while a job this member trained the last round of is ending."""
MODEL_FILE = "model.safetensors"


@dataclass
class _Open:
    rounds_total: int
    last_round: int


def upload_wait(number: int, rounds_total: int, poll_s: float) -> float:
    """How long an upload's answer may wait for the next task (``next_timeout``).

    After the last round no training task follows: wait only briefly (an
    evaluation task may still come), so the job's end is noticed at once.
    """
    return poll_s if number < rounds_total else min(poll_s, ENDING_POLL_S)


class FinishedJobs:
    """The jobs this member took part in that have not ended yet, and those it keeps."""

    def __init__(self, state_dir: Path, transport: Transport) -> None:
        self.state_dir = Path(state_dir)
        self.t = transport
        self._open: dict[str, _Open] = {}
        self._next_check = 0.0

    def folder(self, job_id: str) -> Path:
        """Where a finished job's model and spec are kept (``job_id`` checked)."""
        return state_folder(self.state_dir, "finished", job_id)

    def took_part(self, job_id: str, number: int, rounds_total: int) -> None:
        """This member's update for round ``number`` of the job was accepted."""
        check_id(job_id)
        self._open[job_id] = _Open(rounds_total, number)

    @property
    def waiting(self) -> bool:
        """Whether a job this member took part in has not ended yet."""
        return bool(self._open)

    @property
    def ending(self) -> bool:
        """Whether this member trained the last round of a job that has not ended yet."""
        return any(o.last_round >= o.rounds_total for o in self._open.values())

    def collect_then_poll(self, poll_s: float) -> float:
        """Before a task poll: keep what finished (:meth:`collect`); how long the poll may last.

        Briefly (:data:`ENDING_POLL_S`) while a job this member trained the
        last round of is ending, so that its end is noticed at once; else
        ``poll_s``. A job's state is asked for at most once per ``poll_s``
        otherwise: a member polling between fast rounds would else ask every
        round.
        """
        if self._open and (self.ending or time.monotonic() >= self._next_check):
            self._next_check = time.monotonic() + poll_s
            self.collect()
        return min(poll_s, ENDING_POLL_S) if self.ending else poll_s

    def collect(self) -> list[Path]:
        """Ask how each open job stands; keep the final model of each completed one.

        Returns the folders written. A job that ended otherwise is dropped. A
        refusal (4xx other than 401), an answer that is not the job or a
        usable model, or a folder that cannot be written drops the job with
        a log line (never a crash of the agent); an unreachable coordinator
        keeps it for the next time; a revoked token (401) is raised for the
        agent to stop.
        """
        written = []
        for job_id, opened in list(self._open.items()):
            try:  # the rounds after the member's last only: not a long job's history each time
                job = self._job(job_id, opened.last_round)
                if not job.finished:
                    continue
                del self._open[job_id]
                if job.status != "completed":
                    log.info("job %s %s: no final model to keep", job_id, job.status)
                    continue
                written.append(self._keep(job_id, self._job(job_id, 0)))  # whole, for job.json
            except ApiClientError as exc:
                if exc.status == 401:
                    raise
                if exc.status == 0:  # unreachable: ask again later
                    continue
                self._open.pop(job_id, None)
                log.warning("cannot keep the final model of job %s: %s", job_id, exc)
            except (ValueError, OSError) as exc:  # TensorError, pydantic's ValidationError too
                self._open.pop(job_id, None)
                log.error("cannot keep the final model of job %s: %s", job_id, exc)
        return written

    def _job(self, job_id: str, rounds_after: int) -> JobStatus:
        params = {"rounds_after": rounds_after} if rounds_after else None
        job = JobStatus.model_validate(self.t.get_json(f"/v1/jobs/{job_id}", params=params))
        if job.id != job_id:
            raise ValueError(f"the coordinator answered job {job.id!r}")
        return job

    def _keep(self, job_id: str, job: JobStatus) -> Path:
        response = self.t.request("GET", f"/v1/jobs/{job_id}/model")
        served = response.headers.get(ROUND_HEADER, "")
        if served != str(job.round):
            raise ValueError(f"the coordinator served round {served!r}, not {job.round}")
        model = response.content
        tensors.decode(model)  # a valid safetensors file of finite tensors, or refused
        folder = self.folder(job_id)
        staging = folder.with_name(folder.name + ".partial")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        (staging / MODEL_FILE).write_bytes(model)
        (staging / "spec.json").write_text(json.dumps(job.spec.to_dict(), indent=2) + "\n")
        if job.source:
            (staging / "job.toml").write_text(job.source, encoding="utf-8")
        (staging / "job.json").write_text(job.model_dump_json(indent=2))
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(staging, folder)
        log.info("job %s completed: its final model (round %d) is in %s", job.id, job.round, folder)
        return folder
