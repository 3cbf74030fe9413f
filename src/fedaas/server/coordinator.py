"""The round coordinator: runs jobs through the round state machine.

One job trains at a time (members train one model at a time); others wait
in the queue. Each job runs as one asyncio task that walks the stages of
:mod:`fedaas.server.rounds`; request handlers only read the current stage
and fold updates, and wake the task when a stage's answers are all in.

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
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import delete

from fedaas import tensors
from fedaas.algorithms.aggregate import WeightedSum
from fedaas.data.dataset import ArrayDataset, DataError
from fedaas.data.source import open_dataset
from fedaas.models import build_model, get_state, set_state
from fedaas.models.registry import ModelError, parameter_count
from fedaas.server.artifacts import Artifacts
from fedaas.server.db import Job, Store, Update
from fedaas.server.errors import ApiError
from fedaas.server.privacy import JobPrivacy, PrivacyError
from fedaas.server.rounds import RoundState, Stage, weighted_means
from fedaas.server.uploads import fold_update, validate_update
from fedaas.spec import JobSpec, parse_spec
from fedaas.train import evaluate

log = logging.getLogger("fedaas.coordinator")

ONLINE_WINDOW_S = 60.0
MAX_RECEIPTS = 100_000
MAX_PARAMETERS = 250_000_000  # 1 GB of float32: larger models are refused at submission
TERMINAL = ("completed", "failed", "cancelled")


class JobFailed(Exception):
    """The job cannot continue; the message is the reason shown to the operator."""


class BudgetReached(Exception):
    """The next round would exceed the job's privacy budget: stop cleanly."""


@dataclass
class ActiveJob:
    id: str
    spec: JobSpec
    manifest: tensors.Manifest
    max_upload: int
    completed_round: int
    declined: dict[int, str] = field(default_factory=dict)
    round: RoundState | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)
    privacy: JobPrivacy | None = None
    holdout: ArrayDataset | None = None
    module: Any = None
    cancelled: bool = False


class _Signal:
    """A broadcast wake-up: every waiter is released on each :meth:`fire`."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def fire(self) -> None:
        self._event.set()
        self._event = asyncio.Event()

    async def wait(self, timeout: float) -> None:
        try:
            await asyncio.wait_for(self._event.wait(), timeout=max(timeout, 0))
        except TimeoutError:
            pass


class Coordinator:
    def __init__(self, store: Store, artifacts: Artifacts) -> None:
        self.store = store
        self.artifacts = artifacts
        self.active: ActiveJob | None = None
        self._last_seen: dict[int, float] = {}
        self._polling: dict[int, int] = {}
        self._tasks_changed = _Signal()
        self._members_changed = _Signal()
        self._progress = _Signal()
        self._queue_changed = _Signal()
        self._receipts: OrderedDict[tuple[int, str | None], dict[str, Any]] = OrderedDict()
        self._supervisor: asyncio.Task | None = None
        self._runner: asyncio.Task | None = None

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
            stage = {"round": active.round.number, "stage": str(active.round.stage)}
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

    # members ---------------------------------------------------------------
    def _online(self) -> set[int]:
        now = time.monotonic()
        return {
            mid
            for mid, seen in self._last_seen.items()
            if self._polling.get(mid, 0) > 0 or now - seen < ONLINE_WINDOW_S
        }

    def forget_member(self, member_id: int) -> None:
        """A revoked member: never sampled again; an open round stops waiting for it."""
        self._last_seen.pop(member_id, None)
        job = self.active
        if job is not None:
            job.declined.setdefault(member_id, "revoked by the operator")
            if job.round is not None:
                job.round.check_done(set(job.declined))
        self._members_changed.fire()
        self._tasks_changed.fire()

    async def next_task(self, member_id: int, timeout: float) -> dict[str, Any] | None:
        """Long-poll for the member's next task; ``None`` when there is none yet."""
        end = time.monotonic() + timeout
        first = member_id not in self._last_seen
        self._polling[member_id] = self._polling.get(member_id, 0) + 1
        try:
            while True:
                self._last_seen[member_id] = time.monotonic()
                if first:
                    first = False
                    self._members_changed.fire()
                task = self._task_for(member_id)
                remaining = end - time.monotonic()
                if task is not None or remaining <= 0 or self._closing:
                    return task
                await self._tasks_changed.wait(remaining)
        finally:
            self._polling[member_id] -= 1
            self._last_seen[member_id] = time.monotonic()

    def _task_for(self, member_id: int) -> dict[str, Any] | None:
        job = self.active
        if job is None or job.round is None or member_id in job.declined:
            return None
        state = job.round
        if (
            state.stage == Stage.TRAINING
            and member_id in state.sampled
            and member_id not in state.reported
        ):
            kind, model_round = "train", state.number - 1
        elif (
            state.stage == Stage.EVALUATING
            and member_id in state.evaluators
            and member_id not in state.evaluated
        ):
            kind, model_round = "evaluate", state.number
        else:
            return None
        return {
            "job_id": job.id,
            "round": state.number,
            "stage": kind,
            "model_round": model_round,
            "model_etag": etag(job.id, model_round),
            "deadline_in": max(0.0, state.deadline - time.monotonic()),
            "max_upload_bytes": job.max_upload,
            "spec": job.spec.to_dict(),
            "privacy": state.privacy,
        }

    def _round_for(
        self, job_id: str, number: int, stage: Stage, member_id: int
    ) -> tuple[ActiveJob, RoundState]:
        job = self.active
        if job is None or job.id != job_id:
            stored = self._job_or_404(job_id)
            raise ApiError(
                409, "round_closed", f"job {job_id} is {stored.status}; it takes no uploads now"
            )
        state = job.round
        if state is None or state.number != number or state.stage != stage:
            raise ApiError(
                409, "round_closed", f"round {number} of job {job_id} is not open for this"
            )
        members = state.sampled if stage == Stage.TRAINING else state.evaluators
        if member_id not in members:
            raise ApiError(403, "not_sampled", f"this member is not part of round {number}")
        if member_id in (state.reported if stage == Stage.TRAINING else state.evaluated):
            raise ApiError(409, "duplicate", f"this member already reported for round {number}")
        return job, state

    def check_upload(
        self, job_id: str, number: int, member_id: int, key: str | None
    ) -> tuple[int, dict[str, Any] | None]:
        """Before the body is read: ``(size limit, None)``, or ``(0, receipt)`` for a retry.

        A retried upload (same ``Idempotency-Key`` from the same member, e.g.
        after the connection broke once the coordinator had the update) gets
        the original receipt back and is never counted twice.
        """
        replay = self._receipts.get((member_id, key)) if key else None
        if replay is not None and replay["job_id"] == job_id and replay["round"] == number:
            return 0, replay
        job, _ = self._round_for(job_id, number, Stage.TRAINING, member_id)
        return job.max_upload, None

    def _remember(self, member_id: int, key: str | None, receipt: dict[str, Any]) -> None:
        if key:
            self._receipts[(member_id, key)] = receipt
            while len(self._receipts) > MAX_RECEIPTS:
                self._receipts.popitem(last=False)

    def accept_update(
        self,
        job_id: str,
        number: int,
        member_id: int,
        body: bytes | Path,
        nbytes: int,
        key: str | None = None,
    ) -> dict[str, Any]:
        """Validate and fold an update (large, spooled ones in a worker thread)."""
        job, _ = self._round_for(job_id, number, Stage.TRAINING, member_id)
        update, num_examples, metrics = validate_update(body, job.manifest)
        with job.lock:  # the round may have closed while the body was checked
            job, state = self._round_for(job_id, number, Stage.TRAINING, member_id)
            assert state.acc is not None
            private = job.privacy is not None and job.privacy.enabled
            fold_update(update, state.acc, 1.0 if private else float(num_examples))
            state.unclipped += update.metadata.get("unclipped") == "1"
            state.reported[member_id] = num_examples
            state.train_metrics.append((num_examples, metrics))
            state.receipts.append(
                {
                    "job_id": job_id,
                    "round": number,
                    "member_id": member_id,
                    "num_examples": num_examples,
                    "nbytes": nbytes,
                    "metrics": json.dumps(metrics),
                    "received_at": time.time(),
                }
            )
            state.bytes_up += nbytes
            receipt = {
                "accepted": True,
                "job_id": job_id,
                "round": number,
                "num_examples": num_examples,
            }
            self._remember(member_id, key, receipt)
        return receipt

    def after_answer(self, job_id: str) -> None:
        """Called on the event loop after an answer was recorded."""
        job = self.active
        if job is not None and job.id == job_id and job.round is not None:
            job.round.check_done(set(job.declined))

    def accept_evaluation(
        self, job_id: str, number: int, member_id: int, examples: int, loss: float, accuracy: float
    ) -> None:
        job, state = self._round_for(job_id, number, Stage.EVALUATING, member_id)
        state.evaluated[member_id] = (examples, loss, accuracy)
        self.after_answer(job_id)

    def decline(self, job_id: str, member_id: int, name: str, reason: str) -> None:
        job = self.active
        if job is None or job.id != job_id:
            self._job_or_404(job_id)
            raise ApiError(409, "conflict", f"job {job_id} is not running")
        job.declined[member_id] = reason
        stored = self._job_or_404(job_id)
        extra = json.loads(stored.extra or "{}")
        extra.setdefault("declined", {})[name] = reason
        self.store.update_job(job_id, extra=json.dumps(extra))
        log.warning("member %s declined job %s: %s", name, job_id, reason)
        self.after_answer(job_id)
        self._members_changed.fire()

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
        job = ActiveJob(
            id=row.id,
            spec=spec,
            manifest=manifest,
            max_upload=tensors.max_payload_bytes(manifest),
            completed_round=row.round,
            declined={},
        )
        saved = json.loads(row.extra or "{}").get("privacy")
        job.privacy = JobPrivacy(spec, saved, self.artifacts.ou_path(row.id, row.round))
        if spec.evaluation.holdout:
            try:
                job.holdout = open_dataset(spec.evaluation.holdout, spec.data)
            except DataError as exc:
                raise JobFailed(f"held-out data: {exc}") from None
            job.module = build_model(spec.model, spec.data)
        return job

    def _finish(self, job_id: str, status: str, reason: str | None) -> None:
        job = self.store.job(job_id)
        if job is not None and job.status not in TERMINAL:
            self.store.update_job(job_id, status=status, reason=reason, finished_at=time.time())
        self._progress.fire()

    async def _await_members(self, job: ActiveJob) -> tuple[list[int], dict[int, str]]:
        """Wait until enough eligible members are online: ``(online ids, eligible id -> name)``.

        Eligible: enrolled, not revoked, and not declined this job.
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
            if time.monotonic() >= deadline:
                if len(online) >= spec.federation.min_clients:
                    return online, eligible
                raise JobFailed(
                    f"quorum not met: {len(online)} member(s) online after waiting "
                    f"{spec.federation.round_timeout:g} s, min_clients is {spec.federation.min_clients}"
                )
            await self._members_changed.wait(min(1.0, deadline - time.monotonic()))

    async def _run_round(self, job: ActiveJob, number: int) -> None:
        spec = job.spec
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
                f"sampled member(s) reported by the deadline, min_clients is {spec.federation.min_clients}"
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


def etag(job_id: str, number: int) -> str:
    return f'"{job_id}-r{number}"'
