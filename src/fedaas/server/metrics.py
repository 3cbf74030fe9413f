"""Prometheus metrics of one coordinator, served at ``/metrics`` (prometheus-client).

One :class:`CollectorRegistry` per app (not the process-global one), so two
coordinators in one process (tests) never share counters. What is counted:

- rounds completed, their duration (histogram), bytes up and down, and the
  latest epsilon of each job: all read from the closed rounds' records
  (:class:`~fedaas.protocol.RoundRecord`, as
  :class:`~fedaas.protocol.JobStatus` publishes them), fed in by the
  :class:`~fedaas.server.observer.Observer`; under differential privacy these
  are exactly what the job's status shows the operator, nothing more;
- uploads accepted and rejected, by reason (the error code of the refusal);
- members online and enrolled, jobs by status (computed at scrape time);
- database statement latency (SQLAlchemy cursor events) and artifact-store
  latency (save, publish, restore), as histograms.

Metric names follow Prometheus conventions (``_total`` counters, base units:
seconds and bytes).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import event
from sqlalchemy.engine import Engine

from fedaas.protocol import JobStatus, RoundRecord
from fedaas.server.observer import BaseListener

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
ROUND_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
IO_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
F = TypeVar("F", bound=Callable[..., Any])


class _Live(Collector):
    """Gauges computed when Prometheus scrapes: members online/enrolled, jobs by status."""

    def __init__(self, source: Callable[[], tuple[int, int, dict[str, int]]]) -> None:
        self.source = source

    def collect(self) -> Iterable[GaugeMetricFamily]:
        online, enrolled, jobs = self.source()
        yield GaugeMetricFamily(
            "fedaas_members_online", "Enrolled, unrevoked members online now.", value=online
        )
        yield GaugeMetricFamily(
            "fedaas_members_enrolled", "Enrolled members that are not revoked.", value=enrolled
        )
        by_status = GaugeMetricFamily("fedaas_jobs", "Jobs by status.", labels=["status"])
        for status, count in sorted(jobs.items()):
            by_status.add_metric([status], count)
        yield by_status


class _JobGauges(Collector):
    """The latest round, accuracy, loss and epsilon of each job seen (label ``job``)."""

    def __init__(self) -> None:
        self.latest: dict[str, dict[str, float]] = {}

    def collect(self) -> Iterable[GaugeMetricFamily]:
        names = {
            "round": "The job's last completed round.",
            "accuracy": "Accuracy of the job's model after its last round.",
            "loss": "Loss of the job's model after its last round.",
            "epsilon": "Privacy spent by the job so far (epsilon, as its status shows it).",
            "record_epsilon": "Largest record-level epsilon a member reported (as shown).",
        }
        for key, doc in names.items():
            family = GaugeMetricFamily(f"fedaas_job_{key}", doc, labels=["job"])
            for job, values in sorted(self.latest.items()):
                if values.get(key) is not None:
                    family.add_metric([job], values[key])
            yield family


class Metrics(BaseListener):
    """The coordinator's Prometheus registry and the hooks that feed it."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.rounds = Counter("fedaas_rounds_completed", "Rounds completed.", ["job"], registry=r)
        self.round_seconds = Histogram(
            "fedaas_round_duration_seconds",
            "Wall time of a round, from opening to commit.",
            buckets=ROUND_BUCKETS,
            registry=r,
        )
        self.uploads = Counter(
            "fedaas_uploads",
            "Updates uploaded by members, by outcome and (when rejected) reason.",
            ["outcome", "reason"],
            registry=r,
        )
        self.bytes_in = Counter(
            "fedaas_bytes_received", "Update bytes received from members.", ["job"], registry=r
        )
        self.bytes_out = Counter(
            "fedaas_bytes_sent", "Model bytes sent to members.", ["job"], registry=r
        )
        self.db_seconds = Histogram(
            "fedaas_database_seconds",
            "Latency of one database statement.",
            buckets=IO_BUCKETS,
            registry=r,
        )
        self.artifact_seconds = Histogram(
            "fedaas_artifact_store_seconds",
            "Latency of one artifact-store operation (including the remote mirror).",
            ["operation"],
            buckets=IO_BUCKETS,
            registry=r,
        )
        self.jobs = _JobGauges()
        r.register(self.jobs)

    def live(self, source: Callable[[], tuple[int, int, dict[str, int]]]) -> None:
        """Register the scrape-time gauges: ``source() -> (online, enrolled, jobs by status)``."""
        self.registry.register(_Live(source))

    def render(self) -> bytes:
        return generate_latest(self.registry)

    # feeds -----------------------------------------------------------------------------
    def round_closed(self, job: JobStatus, record: RoundRecord) -> None:
        """A closed round as the job's status shows it."""
        self.rounds.labels(job.id).inc()
        self.round_seconds.observe(record.seconds)
        # under client-level DP the status withholds byte counts: so does this
        if record.bytes_up is not None:
            self.bytes_in.labels(job.id).inc(record.bytes_up)
        if record.bytes_down is not None:
            self.bytes_out.labels(job.id).inc(record.bytes_down)
        extra = record.model_extra or {}
        values: dict[str, float] = {"round": float(record.round)}
        for key in ("accuracy", "loss"):
            if getattr(record, key) is not None:
                values[key] = float(getattr(record, key))
        for key in ("epsilon", "record_epsilon"):
            if isinstance(extra.get(key), int | float):
                values[key] = float(extra[key])
        self.jobs.latest.setdefault(job.id, {}).update(values)

    def upload(self, accepted: bool, reason: str = "") -> None:
        self.uploads.labels("accepted" if accepted else "rejected", reason).inc()

    def watch_database(self, engine: Engine) -> None:
        """Time every statement on ``engine`` (SQLAlchemy cursor events)."""

        def before(conn: Any, *_: Any) -> None:
            conn.info.setdefault("fedaas_started", []).append(time.perf_counter())

        def after(conn: Any, *_: Any) -> None:
            started = conn.info.get("fedaas_started")
            if started:
                self.db_seconds.observe(time.perf_counter() - started.pop())

        event.listen(engine, "before_cursor_execute", before)
        event.listen(engine, "after_cursor_execute", after)

    def timed(self, operation: str, fn: F) -> F:
        """``fn``, timed into the artifact-store histogram under ``operation``."""
        histogram = self.artifact_seconds.labels(operation)

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                histogram.observe(time.perf_counter() - started)

        return wrapper  # type: ignore[return-value]

    def watch_artifacts(self, artifacts: Any) -> None:
        """Time the artifact store's writes, publishes and restores (wraps the instance's methods)."""
        for name in ("save_model", "publish", "restore"):
            setattr(artifacts, name, self.timed(name, getattr(artifacts, name)))
