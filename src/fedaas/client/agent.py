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

The member does not fully trust the coordinator. It takes part only in jobs
its own policy allows (:class:`~fedaas.client.policy.MemberPolicy`: models,
code, parameters, rounds, privacy), pins the spec it accepted
(:mod:`fedaas.client.pinning`) and declines any later task whose spec or
privacy instructions depart from it, so it never sends an update with less
privacy than it agreed to. Coordinator-chosen names reach its file system
only through :mod:`fedaas.client.statepaths`. A model or task it cannot use
(too many parameters, NaN or Inf in the global model, training that fails)
is a failed task: declined with the reason, and the agent stays online.
An outage of the store its data lives in (unreachable, timing out, failing)
is not: the member misses that round and stays in the job (the coordinator
benches it for a few rounds, then samples it again), so a minute without its
object store does not cost the federation a member for the rest of the job.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from pydantic import ValidationError

from fedaas import tensors
from fedaas.algorithms.seeds import member_seed
from fedaas.client.declines import Declines
from fedaas.client.finished import FinishedJobs, upload_wait
from fedaas.client.pinning import Pins, departures, spec_digest
from fedaas.client.policy import DEFAULT_POLICY, MemberPolicy
from fedaas.client.privacy import BudgetSpent, MemberPrivacy
from fedaas.client.secagg import SecureState, secure_train  # SecAgg+
from fedaas.client.statepaths import UnsafeName, check_id, is_safe_id
from fedaas.client.training import evaluation_report, train_round
from fedaas.client.transport import ApiClientError, Transport
from fedaas.data.dataset import DataError, Dataset, storage_outage
from fedaas.data.fingerprint import data_fingerprint
from fedaas.data.source import open_dataset
from fedaas.models import build_model, get_state, set_state
from fedaas.models.registry import ModelError
from fedaas.protocol import (
    TASK_BUNDLE,
    Task,
    UpdateMetadata,
    decode_bundle,
)
from fedaas.spec import JobSpec
from fedaas.storage import StorageError

log = logging.getLogger("fedaas.agent")

OUTAGE_PAUSE_S = 2.0
"""How long the agent waits before it asks for work again after its data's store failed."""


class TaskRefused(Exception):
    """This member will not carry out the task; the message is the reason it declines."""


@dataclass
class _JobContext:
    spec: JobSpec
    train: Dataset
    validation: Dataset | None
    module: Any
    digest: str
    manifest: tensors.Manifest


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
        policy: MemberPolicy | None = None,
    ) -> None:
        self.t = transport
        self.identity = transport.identity  # seeds training: the member, never its data's path
        self.state_dir = state_dir or Path("fedaas-member-state")
        self.data_url = data_url
        self.storage_options = storage_options or {}
        self.poll_s = poll_s
        self.policy = policy or DEFAULT_POLICY
        self.privacy = MemberPrivacy(self.state_dir, data_url)
        self.pins = Pins(self.state_dir)
        self.finished = FinishedJobs(self.state_dir, transport)  # final models kept
        self.secure = SecureState(self.state_dir, transport.server)  # SecAgg identity, sessions
        self._jobs: dict[str, _JobContext] = {}
        self.declines = Declines(transport, data_url)  # job id -> why it takes no part
        self._model_cache: tuple[str, bytes] | None = None  # ETag, safetensors bytes
        self.stop = threading.Event()

    def run(self) -> None:
        log.info("member agent polling %s", self.t.server)
        self.secure.register(self.t)  # the long-term key peers check its round keys against
        task: Task | None = None
        while not self.stop.is_set():
            if task is None:  # a poll that fails after the transport's retries ends the agent
                poll = self.finished.collect_then_poll(self.poll_s)  # keep finished jobs' models
                params = {"timeout": poll, "bundle": "true"}
                response = self.t.request("GET", "/v1/tasks/next", params=params, timeout=poll)
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
        """Carry out one task; returns the next task when the coordinator sent it along.

        Whatever goes wrong with the task (a refusal, a bad model, a failure
        in training) ends in a decline with the reason, never in a crash;
        only transport errors (:class:`ApiClientError`) reach the caller.
        """
        try:
            job_id = check_id(task.job_id)
        except UnsafeName as exc:  # no decline: the id cannot even name the job in a URL
            log.error("refusing a task: %s", exc)
            self.stop.wait(1.0)
            return None
        try:
            return self._handle(job_id, task)
        except ApiClientError:
            raise
        except (StorageError, DataError) as exc:
            if (outage := storage_outage(exc)) is not None:
                log.warning(
                    "round %d of job %s missed, staying in the job: the data's store is "
                    "unavailable (%s)",
                    task.round,
                    job_id,
                    outage,
                )
                self.stop.wait(OUTAGE_PAUSE_S)
                return None
            reason = f"the task failed on this member: {type(exc).__name__}: {exc}"
        except (BudgetSpent, TaskRefused) as exc:
            reason = str(exc)
        except Exception as exc:  # a task that fails is a failed task: report it, stay online
            log.exception("task for round %d of job %s failed", task.round, job_id)
            reason = f"the task failed on this member: {type(exc).__name__}: {exc}"
        log.error("leaving job %s: %s", job_id, reason)
        self._jobs.pop(job_id, None)
        self.declines.send(job_id, reason)
        return None

    def _handle(self, job_id: str, task: Task) -> Task | None:
        ctx = self._context(job_id, task.spec)
        if ctx is None:
            return None
        state = self._global_model(job_id, task.model_round, task.model_etag, ctx.manifest)
        set_state(ctx.module, state)
        if task.stage == "evaluate":
            self._evaluate(task, ctx)
            return None
        departed = departures(ctx.spec, task.privacy)
        if departed:
            raise TaskRefused(
                f"the privacy instructions of round {task.round} depart from the spec this "
                f"member accepted: {'; '.join(departed)}"
            )
        return secure_train(self, task, ctx, state)  # plain: self._train; SecAgg: masked

    def _context(self, job_id: str, spec: JobSpec) -> _JobContext | None:
        if job_id in self.declines:  # asked again (the coordinator restarted): same answer
            self.declines.send(job_id, self.declines.reasons[job_id])
            return None
        digest = spec_digest(spec)
        pinned = self._jobs[job_id].digest if job_id in self._jobs else self.pins.get(job_id)
        if pinned is not None and pinned != digest:
            raise TaskRefused(
                f"the task's spec departs from the spec this member accepted for job {job_id} "
                f"(sha256 {pinned[:16]}..., now {digest[:16]}...)"
            )
        if job_id in self._jobs:
            return self._jobs[job_id]
        problems = self.policy.problems(spec)
        if problems:
            raise TaskRefused("this member's policy refuses the job: " + "; ".join(problems))
        try:
            data = open_dataset(self.data_url, spec.data, self.storage_options)
            train, validation = data, None
            if spec.evaluation.validation_split > 0:
                train, validation = data.split(spec.evaluation.validation_split, spec.job.seed)
            module = build_model(
                spec.model,
                spec.data,
                task=spec.train.task,
                allowed_code=self.policy.allowed_code,
                max_parameters=self.policy.models.max_parameters,
            )
            fingerprint = data_fingerprint(self.data_url, self.storage_options)
        except (DataError, ModelError, StorageError) as exc:
            if (outage := storage_outage(exc)) is not None:
                raise outage from None  # this round is missed (handle), the job is not left
            reason = "; ".join(getattr(exc, "problems", [str(exc)]))
            log.error("cannot take part in job %s: %s", job_id, reason)
            self.declines.send(job_id, reason)
            return None
        joined_with = self.pins.data(job_id)
        if joined_with is not None and joined_with != fingerprint:
            reason = (
                f"this member joined job {job_id} with other data (fingerprint "
                f"{joined_with[:12]}..., now {fingerprint[:12]}...): training on it would count "
                "a second partition under the same member"
            )
            log.error("%s", reason)
            self.declines.send(job_id, reason)
            return None
        self.privacy.commit_job(job_id, spec.privacy, self.policy.privacy.max_epsilon)
        self.pins.pin(job_id, digest, fingerprint)
        log.info("joined job %s (%s): %d local examples", job_id, spec.job.name, data.num_examples)
        manifest = tensors.manifest_of(get_state(module))
        self._jobs = {job_id: _JobContext(spec, train, validation, module, digest, manifest)}
        return self._jobs[job_id]

    def _unbundle(self, response: httpx.Response) -> Task | None:
        """The task; a bundled response also carries the task's model (saves a request)."""
        bundle = response.headers.get("content-type", "").startswith(TASK_BUNDLE)
        raw = ""
        try:
            raw, model = decode_bundle(response.content) if bundle else (response.text, b"")
            task = Task.model_validate_json(raw)
        except ValueError as exc:  # a malformed bundle, or a task that fails validation
            self._refuse(raw, exc)
            return None
        if bundle:  # checked (names, shapes, finite) when the task is handled
            self._model_cache = (task.model_etag, model)
        return task

    def _refuse(self, raw: str, exc: ValueError) -> None:
        """A task this member cannot accept: decline its job (if it names one) and go on."""
        problems = str(exc)  # a bundle that does not frame a task: there is no job to name
        if isinstance(exc, ValidationError):
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'task'}: {e['msg']}" for e in exc.errors()
            )
        log.error("refusing a malformed task: %s", problems[:1000])
        try:
            job_id = json.loads(raw).get("job_id")
        except (json.JSONDecodeError, AttributeError):
            job_id = None
        if is_safe_id(job_id):
            self.declines.send(job_id, f"the task is not acceptable: {problems}")
        else:
            self.stop.wait(1.0)  # nothing to answer: don't spin on a broken coordinator

    def _global_model(
        self, job_id: str, number: int, etag: str, manifest: tensors.Manifest
    ) -> dict[str, np.ndarray]:
        """The global model after round ``number``, checked against the job's model.

        A model with other tensors or shapes, or with NaN or Inf, is refused
        (:class:`TaskRefused`): a member never trains on it.
        """
        # an ETag names one job's model after one round: a cached copy is never stale
        if self._model_cache is None or self._model_cache[0] != etag:
            response = self.t.request("GET", f"/v1/jobs/{job_id}/model", params={"round": number})
            self._model_cache = (response.headers.get("ETag", etag), response.content)
        try:
            state, _ = tensors.decode(self._model_cache[1], manifest)
        except tensors.TensorError as exc:
            self._model_cache = None
            raise TaskRefused(f"the global model of round {number} is not usable: {exc}") from None
        return state

    def _train(self, task: Task, ctx: _JobContext, start: dict[str, np.ndarray]) -> Task | None:
        began = time.perf_counter()
        seed = member_seed(ctx.spec.job.seed, task.round, task.member or self.identity)
        delta, unclipped, metrics = train_round(
            ctx.module,
            ctx.train,
            ctx.spec.train,
            start,
            task.privacy,
            self.privacy,
            job_id=task.job_id,
            number=task.round,
            seed=seed,
            max_epsilon=self.policy.privacy.max_epsilon,
            rounds=ctx.spec.job.rounds,
            allowed_code=self.policy.allowed_code,
        )
        # under DP only what the accountant covers leaves the member (protocol.UpdateMetadata)
        meta = UpdateMetadata.for_round(task.privacy, ctx.train.num_examples, metrics, unclipped)
        body = tensors.encode(delta, meta.to_strings())
        trained_s = time.perf_counter() - began
        response = self.t.put_update(
            f"/v1/jobs/{task.job_id}/rounds/{task.round}/update",
            body,
            params={"next_timeout": upload_wait(task.round, ctx.spec.job.rounds, self.poll_s)},
            timeout=self.poll_s,
        )
        self.finished.took_part(task.job_id, task.round, ctx.spec.job.rounds)
        log.info(
            "round %d: trained on %d examples in %.2f s (loss %.4f), sent %d bytes",
            task.round,
            ctx.train.num_examples,
            trained_s,
            metrics.get("train_loss", float("nan")),  # a custom train_step may not say
            len(body),
        )
        if response.headers.get("content-type", "").startswith(TASK_BUNDLE):
            return self._unbundle(response)
        return None

    def _evaluate(self, task: Task, ctx: _JobContext) -> None:
        if ctx.validation is None:
            return
        report = evaluation_report(  # metric states: the coordinator sums them
            ctx.module, ctx.validation, ctx.spec, task.round, self.policy.allowed_code
        )
        self.t.post_json(
            f"/v1/jobs/{task.job_id}/rounds/{task.round}/evaluation", report.model_dump()
        )
