"""The member agent: pull a task, train locally, send back only the update.

The agent makes outbound requests only (it works behind a firewall) and its
raw data never leaves it: what it uploads is the model delta
``local - global`` plus the number of examples and training metrics. Before
its first round in a job it checks its data against the job's schema; on a
mismatch it tells the coordinator why it declines the job (every problem,
one line each) and uploads nothing.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from fedaas import tensors
from fedaas.client.privacy import BudgetSpent, privatize, train_record_level
from fedaas.client.transport import ApiClientError, Transport
from fedaas.data.dataset import DataError, Dataset
from fedaas.data.source import open_dataset
from fedaas.models import build_model, get_state, set_state
from fedaas.models.registry import ModelError
from fedaas.spec import JobSpec, SpecError, parse_spec
from fedaas.train import evaluate, train_local

log = logging.getLogger("fedaas.agent")
POLL_S = 25.0
TASK_BUNDLE = "application/vnd.fedaas.task+safetensors"


@dataclass
class _JobContext:
    spec: JobSpec
    train: Dataset
    validation: Dataset | None
    module: Any


class Agent:
    """One member's long-lived loop; ``run`` returns when ``stop`` is set."""

    def __init__(
        self,
        transport: Transport,
        data_url: str,
        storage_options: dict[str, Any] | None = None,
        state_dir: Path | None = None,
    ) -> None:
        self.t = transport
        self.state_dir = state_dir or Path("fedaas-member-state")
        self.data_url = data_url
        self.storage_options = storage_options or {}
        self._jobs: dict[str, _JobContext] = {}
        self._declined: dict[str, str] = {}  # job id -> why this member takes no part
        self._model_cache: tuple[str, dict[str, np.ndarray]] | None = None
        self.stop = threading.Event()

    def run(self) -> None:
        log.info("member agent polling %s", self.t.server)
        task: dict[str, Any] | None = None
        while not self.stop.is_set():
            if task is None:
                response = self.t.request(
                    "GET",
                    "/v1/tasks/next",
                    params={"timeout": POLL_S, "bundle": "true"},
                    timeout=POLL_S,
                )
                if response.status_code == 204:
                    continue
                task = self._unbundle(response)
            try:
                task = self.handle(task)
            except ApiClientError as exc:
                task = None
                if exc.status == 401:  # revoked or unknown token: nothing to retry
                    raise
                log.warning("task abandoned: %s", exc)
                self.stop.wait(0.5)

    def handle(self, task: dict[str, Any]) -> dict[str, Any] | None:
        """Carry out one task; returns the next task when the coordinator sent it along."""
        job_id = task["job_id"]
        ctx = self._context(job_id, task["spec"])
        if ctx is None:
            return None
        state = self._global_model(job_id, task["model_round"], task["model_etag"])
        set_state(ctx.module, state)
        if task["stage"] == "evaluate":
            self._evaluate(job_id, task["round"], ctx)
        elif task["stage"] == "train":
            try:
                return self._train(job_id, task["round"], ctx, state, task.get("privacy") or {})
            except BudgetSpent as exc:
                log.error("leaving job %s: %s", job_id, exc)
                self._jobs.pop(job_id, None)
                self._decline(job_id, str(exc))
        else:
            log.warning("ignoring unknown task stage %r", task["stage"])
        return None

    def _context(self, job_id: str, spec_data: dict[str, Any]) -> _JobContext | None:
        if job_id in self._declined:  # asked again (the coordinator restarted): same answer
            self._decline(job_id, self._declined[job_id])
            return None
        if job_id in self._jobs:
            return self._jobs[job_id]
        try:
            spec = parse_spec(spec_data)
            data = open_dataset(self.data_url, spec.data, self.storage_options)
            train, validation = data, None
            if spec.evaluation.validation_split > 0:
                train, validation = data.split(spec.evaluation.validation_split, spec.job.seed)
            module = build_model(spec.model, spec.data)
        except (DataError, SpecError, ModelError) as exc:
            problems = getattr(exc, "problems", [str(exc)])
            reason = "; ".join(problems)
            log.error("cannot take part in job %s: %s", job_id, reason)
            self._decline(job_id, reason)
            return None
        log.info("joined job %s (%s): %d local examples", job_id, spec.job.name, data.num_examples)
        self._jobs = {job_id: _JobContext(spec, train, validation, module)}
        return self._jobs[job_id]

    def _decline(self, job_id: str, reason: str) -> None:
        """Tell the coordinator that this member takes no further part in the job."""
        self._declined[job_id] = reason
        self.t.post_json(f"/v1/jobs/{job_id}/decline", {"reason": reason[:4000]})

    @staticmethod
    def _is_bundle(response: httpx.Response) -> bool:
        return response.headers.get("content-type", "").startswith(TASK_BUNDLE)

    def _unbundle(self, response: httpx.Response) -> dict[str, Any]:
        """The task; a bundled response also carries the task's model (saves a request)."""
        if not self._is_bundle(response):
            return response.json()
        task = json.loads(response.headers["X-Fedaas-Task"])
        state, _ = tensors.decode(response.content)
        self._model_cache = (task["model_etag"], state)
        return task

    def _global_model(self, job_id: str, number: int, etag: str) -> dict[str, np.ndarray]:
        # an ETag names one job's model after one round: a cached copy is never stale
        if self._model_cache is not None and self._model_cache[0] == etag:
            return self._model_cache[1]
        response = self.t.request("GET", f"/v1/jobs/{job_id}/model", params={"round": number})
        state, _ = tensors.decode(response.content)
        self._model_cache = (response.headers.get("ETag", etag), state)
        return state

    def _train(
        self,
        job_id: str,
        number: int,
        ctx: _JobContext,
        start: dict[str, np.ndarray],
        privacy: dict[str, Any],
    ) -> dict[str, Any] | None:
        began = time.perf_counter()
        seed = [ctx.spec.job.seed, number, zlib.crc32(self.data_url.encode())]
        if privacy.get("unit") == "record":
            metrics = train_record_level(
                ctx, privacy, seed, self.state_dir / f"dpsgd-{job_id}.json"
            )
        else:
            metrics = train_local(ctx.module, ctx.train, ctx.spec.train, seed=seed)
        trained = get_state(ctx.module)
        delta = {name: trained[name] - start[name] for name in start}
        delta, unclipped = privatize(delta, privacy, number, self.state_dir, job_id, self.data_url)
        body = tensors.encode(
            delta,
            {
                "num_examples": str(ctx.train.num_examples),
                "metrics": json.dumps(metrics),
                "unclipped": "1" if unclipped else "0",
            },
        )
        trained_s = time.perf_counter() - began
        response = self.t.request(
            "PUT",
            f"/v1/jobs/{job_id}/rounds/{number}/update",
            content=body,
            params={"next_timeout": POLL_S},  # the answer may carry our next task
            timeout=POLL_S,
            headers={
                "Content-Type": "application/octet-stream",
                "Idempotency-Key": uuid.uuid4().hex,
            },
        )
        log.info(
            "round %d: trained on %d examples in %.2f s (loss %.4f), sent %d bytes",
            number,
            ctx.train.num_examples,
            trained_s,
            metrics["train_loss"],
            len(body),
        )
        return self._unbundle(response) if self._is_bundle(response) else None

    def _evaluate(self, job_id: str, number: int, ctx: _JobContext) -> None:
        if ctx.validation is None:
            return
        result = evaluate(ctx.module, ctx.validation)
        self.t.post_json(
            f"/v1/jobs/{job_id}/rounds/{number}/evaluation",
            {"num_examples": result.examples, "loss": result.loss, "accuracy": result.accuracy},
        )
