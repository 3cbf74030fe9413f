"""What members ask and answer during a round: tasks, updates, evaluations, declines.

The coordinator's member-facing half. Request handlers call these methods;
they read the running job's current stage, fold accepted updates into the
round's running sum, and wake the round loop (:mod:`fedaas.server.coordinator`)
when every expected answer is in. Also the in-memory state they share with
the loop: :class:`ActiveJob` and the broadcast :class:`Signal`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from fedaas import tensors
from fedaas.algorithms.server_optimizers import ServerOptimizer
from fedaas.data.dataset import ArrayDataset
from fedaas.server.db import Job, Store
from fedaas.server.errors import ApiError
from fedaas.server.privacy import JobPrivacy
from fedaas.server.rounds import RoundState, Stage
from fedaas.server.uploads import fold_update, validate_update
from fedaas.spec import JobSpec

log = logging.getLogger("fedaas.coordinator")

ONLINE_WINDOW_S = 60.0
DISCONNECT_CHECK_S = 2.0  # how often a waiting long-poll checks that its member is still there
MAX_RECEIPTS = 100_000


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
    optimizer: ServerOptimizer | None = None
    record_epsilon_next: float = 0.0
    """Record-level DP: the largest epsilon a member reported it would reach after one more round."""

    @cached_property
    def spec_dict(self) -> dict[str, Any]:
        """The spec as sent in every task (built once per job, not per poll)."""
        return self.spec.to_dict()


class Signal:
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


class MemberDesk:
    """The member-facing methods of the coordinator (a mixin of ``Coordinator``)."""

    store: Store
    active: ActiveJob | None
    _last_seen: dict[int, float]
    _polling: dict[int, int]
    _tasks_changed: Signal
    _members_changed: Signal
    _receipts: OrderedDict[tuple[int, str | None], dict[str, Any]]

    def _job_or_404(self, job_id: str) -> Job:
        raise NotImplementedError

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

    async def next_task(
        self,
        member_id: int,
        timeout: float,
        gone: Callable[[], Awaitable[bool]] | None = None,
    ) -> dict[str, Any] | None:
        """Long-poll for the member's next task; ``None`` when there is none yet.

        ``gone`` tells whether the member closed the connection. A member
        that hangs up while it waits (killed, or its network dropped) is
        offline at once, so the next round does not sample it and wait for
        it until the deadline.
        """
        end = time.monotonic() + timeout
        first = member_id not in self._last_seen
        self._polling[member_id] = self._polling.get(member_id, 0) + 1
        lost, checked = False, time.monotonic()
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
                await self._tasks_changed.wait(
                    remaining if gone is None else min(remaining, DISCONNECT_CHECK_S)
                )
                if gone is not None and time.monotonic() - checked >= DISCONNECT_CHECK_S:
                    checked = time.monotonic()
                    if await gone():
                        lost = True
                        return None
        finally:
            self._polling[member_id] -= 1
            if lost and self._polling[member_id] == 0:
                self._last_seen.pop(member_id, None)
                log.info("member %d hung up while waiting for a task: offline", member_id)
            else:
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
            "spec": job.spec_dict,
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


def etag(job_id: str, number: int) -> str:
    return f'"{job_id}-r{number}"'
