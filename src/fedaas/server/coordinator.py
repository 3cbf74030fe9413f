"""The coordinator: the job queue and the operator's view, composed of small parts.

- :class:`~fedaas.server.presence.Presence`: which members are online;
- :class:`~fedaas.server.inbox.Inbox`: what members ask for and hand in
  during the open round (tasks, updates, evaluations, declines);
- :class:`~fedaas.server.runner.JobRunner`: the round loop of one job, which
  owns the job's :class:`~fedaas.server.privacy.JobPrivacy`;
- :class:`~fedaas.server.db.Store` and :class:`~fedaas.server.artifacts.Artifacts`:
  what survives a restart;
- :func:`~fedaas.server.job_status.job_status`: a job as the API shows it.

One job trains at a time (members train one model at a time); others wait
in the queue. A supervisor task starts the next job when one ends; a job
that breaks unexpectedly is marked failed and the supervisor goes on.
Errors are domain errors (:mod:`fedaas.server.errors`); the HTTP edge maps
them to status codes.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from pathlib import Path
from typing import Any

from fedaas.algorithms.secagg import fingerprint
from fedaas.models import build_model, get_state
from fedaas.models.registry import ModelError
from fedaas.protocol import TERMINAL, JobStatus, JobSummary, MemberInfo
from fedaas.server.artifacts import Artifacts
from fedaas.server.db import Job, Store, StoreFenced
from fedaas.server.errors import Conflict, InvalidSpec, NotFound
from fedaas.server.inbox import Inbox
from fedaas.server.job_status import job_status
from fedaas.server.outages import Dependencies
from fedaas.server.presence import Presence
from fedaas.server.runner import JobRunner
from fedaas.server.signals import Signal
from fedaas.server.tasks import cancel_and_wait
from fedaas.spec import SpecError, parse_spec

log = logging.getLogger("fedaas.coordinator")


class Coordinator:
    """``allowed_code``: packages whose model factories a job spec may name (``--allow-code``);
    a spec naming any other code is refused at submission, nothing of it imported.
    Models over :data:`~fedaas.models.registry.MAX_PARAMETERS` are refused too.
    """

    def __init__(
        self, store: Store, artifacts: Artifacts, allowed_code: tuple[str, ...] = ()
    ) -> None:
        self.store = store
        self.artifacts = artifacts
        self.allowed_code = tuple(allowed_code)
        self.presence = Presence()
        self.inbox = Inbox(store, self.presence)
        self.deps = Dependencies()  # the database and artifact store; outages waited out
        self._progress = Signal()
        self._active_names: dict[int, str] = {}
        """Names of members seen online and not revoked since (:meth:`online_names`)."""
        self._queue_changed = Signal()
        self._supervisor: asyncio.Task[None] | None = None
        self._runner: asyncio.Task[tuple[str, str | None]] | None = None
        self._running: str | None = None
        self._cancelling: str | None = None
        self._started = time.monotonic()
        self._loop: asyncio.AbstractEventLoop | None = None

    # lifecycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._supervisor = asyncio.create_task(self._supervise(), name="fedaas-supervisor")

    def closing(self) -> None:
        """The server is shutting down: release every long-poll now."""
        self.inbox.closing = True
        for signal in (self.inbox.tasks_changed, self._progress, self.presence.changed):
            signal.fire()

    @property
    def shutting_down(self) -> bool:
        return self.inbox.closing

    @property
    def progress(self) -> Signal:
        """Fires when a job's state changes (a round closed, a job ended or was cancelled)."""
        return self._progress

    @property
    def supervising(self) -> bool:
        """The job supervisor is running (readiness)."""
        return self._supervisor is not None and not self._supervisor.done()

    def request_close(self) -> None:
        """Thread- and signal-safe form of :meth:`closing`."""
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self.closing)

    async def stop(self) -> None:
        await cancel_and_wait(self._runner, self._supervisor)

    async def _supervise(self) -> None:
        """Run queued jobs one at a time. Never dies: what it can't handle fails the job.

        Database and artifact-store outages are waited out (see
        :mod:`fedaas.server.outages`); anything unexpected fails the job with a
        reason, written once the database accepts writes again.
        """
        failures = 0
        while True:
            try:
                await self._run_next()
                failures = 0
            except asyncio.CancelledError:
                raise
            except StoreFenced as exc:  # another coordinator runs the jobs now: not this one
                log.critical("the job supervisor stops: %s", exc)
                return
            except Exception:  # e.g. the database refused even the patient retries
                failures += 1
                log.exception("the job supervisor hit an error; retrying")
                await asyncio.sleep(min(30.0, 2.0**failures))

    async def _run_next(self) -> None:
        pending = await self.deps.acall(self._pending)
        if not pending:
            await self._queue_changed.wait(5.0)
            return
        row = pending[0]
        runner = JobRunner(
            row,
            self.store,
            self.artifacts,
            self.presence,
            self.inbox,
            self._progress,
            self._started,
            allowed_code=self.allowed_code,
            deps=self.deps,
        )
        self._running = row.id
        self._runner = asyncio.create_task(runner.run(), name=f"fedaas-job-{row.id}")
        try:
            status, reason = await self._runner
        except asyncio.CancelledError:
            current = asyncio.current_task()  # the supervisor itself, stopping: not the job
            if self._cancelling != row.id or (current is not None and current.cancelling()):
                raise
            return
        except StoreFenced:  # nothing may be written, the job's end least of all
            raise
        except Exception as exc:  # one broken job must not stop the coordinator
            log.exception("job %s failed unexpectedly", row.id)
            status, reason = "failed", f"internal error: {type(exc).__name__}: {exc}"
        finally:
            self._running = self._cancelling = None
            self.inbox.job = None
            self.inbox.tasks_changed.fire()
        await self.deps.acall(self._finish, row.id, status, reason)
        self._progress.fire()

    def _pending(self) -> list[Job]:
        return self.store.jobs(("running",)) or self.store.jobs(("queued",))

    def _finish(self, job_id: str, status: str, reason: str | None) -> None:
        """Record how a job ended (in a worker thread), unless it already ended (cancelled)."""
        job = self.store.job(job_id)
        if job is not None and job.status not in TERMINAL:
            self.store.update_job(job_id, status=status, reason=reason, finished_at=time.time())

    # jobs --------------------------------------------------------------------------------
    def submit(self, spec_data: dict[str, Any], source: str | None) -> JobStatus:
        """Validate, build the initial model and queue the job."""
        try:
            spec = parse_spec(spec_data)
        except SpecError as exc:
            raise InvalidSpec("; ".join(exc.problems)) from None
        try:
            module = build_model(
                spec.model,
                spec.data,
                seed=spec.job.seed,
                task=spec.train.task,
                allowed_code=self.allowed_code,  # at most MAX_PARAMETERS (the default)
            )
        except ModelError as exc:
            raise InvalidSpec(str(exc)) from None
        except (RuntimeError, MemoryError) as exc:
            raise InvalidSpec(f"the model cannot be built: {exc}") from None
        job_id = "job-" + secrets.token_hex(6)
        self.artifacts.save_model(job_id, 0, get_state(module), {"job": job_id, "round": "0"})
        self.store.add_job(
            Job(
                id=job_id,
                name=spec.job.name,
                spec=json.dumps(spec.to_dict()),
                source=source,
                status="queued",
                round=0,
                created_at=time.time(),
                extra="{}",
            )
        )
        self._queue_changed.fire()
        return self.describe(job_id)

    def _job(self, job_id: str) -> Job:
        job = self.store.job(job_id)
        if job is None:
            raise NotFound(f"no job {job_id!r}")
        return job

    async def cancel(self, job_id: str) -> JobStatus:
        job = self._job(job_id)
        if job.status in TERMINAL:
            raise Conflict(f"job {job_id} is already {job.status}")
        self.store.update_job(
            job_id, status="cancelled", finished_at=time.time(), reason="cancelled by the operator"
        )
        if self._running == job_id and self._runner is not None and not self._runner.done():
            self._cancelling = job_id
            self._runner.cancel()
        self._progress.fire()
        return self.describe(job_id)

    def resume(self, job_id: str) -> JobStatus:
        """Continue a failed job from its last committed round, as after a crash.

        The interrupted round reruns; rounds already committed (their models,
        metrics and privacy ledger) are kept, so every round counts once.
        """
        job = self._job(job_id)
        if job.status != "failed":
            raise Conflict(f"job {job_id} is {job.status}; only a failed job can be resumed")
        if not self.artifacts.restore(self.artifacts.model_path(job_id, job.round)):
            raise Conflict(f"job {job_id} has no model of round {job.round} to continue from")
        self.store.update_job(job_id, status="queued", reason=None, finished_at=None)
        log.info("job %s resumed after round %d", job_id, job.round)
        self._queue_changed.fire()
        return self.describe(job_id)

    def jobs(self) -> list[JobSummary]:
        return [
            JobSummary(id=i, name=n, status=status, round=r, created_at=at)
            for i, n, status, r, at in self.store.job_summaries()
        ]

    def describe(self, job_id: str, rounds_after: int = 0) -> JobStatus:
        """The job as the API shows it, with the rounds numbered above ``rounds_after`` (0: all):
        a follower asks for the new ones only, not for the job's whole history every round."""
        view = self.store.job_view(job_id, rounds_after)
        if view is None:
            raise NotFound(f"no job {job_id!r}")
        return job_status(*view, self.inbox.job, self.deps.outages())

    async def wait_progress(
        self, job_id: str, after_round: int, timeout: float, rounds_after: int = 0
    ) -> JobStatus:
        """Long-poll: the job (as :meth:`describe`) once past ``after_round``, ended, or timed out."""
        end = time.monotonic() + timeout
        while True:
            progress = await asyncio.to_thread(self.store.job_progress, job_id)  # off the loop
            if progress is None:
                raise NotFound(f"no job {job_id!r}")
            remaining = end - time.monotonic()
            passed = progress[0] > after_round or progress[1] in TERMINAL
            if passed or remaining <= 0 or self.shutting_down:
                return await asyncio.to_thread(self.describe, job_id, rounds_after)
            await self._progress.wait(remaining)

    # models ------------------------------------------------------------------------------
    def model_file(self, job_id: str, number: int | None, on_disk: bool = True) -> tuple[Path, int]:
        """The global model after round ``number`` (default: the latest committed one).

        Only committed rounds are served: a model written but not yet
        committed (its round may still crash and rerun with fresh noise) is
        never released, so each release has its ledger entry (issue 10).
        Only the latest committed model is kept. :class:`NotFound` if its file
        is gone, unless ``on_disk`` is false (a caller that reads it through a
        cache which says so itself: the task bundle every member gets each round).
        """
        active = self.inbox.job
        if active is not None and active.id == job_id:  # the hot path: no database query
            latest = active.completed_round
        else:
            latest = self._job(job_id).round
        number = latest if number is None else number
        if number > latest:
            raise NotFound(f"job {job_id} has no committed model for round {number} yet")
        path = self.artifacts.model_path(job_id, number)
        if on_disk and not path.exists():
            raise NotFound(f"job {job_id} has no model for round {number} (latest: {latest})")
        return path, number

    def count_download(self, job_id: str, number: int, nbytes: int) -> None:
        active = self.inbox.job
        if active is not None and active.id == job_id and active.round is not None:
            if number in (active.round.number - 1, active.round.number):
                active.round.bytes_down += nbytes

    # members -----------------------------------------------------------------------------
    def members(self) -> list[MemberInfo]:
        online = self.presence.online()
        return [
            MemberInfo(
                id=m.id,
                name=m.name,
                revoked=m.revoked_at is not None,
                online=m.id in online,
                identity=fingerprint(bytes.fromhex(m.signing_key)) if m.signing_key else None,
            )
            for m in self.store.members()
        ]

    def online_names(self) -> set[str]:
        """The members online now and not revoked, by name (the operator view's presence,
        every second: a member's name is read from the database once)."""
        online = self.presence.online()
        if missing := online - self._active_names.keys():
            self._active_names.update(self.store.active_member_names(missing))
        return {self._active_names[m] for m in online if m in self._active_names}

    def member_revoked(self, member_id: int) -> None:
        """A revoked member: never sampled again; an open round stops waiting for it."""
        self._active_names.pop(member_id, None)
        self.presence.forget(member_id)
        self.inbox.exclude(member_id, "revoked by the operator")
