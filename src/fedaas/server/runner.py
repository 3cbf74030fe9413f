"""The round loop: runs one job through its rounds, stage by stage.

For each round: wait until enough eligible members are online, sample them,
let the inbox collect their updates until all are in or the deadline
passes, then aggregate: the job's privacy (:class:`JobPrivacy`) adds central
noise and fixes the denominator, the server optimizer takes the mean delta
as its step, the new model is written atomically to the artifact store and
evaluated; finally the round's metrics, receipts, participants and privacy
ledger are committed in one database transaction.

A coordinator that dies mid-round restarts from the last committed round;
updates already received for the interrupted round are discarded and the
round reruns with the same sample (sampling derives from the job seed and
the round number, so there is no generator state to lose).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import numpy as np

from fedaas import tensors
from fedaas.algorithms.aggregate import WeightedSum
from fedaas.algorithms.server_optimizers import ServerOptimizer
from fedaas.data.dataset import DataError
from fedaas.data.source import open_dataset
from fedaas.models import build_model, set_state
from fedaas.server.artifacts import Artifacts
from fedaas.server.db import Job, Store
from fedaas.server.errors import JobFailed
from fedaas.server.inbox import Inbox
from fedaas.server.presence import Presence
from fedaas.server.privacy import BudgetReached, JobPrivacy, PrivacyError
from fedaas.server.rounds import ActiveJob, RoundState, Stage, weighted_means
from fedaas.server.signals import Signal
from fedaas.train import evaluate

log = logging.getLogger("fedaas.coordinator")

# Members retry with exponential backoff capped at 30 s (fedaas.client.transport.backoff_delays),
# so after a restart every live member is back within about that long.
RECONNECT_GRACE_S = 40.0


class JobRunner:
    """Runs one job; :meth:`run` returns its final ``(status, reason)``."""

    def __init__(
        self,
        row: Job,
        store: Store,
        artifacts: Artifacts,
        presence: Presence,
        inbox: Inbox,
        progress: Signal,
        started_at: float,
    ) -> None:
        self.row = row
        self.spec = row.job_spec()
        self.store = store
        self.artifacts = artifacts
        self.presence = presence
        self.inbox = inbox
        self.progress = progress
        self.started_at = started_at

    async def run(self) -> tuple[str, str | None]:
        try:
            job = await asyncio.to_thread(self._activate)
        except JobFailed as exc:
            return "failed", str(exc)
        stored = self.store.job(job.id)
        if stored is None or stored.status != "running":  # cancelled while activating
            return "cancelled", None
        self.inbox.job = job
        try:
            for number in range(job.completed_round + 1, self.spec.job.rounds + 1):
                await self._run_round(job, number)
        except JobFailed as exc:
            log.warning("job %s failed: %s", job.id, exc)
            return "failed", str(exc)
        except BudgetReached as exc:
            return "completed", str(exc)
        finally:
            self.inbox.job = None
        return "completed", None

    # activation ------------------------------------------------------------------------
    def _activate(self) -> ActiveJob:
        row, spec = self.row, self.spec
        if row.status == "running":  # the interrupted round reruns from scratch
            self.store.discard_updates_after(row.id, row.round)
            log.info("resuming job %s after round %d", row.id, row.round)
        if not self.store.start_job(row.id, time.time()):
            raise JobFailed("the job ended before it started")
        path = self.artifacts.model_path(row.id, row.round)
        if not self.artifacts.restore(path):
            raise JobFailed(f"the model of round {row.round} is missing from the artifact store")
        ou_path = self.artifacts.ou_path(row.id, row.round)
        self.artifacts.restore(ou_path)
        manifest = tensors.SafetensorsFile(path).manifest
        ids = {m.name: m.id for m in self.store.members()}
        declined = self.store.declined(row.id)
        job = ActiveJob(
            id=row.id,
            spec=spec,
            manifest=manifest,
            max_upload=tensors.max_payload_bytes(manifest),
            completed_round=row.round,
            privacy=JobPrivacy(spec, self.store.privacy_state(row.id), ou_path),
            optimizer=self._optimizer(manifest),
            declined={ids[name]: reason for name, reason in declined.items() if name in ids},
        )
        if spec.evaluation.holdout:
            try:
                job.holdout = open_dataset(spec.evaluation.holdout, spec.data)
            except DataError as exc:
                raise JobFailed(f"held-out data: {exc}") from None
            job.module = build_model(spec.model, spec.data)
        return job

    def _optimizer(self, manifest: tensors.Manifest) -> ServerOptimizer:
        """The job's server optimizer, with its state after the last committed round."""
        cfg, row = self.spec.strategy, self.row
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

    # one round -------------------------------------------------------------------------
    async def _await_members(self, job: ActiveJob) -> tuple[list[int], dict[int, str]]:
        """Wait until enough eligible members are online: ``(online ids, eligible id -> name)``.

        Eligible: enrolled, not revoked, and not declined this job. After
        ``round_timeout`` the round starts with whoever is online if that meets
        ``min_clients``. A coordinator that has just (re)started knows nobody
        is online yet, so it does not declare the quorum lost before members
        have had :data:`RECONNECT_GRACE_S` to come back from their backoff.
        """
        fed = self.spec.federation
        deadline = time.monotonic() + fed.round_timeout
        while True:
            eligible = {
                m.id: m.name
                for m in self.store.members()
                if m.revoked_at is None and m.id not in job.declined
            }
            need = min(self.spec.clients_for_round(len(eligible)), max(len(eligible), 1))
            online = sorted(self.presence.online() & set(eligible))
            if len(online) >= need and online:
                return online, eligible
            now = time.monotonic()
            if now >= deadline:
                if len(online) >= fed.min_clients:
                    return online, eligible
                reconnecting = len(eligible) >= fed.min_clients and (
                    now < self.started_at + RECONNECT_GRACE_S
                )
                if not reconnecting:
                    raise JobFailed(
                        f"quorum not met: {len(online)} member(s) online after waiting "
                        f"{fed.round_timeout:g} s, "
                        f"min_clients is {fed.min_clients}{self._declined_note(job)}"
                    )
            wake = deadline if now < deadline else self.started_at + RECONNECT_GRACE_S
            await self.presence.changed.wait(max(0.05, min(1.0, wake - now)))

    def _declined_note(self, job: ActiveJob) -> str:
        """The members that declined the job and why, for a quorum failure's reason."""
        if not job.declined:
            return ""
        names = {m.id: m.name for m in self.store.members()}
        why = "; ".join(f"{names.get(mid, mid)}: {reason}" for mid, reason in job.declined.items())
        return f" (declined: {why[:2000]})"

    async def _run_round(self, job: ActiveJob, number: int) -> None:
        spec, privacy = self.spec, job.privacy
        state = RoundState(number=number, deadline=time.monotonic() + spec.federation.round_timeout)
        job.round = state
        privacy.check_budget(number)
        online, names = await self._await_members(job)
        count = min(spec.clients_for_round(len(names)), len(online))
        rng = np.random.default_rng([spec.job.seed, number])
        chosen = sorted(int(m) for m in rng.choice(online, size=count, replace=False))
        try:
            privacy.open_round(number, sampled=count, eligible=len(names))
        except PrivacyError as exc:
            raise JobFailed(str(exc)) from None
        state.sampled = {m: names[m] for m in chosen}
        state.deadline = time.monotonic() + spec.federation.round_timeout
        state.acc = WeightedSum(job.manifest)
        state.privacy = privacy.instructions(count)
        state.stage = Stage.TRAINING
        self.inbox.tasks_changed.fire()
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
            self.inbox.tasks_changed.fire()
            await self._until_done(state, job)
            if state.evaluated:
                metrics.update(_federated_metrics(state))
                metrics.setdefault("accuracy", metrics["federated_accuracy"])
                metrics.setdefault("loss", metrics["federated_loss"])
        metrics.update(weighted_means(state.train_metrics))
        metrics.update(
            privacy.close_round(
                number,
                unclipped=state.unclipped,
                reported=len(state.reported),
                sampled=len(state.sampled),
                member_metrics=state.train_metrics,
            )
        )
        if privacy.save_ou(self.artifacts.ou_path(job.id, number)):
            self.artifacts.publish(self.artifacts.ou_path(job.id, number))
        metrics.update(
            clients=len(state.reported),
            seconds=time.monotonic() - state.opened_at,
            bytes_up=state.bytes_up,
            bytes_down=state.bytes_down,
        )
        metrics.setdefault("accuracy", None)
        metrics.setdefault("loss", None)
        participants = sorted(state.sampled[m] for m in state.reported)
        saved = privacy.persisted() if privacy.active else None
        self.store.close_round(job.id, number, metrics, participants, state.receipts, saved)
        # off the critical path; pruning only ever removes rounds older than ``number``
        asyncio.get_running_loop().run_in_executor(
            None, self.artifacts.prune_models, job.id, number
        )
        job.completed_round = number
        state.stage = Stage.CLOSED
        job.round = None
        self.progress.fire()

    async def _until_done(self, state: RoundState, job: ActiveJob) -> None:
        state.check_done(set(job.declined))
        try:
            await asyncio.wait_for(
                state.done.wait(), timeout=max(0.0, state.deadline - time.monotonic())
            )
        except TimeoutError:
            pass

    def _aggregate(self, job: ActiveJob, state: RoundState) -> dict[str, Any]:
        """Mean update -> server optimizer -> new model, persisted; held-out metrics."""
        assert state.acc is not None
        sampled = len(state.sampled)
        noise = job.privacy.central_noise(job.manifest, sampled, state.number)
        for name, values in (noise or {}).items():  # DP-FedAvg: noise on the sum
            state.acc.add_chunk(name, 0, values.reshape(-1), 1.0)
        model = state.acc.take_mean(denominator=job.privacy.denominator(sampled))
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
        if job.holdout is not None:
            set_state(job.module, model)
            result = evaluate(job.module, job.holdout)
            metrics.update(accuracy=result.accuracy, loss=result.loss)
        return metrics


def _federated_metrics(state: RoundState) -> dict[str, float]:
    total = sum(n for n, _, _ in state.evaluated.values())
    return {
        "federated_loss": sum(n * loss for n, loss, _ in state.evaluated.values()) / total,
        "federated_accuracy": sum(n * acc for n, _, acc in state.evaluated.values()) / total,
        "federated_examples": total,
    }
