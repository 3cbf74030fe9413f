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
round reruns. Without DP it reruns with the same sample (sampling derives
from the job seed and the round number); under client-level DP with a fresh
Poisson sample from the cryptographic source, and a round that died after
its privacy event was stored (just before its noise and model) is counted
again when it reruns. A round's model is served only once the round is
committed; federated evaluation runs on the committed model and its metrics
are added to the round's record afterwards.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from typing import Any

import numpy as np

from fedaas import tensors
from fedaas.server.activation import activate
from fedaas.server.artifacts import Artifacts
from fedaas.server.db import Job, Store
from fedaas.server.eligibility import candidates, note_misses
from fedaas.server.errors import JobFailed
from fedaas.server.inbox import Inbox
from fedaas.server.member_reports import (
    capped_evaluations,
    custom_evaluations,
    decline_over_budget,
    member_means,
)
from fedaas.server.outages import Dependencies, DependencyUnavailable, deadline_for
from fedaas.server.presence import Presence
from fedaas.server.privacy import BudgetReached, PrivacyError
from fedaas.server.rounds import ActiveJob, RoundState, Stage, aggregate_round
from fedaas.server.secagg import open_secure_round
from fedaas.server.signals import Signal
from fedaas.server.spill import MEMORY_BYTES, RoundSpill

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
        *,
        allowed_code: tuple[str, ...] = (),
        deps: Dependencies | None = None,
    ) -> None:
        self.allowed_code = allowed_code  # --allow-code: what model factories may run here
        self.deps = deps or Dependencies()  # database/artifact-store outages are waited out
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
            job = await self.deps.acall(
                activate, self.row, self.spec, self.store, self.artifacts, self.allowed_code
            )
        except (JobFailed, DependencyUnavailable) as exc:
            return "failed", str(exc)
        stored = await self.deps.acall(self.store.job, job.id)
        if stored is None or stored.status != "running":  # cancelled while activating
            return "cancelled", None
        self.inbox.job = job
        try:
            for number in range(job.completed_round + 1, self.spec.job.rounds + 1):
                await self._run_round(job, number)
        except (JobFailed, DependencyUnavailable) as exc:
            log.warning("job %s failed: %s", job.id, exc)
            return "failed", str(exc)
        except BudgetReached as exc:
            return "completed", str(exc)
        finally:
            self.inbox.job = None
        return "completed", None

    # one round -------------------------------------------------------------------------
    async def _await_members(self, job: ActiveJob) -> tuple[list[int], dict[int, str]]:
        """Wait until enough eligible members are online: ``(online ids, eligible id -> name)``.

        Eligible: enrolled, not revoked, not declined, not benched for a missed
        deadline (:mod:`fedaas.server.eligibility`; unless the quorum needs it).
        After ``round_timeout`` the round starts with whoever is online if that
        meets ``min_clients``; a coordinator that has just (re)started gives
        members :data:`RECONNECT_GRACE_S` to come back from their backoff first.
        """
        fed = self.spec.federation
        deadline = time.monotonic() + fed.round_timeout
        number = job.round.number if job.round is not None else job.completed_round + 1
        while True:
            members = await self.deps.acall(self.store.members)
            everyone, eligible = candidates(members, job, number)
            need = min(self.spec.clients_for_round(len(eligible)), max(len(eligible), 1))
            online = sorted(self.presence.online() & set(eligible))
            if len(online) >= max(need, fed.min_clients) and online:
                return online, eligible
            now = time.monotonic()
            if now >= deadline:
                if len(online) >= fed.min_clients:
                    return online, eligible
                online = sorted(self.presence.online() & set(everyone))  # benched ones too
                if len(online) >= fed.min_clients:
                    return online, everyone
                reconnecting = len(everyone) >= fed.min_clients and (
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
        # client-level DP: Poisson over every eligible member (online or not), from the
        # cryptographic source; otherwise a seeded draw among the online (JobPrivacy.sample)
        chosen = privacy.sample(number, sorted(names), online)
        try:
            privacy.open_round(number, eligible=len(names))
        except PrivacyError as exc:
            raise JobFailed(str(exc)) from None
        state.sampled = {m: names[m] for m in chosen}
        state.deadline = time.monotonic() + spec.federation.round_timeout
        state.spill = RoundSpill(
            self.artifacts.spool, job.id, number, job.manifest, memory_bytes=MEMORY_BYTES
        )
        state.privacy = privacy.instructions()
        ahead, job.secure_ahead = job.secure_ahead, None  # keys sent in the last round
        state.secure = open_secure_round(spec, job.id, state, job.manifest, self.store, ahead)
        state.stage = Stage.TRAINING
        self.inbox.tasks_changed.fire()
        if state.secure is not None:  # SecAgg+: four stages, only the sum recovered
            await state.secure.run(state, set(job.declined), spec.federation.min_clients)
            job.secure_ahead = state.secure.keys_ahead()
        else:
            await self._until_done(state, job)
        with job.lock:
            state.stage = Stage.AGGREGATING
        note_misses(job, state)
        if len(state.reported) < spec.federation.min_clients:
            state.spill.discard()
            counts = (  # under client-level DP the counts are not published
                ""
                if privacy.disclosure.hides_counts
                else f": {len(state.reported)} of {len(state.sampled)} sampled member(s) reported"
            )
            raise JobFailed(
                f"quorum not met in round {number}{counts} by the deadline, min_clients is "
                f"{spec.federation.min_clients}{self._declined_note(job)}"
            )
        # the round's privacy event is stored before its noise is drawn or its model written:
        # a crash after this point counts the round even though it reruns (never once for two)
        privacy.record_release(number)
        if privacy.active:
            await self.deps.acall(self.store.save_privacy_state, job.id, privacy.persisted())
        try:
            model, metrics = await asyncio.to_thread(self._aggregate, job, state)
        finally:
            state.spill.discard()
        await self.deps.acall(  # the store's outages are waited out, the model written once
            self._persist,
            job,
            number,
            model,
            on="artifacts",
            deadline_s=deadline_for(tensors.manifest_bytes(job.manifest)),
        )
        metrics.update(member_means(state.train_metrics))  # "members.<key>": never ours
        metrics.update(
            privacy.close_round(
                number,
                unclipped=state.unclipped,
                reported=len(state.reported),
                member_metrics=decline_over_budget(self.spec, job, state, self.store),
            )
        )
        if privacy.save_ou(self.artifacts.ou_path(job.id, number)):
            await self.deps.acall(
                self.artifacts.publish, self.artifacts.ou_path(job.id, number), on="artifacts"
            )
        metrics.update(
            clients=len(state.reported),
            seconds=time.monotonic() - state.opened_at,
            bytes_up=state.bytes_up,
            bytes_down=state.bytes_down,
        )
        metrics.setdefault("accuracy", None)
        metrics.setdefault("loss", None)
        # under DP: no participants, receipts or per-member values (server/disclosure.py)
        participants = privacy.disclosure.participants(
            sorted(state.sampled[m] for m in state.reported)
        )
        metrics = privacy.disclosure.published(metrics)
        saved = privacy.persisted() if privacy.active else None
        await self.deps.acall(
            self.store.close_round, job.id, number, metrics, participants, state.receipts, saved
        )
        job.completed_round = number  # committed: from now on its model may be served
        if spec.evaluation.validation_split > 0:  # federated evaluation of the committed model
            state.evaluators = {m: state.sampled[m] for m in state.reported}
            state.deadline = time.monotonic() + spec.federation.round_timeout
            state.done = asyncio.Event()
            state.stage = Stage.EVALUATING
            self.inbox.tasks_changed.fire()
            await self._until_done(state, job)
            if state.evaluated:  # the SUM of the members' metric states, then the metrics
                federated = capped_evaluations(spec, state.evaluated, state.evaluation_states)
                federated.update(custom_evaluations(state.evaluation_metrics))
                record = functools.partial(
                    self.store.add_round_metrics,
                    job.id,
                    number,
                    federated,
                    # without a holdout, the round's own keys show the federated values
                    **{
                        k.removeprefix("federated_"): v
                        for k, v in federated.items()
                        if k.startswith("federated_") and k != "federated_examples"
                    },
                )
                await self.deps.acall(record)
        # off the critical path; pruning only ever removes rounds older than ``number``
        asyncio.get_running_loop().run_in_executor(None, self._prune, job.id, number)
        state.stage = Stage.CLOSED
        job.round = None
        self.progress.fire()

    def _prune(self, job_id: str, keep: int) -> None:
        """Drop older rounds' files; a failure here costs disk space, never the job."""
        try:
            self.artifacts.prune_models(job_id, keep)
        except OSError as exc:
            log.warning("could not prune old artifacts of job %s: %s", job_id, exc)

    async def _until_done(self, state: RoundState, job: ActiveJob) -> None:
        state.check_done(set(job.declined))
        try:
            await asyncio.wait_for(
                state.done.wait(), timeout=max(0.0, state.deadline - time.monotonic())
            )
        except TimeoutError:
            pass

    def _aggregate(
        self, job: ActiveJob, state: RoundState
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Bounded, combined updates -> server optimizer -> the new model and its metrics."""
        base = tensors.SafetensorsFile(self.artifacts.model_path(job.id, state.number - 1))
        return aggregate_round(job, state, base)

    def _persist(self, job: ActiveJob, number: int, model: dict[str, np.ndarray]) -> None:
        """Write (and mirror) round ``number``'s model and optimizer state; safe to repeat."""
        if job.optimizer.stateful:
            path = self.artifacts.optimizer_path(job.id, number)
            tensors.save_state(path, *job.optimizer.state_dict())
            self.artifacts.publish(path)
        self.artifacts.save_model(job.id, number, model, {"job": job.id, "round": str(number)})
