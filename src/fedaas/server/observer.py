"""The operator's view of the coordinator, as a stream of events.

One background task watches the job queue and the members and turns what
changed into events: a job started, a round closed, a job finished, a
member came online or went away. Listeners (the log lines below, the
Prometheus :class:`~fedaas.server.metrics.Metrics`, MLflow tracking, the
dashboard's live pages) subscribe to them.

Everything here is read through the coordinator's operator view
(:meth:`~fedaas.server.coordinator.Coordinator.describe`, which answers a
:class:`~fedaas.protocol.JobStatus`), never from the database: under
differential privacy the privacy rules decide what a job's status shows, and
every operator-facing surface shows exactly that. The round loop is not
touched: a listener that is slow or fails costs the training nothing.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fedaas.protocol import TERMINAL, JobStatus, RoundRecord
from fedaas.server.outages import is_transient
from fedaas.server.signals import Signal
from fedaas.server.tasks import cancel_and_wait

log = logging.getLogger("fedaas.coordinator")

TICK_S = 1.0  # how often presence is rechecked when nothing fires
STOP_WAIT_S = 5.0  # how long stopping waits for a scan in progress


class BaseListener:
    """A listener that ignores everything; subclasses override what they need.

    The ``job`` passed holds in ``rounds`` only what closed since the observer last
    looked (it reads no more: a long job's history is not reread every tick).
    """

    def close(self) -> None:
        """The coordinator is stopping."""

    def job_started(self, job: JobStatus) -> None:
        pass

    def round_closed(self, job: JobStatus, record: RoundRecord) -> None:
        pass

    def job_finished(self, job: JobStatus) -> None:
        pass

    def member_changed(self, name: str, online: bool) -> None:
        pass


def round_summary(record: RoundRecord) -> str:
    """``accuracy=0.9123 loss=0.2871 epsilon=1.204``: the round's headline metrics."""
    parts = []
    extra = record.model_extra or {}
    for key in ("accuracy", "loss"):
        value = getattr(record, key)
        if value is not None:
            parts.append(f"{key}={value:.4f}")
    for key in ("federated_accuracy", "epsilon", "record_epsilon"):
        value = extra.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            parts.append(f"{key}={value:.4g}")
    return " ".join(parts)


class LogLines(BaseListener):
    """One INFO line per job start, round, finish and member connect/disconnect.

    Lines name members and jobs, never a token, a credential or a member's
    data location (the coordinator never learns the latter).
    """

    def job_started(self, job: JobStatus) -> None:
        log.info(
            "job %s (%s) started: %d rounds, strategy %s",
            job.id,
            job.name,
            job.rounds_total,
            job.spec.strategy.name,
            extra={"job": job.id, "event": "job_started"},
        )

    def round_closed(self, job: JobStatus, record: RoundRecord) -> None:
        log.info(
            "job %s round %d/%d: %s member(s), %.2f s, %s",
            job.id,
            record.round,
            job.rounds_total,
            "?" if record.clients is None else record.clients,  # withheld under DP
            record.seconds,
            round_summary(record) or "no metrics",
            extra={
                "job": job.id,
                "event": "round_closed",
                "round": record.round,
                "members": record.clients,
                "seconds": round(record.seconds, 3),
                "metrics": {
                    k: v
                    for k, v in record.model_dump().items()
                    if isinstance(v, int | float) and not isinstance(v, bool)
                },
            },
        )

    def job_finished(self, job: JobStatus) -> None:
        level = logging.INFO if job.status == "completed" else logging.WARNING
        log.log(
            level,
            "job %s %s after round %d/%d%s",
            job.id,
            job.status,
            job.round,
            job.rounds_total,
            f": {job.reason}" if job.reason else "",
            extra={"job": job.id, "event": "job_finished", "status": job.status},
        )

    def member_changed(self, name: str, online: bool) -> None:
        log.info(
            "member %s %s",
            name,
            "connected" if online else "disconnected",
            extra={"member": name, "event": "member_online" if online else "member_offline"},
        )


@dataclass
class _Seen:
    status: str
    round: int
    """The last round announced: its record was final."""


def _final_round(job: JobStatus) -> int:
    """The last round whose record is final. A committed round's federated evaluation is
    added to its record afterwards: while it runs, the round is not announced yet, or the
    log line, the metrics and MLflow would miss the evaluation whenever members take longer
    than the observer's tick to evaluate."""
    current = job.current
    if current is not None and current.stage == "evaluating" and current.round == job.round:
        return job.round - 1
    return job.round


class Observer:
    """Watches ``coordinator`` and calls every listener on each change (in a worker thread,
    one scan at a time: what it reads comes from the database)."""

    def __init__(self, coordinator: Any, listeners: list[BaseListener] | None = None) -> None:
        self.coordinator = coordinator
        self.listeners: list[BaseListener] = list(listeners or [])
        self.changed = Signal()
        """Fires after every batch of events (the dashboard's live pages wait on it)."""
        self._jobs: dict[str, _Seen] = {}
        self._online: set[str] = set()
        self._task: asyncio.Task[None] | None = None
        self._scanning = threading.Lock()

    def start(self) -> None:
        self._baseline()
        self._task = asyncio.create_task(self._watch(), name="fedaas-observer")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        # a scan still running in its thread ends before the listeners close (a bounded wait:
        # one held up by a hung database is left behind)
        if await asyncio.to_thread(self._scanning.acquire, timeout=STOP_WAIT_S):
            self._scanning.release()
        for listener in self.listeners:
            try:
                listener.close()
            except Exception:
                log.exception("operator view: closing %s failed", type(listener).__name__)

    def _baseline(self) -> None:
        """What exists at start-up is not news (a restart must not recount old rounds)."""
        for job in self.coordinator.jobs():
            self._jobs[job.id] = _Seen(job.status, job.round)
        self._online = self.coordinator.online_names()

    async def _watch(self) -> None:
        database = self.coordinator.deps.database
        loop = asyncio.get_running_loop()
        while True:
            await self.coordinator.progress.wait(TICK_S)
            if database.outage is not None:  # probe off the event loop; scan once it is back
                try:
                    await loop.run_in_executor(None, self.coordinator.store.ping)
                except Exception:
                    continue
                database.recovered()
            try:  # in a thread: a hung database must not hold up the event loop
                if await asyncio.to_thread(self.scan):
                    self.changed.fire()
            except Exception as exc:  # the view must never take the coordinator down
                if is_transient(exc):
                    database.failed(exc)  # one log line per incident, not one per tick
                else:
                    log.exception("operator view: scan failed")

    def scan(self) -> bool:
        """Compare with what was seen last; emit events; ``True`` if anything changed."""
        with self._scanning:
            return self._scan()

    def _scan(self) -> bool:
        online = self.coordinator.online_names()
        for name in sorted(online - self._online):
            self._emit(lambda li, n=name: li.member_changed(n, True))
        for name in sorted(self._online - online):
            self._emit(lambda li, n=name: li.member_changed(n, False))
        changed = online != self._online
        self._online = online
        for summary in self.coordinator.jobs():
            seen = self._jobs.get(summary.id)
            if seen is not None and (seen.status, seen.round) == (summary.status, summary.round):
                continue
            before = seen or _Seen("queued", 0)
            job: JobStatus = self.coordinator.describe(summary.id, rounds_after=before.round)
            final = _final_round(job)
            self._jobs[summary.id] = _Seen(job.status, final)
            changed = True
            if before.status == "queued" and job.status != "queued" and job.started_at:
                self._emit(lambda li, j=job: li.job_started(j))
            for record in job.rounds:
                if before.round < record.round <= final:
                    self._emit(lambda li, j=job, r=record: li.round_closed(j, r))
            if job.status in TERMINAL and before.status not in TERMINAL:
                self._emit(lambda li, j=job: li.job_finished(j))
        return changed

    def _emit(self, call: Callable[[BaseListener], None]) -> None:
        for listener in self.listeners:
            try:
                call(listener)
            except Exception:
                log.exception("operator view: %s failed", type(listener).__name__)


def job_status_counts(jobs: list[Any]) -> dict[str, int]:
    counts = dict.fromkeys(("queued", "running", "completed", "failed", "cancelled"), 0)
    for job in jobs:
        counts[job.status] = counts.get(job.status, 0) + 1
    return counts
