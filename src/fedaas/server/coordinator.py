"""The round coordinator: runs jobs through the round state machine.

One job trains at a time (members train one model at a time); others wait
in the queue. Each job runs as one asyncio task that walks the stages of
:mod:`fedaas.server.rounds`; request handlers (the member-facing half is in
:mod:`fedaas.server.answers`) only read the current stage and fold updates,
and wake the task when a stage's answers are all in.

Durability: after a round is aggregated the new global model is written
atomically to the artifact store, then the round's metrics and the job's
round counter are committed in one database transaction. A coordinator that
dies mid-round restarts from the last committed round; updates already
received for the interrupted round are discarded and the round reruns with
the same sample (sampling is derived from the job seed and the round
number, so there is no generator state to lose).
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import delete

from fedaas import tensors
from fedaas.algorithms.aggregate import WeightedSum
from fedaas.algorithms.server_optimizers import ServerOptimizer
from fedaas.data.dataset import DataError
from fedaas.data.source import open_dataset
from fedaas.models import build_model, get_state, set_state
from fedaas.models.registry import ModelError, parameter_count
from fedaas.server.answers import ActiveJob, BudgetReached, JobFailed, MemberDesk, Signal
from fedaas.server.artifacts import Artifacts
from fedaas.server.db import Job, Store, Update
from fedaas.server.errors import ApiError
from fedaas.server.privacy import JobPrivacy, PrivacyError
from fedaas.server.rounds import RoundState, Stage, weighted_means
from fedaas.spec import JobSpec, parse_spec
from fedaas.train import evaluate

log = logging.getLogger("fedaas.coordinator")

MAX_PARAMETERS = 250_000_000  # 1 GB of float32: larger models are refused at submission
TERMINAL = ("completed", "failed", "cancelled")
# Members retry with exponential backoff capped at 30 s (fedaas.client.transport.backoff_delays),
# so after a restart every live member is back within about that long.
RECONNECT_GRACE_S = 40.0


class Coordinator(MemberDesk):
    def __init__(self, store: Store, artifacts: Artifacts) -> None:
        self.store = store
        self.artifacts = artifacts
        self.active: ActiveJob | None = None
        self._last_seen: dict[int, float] = {}
        self._polling: dict[int, int] = {}
        self._tasks_changed = Signal()
        self._members_changed = Signal()
        self._progress = Signal()
        self._queue_changed = Signal()
        self._receipts: OrderedDict[tuple[int, str | None], dict[str, Any]] = OrderedDict()
        self._supervisor: asyncio.Task | None = None
        self._runner: asyncio.Task | None = None
        self._started = time.monotonic()

    # lifecycle ---------------------------------------------------------------
    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._supervisor = asyncio.create_task(self._supervise(), name="fedaas-supervisor")

    def closing(self) -> None:
        """The server is shutting down: release every long-poll now."""
        self._closing = True
        for signal in (self._tasks_changed, self._progress, self._members_changed):
            signal.fire()

    _closing = False

    @property
    def shutting_down(self) -> bool:
        return self._closing

    def request_close(self) -> None:
        """Thread- and signal-safe form of :meth:`closing`."""
        loop = getattr(self, "_loop", None)
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self.closing)

    async def stop(self) -> None:
        for task in (self._runner, self._supervisor):
            if task is not None:
                task.cancel()
        for task in (self._runner, self._supervisor):
            if task is not None:
                try:
                    await task
                except (asyncio.CancelledError, Exception):
                    pass

    async def _supervise(self) -> None:
        while True:
            pending = self.store.jobs(("running",)) or self.store.jobs(("queued",))
            if not pending:
                await self._queue_changed.wait(5.0)
                continue
            job_id = pending[0].id
            self._runner = asyncio.create_task(self._run_job(job_id))
            try:
                await self._runner
            except asyncio.CancelledError:
                if self._runner.cancelled() and not self._runner_cancel_requested:
                    raise
            except Exception as exc:  # one broken job must not stop the coordinator
                log.exception("job %s failed unexpectedly", job_id)
                self._finish(job_id, "failed", f"internal error: {type(exc).__name__}: {exc}")
            finally:
                self._runner_cancel_requested = False
                self.active = None
                self._tasks_changed.fire()

    _runner_cancel_requested = False

    # jobs ----------------------------------------------------------------
    def submit(self, spec_data: dict[str, Any], source: str | None) -> Job:
        spec = parse_spec(spec_data)
        size = parameter_count(spec.model, spec.data)
        if size is not None and size > MAX_PARAMETERS:
            raise ApiError(
                422,
                "invalid_spec",
                f"the model has {size:,} parameters; this coordinator accepts at most "
                f"{MAX_PARAMETERS:,}",
            )
        try:
            module = build_model(spec.model, spec.data, seed=spec.job.seed)
        except ModelError as exc:
            raise ApiError(422, "invalid_spec", str(exc)) from None
        except (RuntimeError, MemoryError) as exc:
            raise ApiError(422, "invalid_spec", f"the model cannot be built: {exc}") from None
        job_id = "job-" + secrets.token_hex(6)
        state = get_state(module)
        self.artifacts.save_model(job_id, 0, state, {"job": job_id, "round": "0"})
        job = Job(
            id=job_id,
            name=spec.job.name,
            spec=json.dumps(spec.to_dict()),
            source=source,
            status="queued",
            round=0,
            created_at=time.time(),
            extra="{}",
        )
        self.store.add_job(job)
        self._queue_changed.fire()
        return job

    async def cancel(self, job_id: str) -> Job:
        job = self._job_or_404(job_id)
        if job.status in TERMINAL:
            raise ApiError(409, "conflict", f"job {job_id} is already {job.status}")
        self.store.update_job(
            job_id, status="cancelled", finished_at=time.time(), reason="cancelled by the operator"
        )
        if self.active is not None and self.active.id == job_id:
            self.active.cancelled = True
            self._runner_cancel_requested = True
            if self._runner is not None:
                self._runner.cancel()
        self._progress.fire()
        return self._job_or_404(job_id)

    def _job_or_404(self, job_id: str) -> Job:
        job = self.store.job(job_id)
        if job is None:
            raise ApiError(404, "not_found", f"no job {job_id!r}")
        return job

    def describe(self, job_id: str) -> dict[str, Any]:
        job = self._job_or_404(job_id)
        spec = json.loads(job.spec)
        active = self.active if self.active is not None and self.active.id == job_id else None
        stage = None
        if active is not None and active.round is not None:
            state = active.round
            stage = {
                "round": state.number,
                "stage": str(state.stage),
                "sampled": len(state.sampled),
                "reported": len(state.reported),
            }
        return {
            "id": job.id,
            "name": job.name,
            "status": job.status,
            "reason": job.reason,
            "round": job.round,
            "rounds_total": spec["job"]["rounds"],
            "current": stage,
            "created_at": job.created_at,
            "started_at": job.started_at,
            "finished_at": job.finished_at,
            "declined": json.loads(job.extra or "{}").get("declined", {}),
            "spec": spec,
            "source": job.source,
            "rounds": self.store.rounds(job_id),
        }

    async def wait_progress(self, job_id: str, after_round: int, timeout: float) -> dict[str, Any]:
        """Long-poll: return when the job passes ``after_round`` or ends, or at timeout."""
        end = time.monotonic() + timeout
        while True:
            job = self._job_or_404(job_id)
            if job.round > after_round or job.status in TERMINAL:
                return self.describe(job_id)
            remaining = end - time.monotonic()
            if remaining <= 0 or self._closing:
                return self.describe(job_id)
            await self._progress.wait(remaining)

    def model_file(self, job_id: str, number: int | None) -> tuple[Path, int]:
        """The global model after round ``number`` (default: the latest committed one).

        Only the latest committed model is kept, plus, while a round is being
        evaluated, the freshly aggregated one.
        """
        active = self.active
        if active is not None and active.id == job_id:  # the hot path: no database query
            latest = active.completed_round
        else:
            latest = self._job_or_404(job_id).round
        number = latest if number is None else number
        path = self.artifacts.model_path(job_id, number)
        if not path.exists():
            raise ApiError(
                404,
                "not_found",
                f"job {job_id} has no model for round {number} (latest: {latest})",
            )
        return path, number

    def count_download(self, job_id: str, number: int, nbytes: int) -> None:
        active = self.active
        if active is not None and active.id == job_id and active.round is not None:
            if active.round.number - 1 == number or active.round.number == number:
                active.round.bytes_down += nbytes

    # the round loop ----------------------------------------------------------
    async def _run_job(self, job_id: str) -> None:
        row = self._job_or_404(job_id)
        spec = parse_spec(json.loads(row.spec))
        try:
            job = await asyncio.to_thread(self._activate, row, spec)
        except JobFailed as exc:
            self._finish(job_id, "failed", str(exc))
            return
        if self._job_or_404(job_id).status in TERMINAL:  # cancelled while activating
            return
        self.active = job
        try:
            for number in range(job.completed_round + 1, spec.job.rounds + 1):
                await self._run_round(job, number)
        except JobFailed as exc:
            log.warning("job %s failed: %s", job_id, exc)
            self._finish(job_id, "failed", str(exc))
            return
        except BudgetReached as exc:
            self._finish(job_id, "completed", str(exc))
            return
        self._finish(job_id, "completed", None)

    def _activate(self, row: Job, spec: JobSpec) -> ActiveJob:
        if row.status == "running":
            with self.store.session() as s:  # the interrupted round reruns from scratch
                s.execute(delete(Update).where(Update.job_id == row.id, Update.round > row.round))
            log.info("resuming job %s after round %d", row.id, row.round)
        if not self.store.start_job(row.id, time.time()):
            raise JobFailed("the job ended before it started")
        path = self.artifacts.model_path(row.id, row.round)
        if not self.artifacts.restore(path):
            raise JobFailed(f"the model of round {row.round} is missing from the artifact store")
        self.artifacts.restore(self.artifacts.ou_path(row.id, row.round))
        manifest = tensors.SafetensorsFile(path).manifest
        ids = {m.name: m.id for m in self.store.members()}
        declined = json.loads(row.extra or "{}").get("declined", {})
        job = ActiveJob(
            id=row.id,
            spec=spec,
            manifest=manifest,
            max_upload=tensors.max_payload_bytes(manifest),
            completed_round=row.round,
            declined={ids[name]: reason for name, reason in declined.items() if name in ids},
        )
        if row.round > 0 and spec.privacy.unit == "record":
            job.record_epsilon_next = max(
                (r.get("record_epsilon_next", 0.0) for r in self.store.rounds(row.id)),
                default=0.0,
            )
        job.optimizer = self._optimizer(row, spec, manifest)
        saved = json.loads(row.extra or "{}").get("privacy")
        job.privacy = JobPrivacy(spec, saved, self.artifacts.ou_path(row.id, row.round))
        if spec.evaluation.holdout:
            try:
                job.holdout = open_dataset(spec.evaluation.holdout, spec.data)
            except DataError as exc:
                raise JobFailed(f"held-out data: {exc}") from None
            job.module = build_model(spec.model, spec.data)
        return job

    def _optimizer(self, row: Job, spec: JobSpec, manifest: tensors.Manifest) -> ServerOptimizer:
        """The job's server optimizer, with its state after the last committed round."""
        cfg = spec.strategy
        fresh = ServerOptimizer(cfg.name, manifest, cfg.lr, cfg.beta1, cfg.beta2, cfg.tau)
        if not fresh.stateful or row.round == 0:
            return fresh
        path = self.artifacts.optimizer_path(row.id, row.round)
        if not self.artifacts.restore(path):
            raise JobFailed(f"the server optimizer state of round {row.round} is missing")
        arrays, meta = tensors.load_state(path)
        try:
            return ServerOptimizer.from_state(manifest, arrays, meta)
        except ValueError as exc:
            raise JobFailed(f"round {row.round}: {exc}") from None

    def _finish(self, job_id: str, status: str, reason: str | None) -> None:
        job = self.store.job(job_id)
        if job is not None and job.status not in TERMINAL:
            self.store.update_job(job_id, status=status, reason=reason, finished_at=time.time())
        self._progress.fire()

    async def _await_members(self, job: ActiveJob) -> tuple[list[int], dict[int, str]]:
        """Wait until enough eligible members are online: ``(online ids, eligible id -> name)``.

        Eligible: enrolled, not revoked, and not declined this job. After
        ``round_timeout`` the round starts with whoever is online if that meets
        ``min_clients``. A coordinator that has just (re)started knows nobody
        is online yet, so it does not declare the quorum lost before members
        have had :data:`RECONNECT_GRACE_S` to come back from their backoff.
        """
        spec = job.spec
        deadline = time.monotonic() + spec.federation.round_timeout
        while True:
            eligible = {
                m.id: m.name
                for m in self.store.members()
                if m.revoked_at is None and m.id not in job.declined
            }
            need = min(spec.clients_for_round(len(eligible)), max(len(eligible), 1))
            online = sorted(self._online() & set(eligible))
            if len(online) >= need and online:
                return online, eligible
            now = time.monotonic()
            if now >= deadline:
                if len(online) >= spec.federation.min_clients:
                    return online, eligible
                reconnecting = len(eligible) >= spec.federation.min_clients and (
                    now < self._started + RECONNECT_GRACE_S
                )
                if not reconnecting:
                    raise JobFailed(
                        f"quorum not met: {len(online)} member(s) online after waiting "
                        f"{spec.federation.round_timeout:g} s, "
                        f"min_clients is {spec.federation.min_clients}{self._declined_note(job)}"
                    )
            wake = deadline if now < deadline else self._started + RECONNECT_GRACE_S
            await self._members_changed.wait(max(0.05, min(1.0, wake - now)))

    def _declined_note(self, job: ActiveJob) -> str:
        """The members that declined the job and why, for a quorum failure's reason."""
        if not job.declined:
            return ""
        names = {m.id: m.name for m in self.store.members()}
        why = "; ".join(f"{names.get(mid, mid)}: {reason}" for mid, reason in job.declined.items())
        return f" (declined: {why[:2000]})"

    async def _run_round(self, job: ActiveJob, number: int) -> None:
        spec = job.spec
        budget = spec.privacy.epsilon_budget
        if budget is not None and job.record_epsilon_next > budget:
            raise BudgetReached(
                f"privacy budget reached: after round {number - 1}, one more round of DP-SGD "
                f"would bring a member's record-level epsilon to {job.record_epsilon_next:.3f} "
                f"> {budget:g}"
            )
        online, names = await self._await_members(job)
        eligible_count = len(names)
        count = min(spec.clients_for_round(eligible_count), len(online))
        rng = np.random.default_rng([spec.job.seed, number])
        chosen = sorted(int(m) for m in rng.choice(online, size=count, replace=False))
        privacy = job.privacy
        assert privacy is not None
        event = None
        if privacy.enabled:
            try:
                event = privacy.event(count, eligible_count)
            except PrivacyError as exc:
                raise JobFailed(str(exc)) from None
            if privacy.ledger.would_exceed(event):
                raise BudgetReached(
                    f"privacy budget reached: epsilon {privacy.ledger.epsilon():.3f} after round "
                    f"{number - 1}; round {number} would bring it to "
                    f"{privacy.ledger.epsilon_with(event):.3f} > {privacy.cfg.epsilon_budget:g}"
                )
        state = RoundState(
            number=number,
            sampled={m: names[m] for m in chosen},
            deadline=time.monotonic() + spec.federation.round_timeout,
            acc=WeightedSum(job.manifest),
            privacy=privacy.task_info(count),
            event=event,
        )
        job.round = state
        self._tasks_changed.fire()
        await self._until_done(state, job)
        with job.lock:
            state.stage = Stage.AGGREGATING
        if len(state.reported) < spec.federation.min_clients:
            raise JobFailed(
                f"quorum not met in round {number}: {len(state.reported)} of {len(state.sampled)} "
                f"sampled member(s) reported by the deadline, min_clients is "
                f"{spec.federation.min_clients}{self._declined_note(job)}"
            )
        metrics = await asyncio.to_thread(self._aggregate, job, state)
        state.acc = None
        if spec.evaluation.validation_split > 0:
            state.evaluators = {m: state.sampled[m] for m in state.reported}
            state.deadline = time.monotonic() + spec.federation.round_timeout
            state.done = asyncio.Event()
            state.stage = Stage.EVALUATING
            self._tasks_changed.fire()
            await self._until_done(state, job)
            if state.evaluated:
                metrics.update(self._federated_metrics(state))
                metrics.setdefault("accuracy", metrics["federated_accuracy"])
                metrics.setdefault("loss", metrics["federated_loss"])
        metrics.update(weighted_means(state.train_metrics))
        record_eps = [m["record_epsilon"] for _, m in state.train_metrics if "record_epsilon" in m]
        if record_eps:  # record-level DP: the guarantee is the weakest member's
            metrics.update(record_epsilon=max(record_eps), delta=spec.privacy.delta)
        record_next = [
            m["record_epsilon_next"] for _, m in state.train_metrics if "record_epsilon_next" in m
        ]
        if record_next:  # a member's epsilon only grows: the running maximum is the one to watch
            job.record_epsilon_next = max(job.record_epsilon_next, *record_next)
            metrics["record_epsilon_next"] = max(record_next)
        metrics.update(
            clients=len(state.reported),
            seconds=time.monotonic() - state.opened_at,
            bytes_up=state.bytes_up,
            bytes_down=state.bytes_down,
        )
        metrics.setdefault("accuracy", None)
        metrics.setdefault("loss", None)
        participants = sorted(state.sampled[m] for m in state.reported)
        extra = {"privacy": privacy.persisted()} if privacy.enabled else {}
        self.store.close_round(job.id, number, metrics, participants, state.receipts, extra)
        # off the critical path; pruning only ever removes rounds older than ``number``
        asyncio.get_running_loop().run_in_executor(
            None, self.artifacts.prune_models, job.id, number
        )
        job.completed_round = number
        state.stage = Stage.CLOSED
        job.round = None
        self._progress.fire()

    async def _until_done(self, state: RoundState, job: ActiveJob) -> None:
        state.check_done(set(job.declined))
        try:
            await asyncio.wait_for(
                state.done.wait(), timeout=max(0.0, state.deadline - time.monotonic())
            )
        except TimeoutError:
            pass

    def _aggregate(self, job: ActiveJob, state: RoundState) -> dict[str, Any]:
        assert state.acc is not None and job.privacy is not None
        privacy = job.privacy
        sampled = len(state.sampled)
        if privacy.enabled:  # DP-FedAvg: noise on the sum of clipped deltas, fixed denominator
            noise = privacy.central_noise(job.manifest, sampled, state.number)
            for name, values in (noise or {}).items():
                state.acc.add_chunk(name, 0, values.reshape(-1), 1.0)
            model = state.acc.take_mean(denominator=sampled)
        else:
            model = state.acc.take_mean()
        assert job.optimizer is not None
        job.optimizer.step(model)  # the mean delta becomes the server optimizer's step
        if job.optimizer.stateful:
            path = self.artifacts.optimizer_path(job.id, state.number)
            tensors.save_state(path, *job.optimizer.state_dict())
            self.artifacts.publish(path)
        base = tensors.SafetensorsFile(self.artifacts.model_path(job.id, state.number - 1))
        for name, values in model.items():
            flat = values.reshape(-1)
            for offset, chunk in base.chunks(name):
                flat[offset : offset + chunk.size] += chunk
        self.artifacts.save_model(
            job.id, state.number, model, {"job": job.id, "round": str(state.number)}
        )
        metrics: dict[str, Any] = {}
        if privacy.enabled:
            assert state.event is not None
            privacy.adapt_clip_norm(state.unclipped, len(state.reported), sampled, state.number)
            privacy.record(state.event)
            privacy.save_ou(self.artifacts.ou_path(job.id, state.number))
            self.artifacts.publish(self.artifacts.ou_path(job.id, state.number))
            metrics.update(privacy.metrics())
        if job.holdout is not None:
            set_state(job.module, model)
            result = evaluate(job.module, job.holdout)
            metrics.update(accuracy=result.accuracy, loss=result.loss)
        return metrics

    @staticmethod
    def _federated_metrics(state: RoundState) -> dict[str, float]:
        total = sum(n for n, _, _ in state.evaluated.values())
        return {
            "federated_loss": sum(n * loss for n, loss, _ in state.evaluated.values()) / total,
            "federated_accuracy": sum(n * acc for n, _, acc in state.evaluated.values()) / total,
            "federated_examples": total,
        }
