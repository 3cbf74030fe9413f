"""The round inbox: what members ask for and hand in during the running job's open round.

Tasks (long-polled), updates, evaluation reports and declines arrive here.
The inbox checks each against the open round's stage (a closed round, an
unsampled member or a second upload is refused with a domain error; so is a
second upload of a member while its first is still being received, and,
under client-level DP, an update whose norm exceeds the round's clip norm),
keeps accepted updates in the round's spill (:mod:`fedaas.server.spill`:
aggregated when the round closes), and wakes the round loop
(:mod:`fedaas.server.runner`) when every expected answer is in. It holds no
state of its own beyond a bounded replay cache of receipts, so that a
retried upload (same ``Idempotency-Key``) is answered, never counted twice.
"""

from __future__ import annotations

import json
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from fedaas.protocol import Receipt, Task
from fedaas.server.db import Store
from fedaas.server.errors import Conflict, Forbidden, InvalidRequest, NotFound
from fedaas.server.member_reports import evaluation_problems
from fedaas.server.presence import Presence
from fedaas.server.rounds import ActiveJob, RoundState, Stage, check_update
from fedaas.server.signals import Signal

log = logging.getLogger("fedaas.coordinator")

DISCONNECT_CHECK_S = 2.0  # how often a waiting long-poll checks that its member is still there
MAX_RECEIPTS = 100_000


def model_etag(job_id: str, number: int) -> str:
    """The ETag of a job's global model after round ``number`` (it never changes)."""
    return f'"{job_id}-r{number}"'


class Inbox:
    def __init__(self, store: Store, presence: Presence) -> None:
        self.store = store
        self.presence = presence
        self.job: ActiveJob | None = None
        """The running job; set by the coordinator, ``None`` between jobs."""
        self.tasks_changed = Signal()
        self.closing = False
        self._receipts: OrderedDict[tuple[int, str], Receipt] = OrderedDict()

    # tasks -----------------------------------------------------------------------------
    async def next_task(
        self,
        member_id: int,
        timeout: float,
        gone: Callable[[], Awaitable[bool]] | None = None,
        name: str | None = None,
    ) -> Task | None:
        """Long-poll for the member's next task; ``None`` when none came up in ``timeout``.

        ``gone`` tells whether the member closed the connection; a member
        that hangs up while it waits is offline at once.
        """
        end = time.monotonic() + timeout
        checked = time.monotonic()
        with self.presence.waiting(member_id) as poll:
            while True:
                self.presence.seen(member_id)
                task = self.task_for(member_id, name)
                remaining = end - time.monotonic()
                if task is not None and task.secure is not None and task.secure.inbound:
                    self._count_inbound(task.secure.member)
                if task is not None or remaining <= 0 or self.closing:
                    return task
                await self.tasks_changed.wait(
                    remaining if gone is None else min(remaining, DISCONNECT_CHECK_S)
                )
                if gone is not None and time.monotonic() - checked >= DISCONNECT_CHECK_S:
                    checked = time.monotonic()
                    if await gone():
                        poll.hung_up = True
                        return None

    def _count_inbound(self, name: str) -> None:
        """Shares a secure task carries (stage 2's answer ahead) count as bytes down."""
        state = self.job.round if self.job is not None else None
        if state is not None and state.secure is not None:
            state.secure.bytes_down += state.secure.inbound_bytes(name)

    def task_for(self, member_id: int, name: str | None = None) -> Task | None:
        job = self.job
        if job is None or job.round is None or member_id in job.declined:
            return None
        state = job.round
        secure = state.secure.session_for(member_id) if state.secure is not None else None
        if (
            state.stage == Stage.TRAINING
            and member_id in state.sampled
            and member_id not in state.reported
            and (state.secure is None or secure is not None)  # SecAgg: only before its keys
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
        return Task(
            job_id=job.id,
            round=state.number,
            stage=kind,
            model_round=model_round,
            model_etag=model_etag(job.id, model_round),
            deadline_in=max(0.0, state.deadline - time.monotonic()),
            max_upload_bytes=job.max_upload,
            spec=job.spec,
            privacy=state.privacy,
            secure=secure if kind == "train" else None,
            member=name,
        )

    # answers ---------------------------------------------------------------------------
    def running(self, job_id: str) -> ActiveJob:
        """The running job ``job_id``; :class:`NotFound` or :class:`Conflict` (``round_closed``)."""
        job = self.job
        if job is None or job.id != job_id:
            stored = self.store.job(job_id)
            if stored is None:
                raise NotFound(f"no job {job_id!r}")
            raise Conflict(
                f"job {job_id} is {stored.status}; it takes no uploads now", "round_closed"
            )
        return job

    def _open_round(
        self, job_id: str, number: int, stage: Stage, member_id: int
    ) -> tuple[ActiveJob, RoundState]:
        job = self.running(job_id)
        state = job.round
        if state is None or state.number != number or state.stage != stage:
            raise Conflict(f"round {number} of job {job_id} is not open for this", "round_closed")
        members = state.sampled if stage == Stage.TRAINING else state.evaluators
        if member_id not in members:
            raise Forbidden(f"this member is not part of round {number}", "not_sampled")
        if member_id in (state.reported if stage == Stage.TRAINING else state.evaluated):
            raise Conflict(f"this member already reported for round {number}", "duplicate")
        return job, state

    def check_upload(
        self, job_id: str, number: int, member_id: int, key: str | None
    ) -> tuple[int, Receipt | None]:
        """Before the body is read: ``(size limit, None)``, or ``(0, receipt)`` for a retry."""
        replay = self._receipts.get((member_id, key)) if key else None
        if replay is not None and replay.job_id == job_id and replay.round == number:
            return 0, replay
        job, _ = self._open_round(job_id, number, Stage.TRAINING, member_id)
        return job.max_upload, None

    @contextmanager
    def receiving(self, job_id: str, number: int, member_id: int) -> Iterator[None]:
        """Hold the member's one upload slot of the round while its body is received.

        A second upload of the same member for the same round while the
        first is in flight is refused (409 ``upload_in_progress``), so one
        member cannot fill the spool with stalled uploads.
        """
        _, state = self._open_round(job_id, number, Stage.TRAINING, member_id)
        if member_id in state.uploading:
            raise Conflict(
                f"an upload of this member for round {number} is already in progress",
                "upload_in_progress",
            )
        state.uploading.add(member_id)
        try:
            yield
        finally:
            state.uploading.discard(member_id)

    def accept_update(
        self,
        job_id: str,
        number: int,
        member_id: int,
        body: bytes | Path,
        nbytes: int,
        key: str | None = None,
    ) -> Receipt:
        """Validate an update completely, then keep it (large, spooled ones in a worker thread).

        A rejected update changes nothing: it is checked in full (structure,
        finite values, under client-level DP its norm) before it joins the
        round's spill.
        """
        job, state = self._open_round(job_id, number, Stage.TRAINING, member_id)
        if state.secure is not None:  # a masked vector: added to the sum, never kept
            receipt = state.secure.accept_masked(member_id, body, nbytes, number)
            if key:
                self._receipts[(member_id, key)] = receipt
            return receipt
        update, meta, norm = check_update(job, state, body)
        with job.lock:  # the round may have closed while the body was checked
            job, state = self._open_round(job_id, number, Stage.TRAINING, member_id)
            state.keep(member_id, update, meta, norm, nbytes)  # held parsed if small
            if job.privacy.disclosure.keeps_receipts:  # no per-member record under DP
                state.receipts.append(
                    {
                        "job_id": job_id,
                        "round": number,
                        "member_id": member_id,
                        "num_examples": meta.num_examples,
                        "nbytes": nbytes,
                        "metrics": json.dumps(meta.metrics),
                        "received_at": time.time(),
                    }
                )
            receipt = Receipt(job_id=job_id, round=number, num_examples=meta.num_examples)
            if key:
                self._receipts[(member_id, key)] = receipt
                while len(self._receipts) > MAX_RECEIPTS:
                    self._receipts.popitem(last=False)
        return receipt

    def answered(self, job_id: str) -> None:
        """Called on the event loop after an answer was recorded: wake the loop if all are in."""
        job = self.job
        if job is not None and job.id == job_id and job.round is not None:
            job.round.check_done(set(job.declined))

    def accept_evaluation(
        self,
        job_id: str,
        number: int,
        member_id: int,
        examples: int,
        loss: float,
        accuracy: float | None,
        states: dict[str, list[float]] | None = None,
        metrics: dict[str, float] | None = None,
    ) -> None:
        job, state = self._open_round(job_id, number, Stage.EVALUATING, member_id)
        problems = evaluation_problems(job.spec, examples, states or {})
        if problems:  # states that cannot be summed into the federated metrics
            raise InvalidRequest("the evaluation report: " + "; ".join(problems))
        state.evaluated[member_id] = (examples, loss, accuracy)
        state.evaluation_states[member_id] = states or {}
        if metrics:
            state.evaluation_metrics.append((examples, metrics))
        self.answered(job_id)

    def decline(self, job_id: str, member_id: int, name: str, reason: str) -> None:
        """The member takes no further part in the job; remembered across restarts."""
        job = self.job
        if job is None or job.id != job_id:
            if self.store.job(job_id) is None:
                raise NotFound(f"no job {job_id!r}")
            raise Conflict(f"job {job_id} is not running")
        job.declined[member_id] = reason
        self.store.record_decline(job_id, name, reason)
        log.warning("member %s declined job %s: %s", name, job_id, reason)
        self.answered(job_id)
        self.presence.changed.fire()

    def exclude(self, member_id: int, reason: str) -> None:
        """A revoked member: never sampled again; an open round stops waiting for it."""
        job = self.job
        if job is not None:
            job.declined.setdefault(member_id, reason)
            if job.round is not None:
                job.round.check_done(set(job.declined))
        self.tasks_changed.fire()
