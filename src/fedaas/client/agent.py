"""The member agent: pull a task, train locally, send back only the update.

The agent makes outbound requests only (it works behind a firewall) and its
raw data never leaves it: what it uploads is the model delta
``local - global``, clipped and noised as the round's privacy instructions
say (:class:`~fedaas.client.privacy.MemberPrivacy`), plus
:class:`~fedaas.protocol.UpdateMetadata`. Before its first round in a job it
checks its data against the job's schema; on a mismatch it tells the
coordinator why it declines the job (every problem, one line each) and
uploads nothing. A task it cannot parse is a failed task: logged, never a
crash.
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
from pydantic import ValidationError

from fedaas import tensors
from fedaas.client.privacy import BudgetSpent, MemberPrivacy
from fedaas.client.transport import ApiClientError, Transport
from fedaas.data.dataset import DataError, Dataset
from fedaas.data.source import open_dataset
from fedaas.models import build_model, get_state, set_state
from fedaas.models.registry import ModelError
from fedaas.protocol import (
    MAX_REASON,
    TASK_BUNDLE,
    TASK_HEADER,
    DeclineReport,
    EvaluationReport,
    RecordPrivacy,
    Task,
    UpdateMetadata,
)
from fedaas.spec import JobSpec
from fedaas.train import evaluate, train_local
from fedaas.train.dp_sgd import train_local_dp

log = logging.getLogger("fedaas.agent")


@dataclass
class _JobContext:
    spec: JobSpec
    train: Dataset
    validation: Dataset | None
    module: Any


class Agent:
    """One member's long-lived loop; ``run`` returns when ``stop`` is set.

    ``poll_s``: how long one long-poll for a task is held open (the
    coordinator caps it at 60 s); an idle member makes one request per poll.
    """

    def __init__(
        self,
        transport: Transport,
        data_url: str,
        storage_options: dict[str, Any] | None = None,
        state_dir: Path | None = None,
        poll_s: float = 25.0,
    ) -> None:
        self.t = transport
        self.state_dir = state_dir or Path("fedaas-member-state")
        self.data_url = data_url
        self.storage_options = storage_options or {}
        self.poll_s = poll_s
        self.privacy = MemberPrivacy(self.state_dir, data_url)
        self._jobs: dict[str, _JobContext] = {}
        self._declined: dict[str, str] = {}  # job id -> why this member takes no part
        self._model_cache: tuple[str, dict[str, np.ndarray]] | None = None
        self.stop = threading.Event()

    def run(self) -> None:
        log.info("member agent polling %s", self.t.server)
        task: Task | None = None
        while not self.stop.is_set():
            if task is None:  # a poll that fails after the transport's retries ends the agent
                response = self.t.request(
                    "GET",
                    "/v1/tasks/next",
                    params={"timeout": self.poll_s, "bundle": "true"},
                    timeout=self.poll_s,
                )
                if response.status_code == 204:
                    continue
                task = self._unbundle(response)
                if task is None:
                    continue
            try:
                task = self.handle(task)
            except ApiClientError as exc:
                task = None
                if exc.status == 401:  # revoked or unknown token: nothing to retry
                    raise
                log.warning("task abandoned: %s", exc)
                self.stop.wait(0.5)

    def handle(self, task: Task) -> Task | None:
        """Carry out one task; returns the next task when the coordinator sent it along."""
        ctx = self._context(task.job_id, task.spec)
        if ctx is None:
            return None
        state = self._global_model(task.job_id, task.model_round, task.model_etag)
        set_state(ctx.module, state)
        if task.stage == "evaluate":
            self._evaluate(task, ctx)
            return None
        try:
            return self._train(task, ctx, state)
        except BudgetSpent as exc:
            log.error("leaving job %s: %s", task.job_id, exc)
            self._jobs.pop(task.job_id, None)
            self._decline(task.job_id, str(exc))
        return None

    def _context(self, job_id: str, spec: JobSpec) -> _JobContext | None:
        if job_id in self._declined:  # asked again (the coordinator restarted): same answer
            self._decline(job_id, self._declined[job_id])
            return None
        if job_id in self._jobs:
            return self._jobs[job_id]
        try:
            data = open_dataset(self.data_url, spec.data, self.storage_options)
            train, validation = data, None
            if spec.evaluation.validation_split > 0:
                train, validation = data.split(spec.evaluation.validation_split, spec.job.seed)
            module = build_model(spec.model, spec.data)
        except (DataError, ModelError) as exc:
            reason = "; ".join(getattr(exc, "problems", [str(exc)]))
            log.error("cannot take part in job %s: %s", job_id, reason)
            self._decline(job_id, reason)
            return None
        log.info("joined job %s (%s): %d local examples", job_id, spec.job.name, data.num_examples)
        self._jobs = {job_id: _JobContext(spec, train, validation, module)}
        return self._jobs[job_id]

    def _decline(self, job_id: str, reason: str) -> None:
        """Tell the coordinator that this member takes no further part in the job."""
        self._declined[job_id] = reason
        report = DeclineReport(reason=reason[:MAX_REASON])
        self.t.post_json(f"/v1/jobs/{job_id}/decline", report.model_dump())

    def _unbundle(self, response: httpx.Response) -> Task | None:
        """The task; a bundled response also carries the task's model (saves a request)."""
        bundle = response.headers.get("content-type", "").startswith(TASK_BUNDLE)
        raw = response.headers.get(TASK_HEADER, "") if bundle else response.text
        try:
            task = Task.model_validate_json(raw)
        except ValidationError as exc:
            self._refuse(raw, exc)
            return None
        if bundle:
            state, _ = tensors.decode(response.content)
            self._model_cache = (task.model_etag, state)
        return task

    def _refuse(self, raw: str, exc: ValidationError) -> None:
        """A task this member cannot accept: decline its job (if it names one) and go on."""
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'task'}: {e['msg']}" for e in exc.errors()
        )
        log.error("refusing a malformed task: %s", problems[:1000])
        try:
            job_id = json.loads(raw).get("job_id")
        except (json.JSONDecodeError, AttributeError):
            job_id = None
        if isinstance(job_id, str) and job_id.replace("-", "").isalnum() and len(job_id) <= 32:
            self._decline(job_id, f"the task is not acceptable: {problems}")
        else:
            self.stop.wait(1.0)  # nothing to answer: don't spin on a broken coordinator

    def _global_model(self, job_id: str, number: int, etag: str) -> dict[str, np.ndarray]:
        # an ETag names one job's model after one round: a cached copy is never stale
        if self._model_cache is not None and self._model_cache[0] == etag:
            return self._model_cache[1]
        response = self.t.request("GET", f"/v1/jobs/{job_id}/model", params={"round": number})
        state, _ = tensors.decode(response.content)
        self._model_cache = (response.headers.get("ETag", etag), state)
        return state

    def _train(self, task: Task, ctx: _JobContext, start: dict[str, np.ndarray]) -> Task | None:
        began = time.perf_counter()
        seed = [ctx.spec.job.seed, task.round, zlib.crc32(self.data_url.encode())]
        instructions = task.privacy
        if isinstance(instructions, RecordPrivacy):
            spent = self.privacy.start_record_round(
                task.job_id, instructions, ctx.train.num_examples, ctx.spec.train
            )
            metrics = train_local_dp(
                ctx.module,
                ctx.train,
                ctx.spec.train,
                seed=seed,
                noise_multiplier=instructions.noise_multiplier,
                max_grad_norm=instructions.clip_norm,
                delta=instructions.delta,
                secure=not instructions.reproducible,
                accountant=instructions.accountant,
            )
            metrics.pop("record_epsilon", None)
            metrics.update(spent)
        else:
            metrics = train_local(ctx.module, ctx.train, ctx.spec.train, seed=seed)
        trained = get_state(ctx.module)
        delta = {name: trained[name] - start[name] for name in start}
        delta, unclipped = self.privacy.privatize(
            delta, instructions, job_id=task.job_id, number=task.round
        )
        meta = UpdateMetadata(
            num_examples=ctx.train.num_examples, metrics=metrics, unclipped=unclipped
        )
        body = tensors.encode(delta, meta.to_strings())
        trained_s = time.perf_counter() - began
        response = self.t.request(
            "PUT",
            f"/v1/jobs/{task.job_id}/rounds/{task.round}/update",
            content=body,
            params={"next_timeout": self.poll_s},  # the answer may carry our next task
            timeout=self.poll_s,
            headers={
                "Content-Type": "application/octet-stream",
                "Idempotency-Key": uuid.uuid4().hex,
            },
        )
        log.info(
            "round %d: trained on %d examples in %.2f s (loss %.4f), sent %d bytes",
            task.round,
            ctx.train.num_examples,
            trained_s,
            metrics["train_loss"],
            len(body),
        )
        if response.headers.get("content-type", "").startswith(TASK_BUNDLE):
            return self._unbundle(response)
        return None

    def _evaluate(self, task: Task, ctx: _JobContext) -> None:
        if ctx.validation is None:
            return
        result = evaluate(ctx.module, ctx.validation)
        report = EvaluationReport(
            num_examples=result.examples, loss=result.loss, accuracy=result.accuracy
        )
        self.t.post_json(
            f"/v1/jobs/{task.job_id}/rounds/{task.round}/evaluation", report.model_dump()
        )
