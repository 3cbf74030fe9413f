"""Experiment tracking: a job with ``[tracking] mlflow = URI`` is logged to MLflow as it runs.

One MLflow run per job (tagged ``fedaas.job_id``; a restarted coordinator
finds it again): the job's spec flattened into parameters when it starts,
every closed round's numeric values as metrics at ``step = round``, and the
final model (``model.safetensors``) as an artifact with the run's end
status. Values come from the job's :class:`~fedaas.protocol.JobStatus`
(under differential privacy, exactly what the operator may see).

MLflow calls run in one worker thread, in order, off the event loop; a
tracking server that is down costs a warning in the log, never the job.
``mlflow`` is imported there too (its import takes a second).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from fedaas.protocol import JobStatus, RoundRecord
from fedaas.server.observer import BaseListener

log = logging.getLogger("fedaas.coordinator")

END_STATUS = {"completed": "FINISHED", "failed": "FAILED", "cancelled": "KILLED"}
MAX_PARAM = 6000  # MLflow's limit on a parameter value


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """``{"train": {"lr": 0.1}}`` -> ``{"train.lr": "0.1"}``."""
    out: dict[str, str] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "."))
        else:
            out[name] = str(value)[:MAX_PARAM]
    return out


def artifact_location(uri: str) -> str | None:
    """For a local store, keep artifacts beside it (not in the coordinator's working dir)."""
    parsed = urlparse(uri)
    if parsed.scheme == "sqlite" and parsed.path not in ("", "/:memory:"):
        return (Path(parsed.path).parent / "mlartifacts").resolve().as_uri()
    return None


class MlflowTracking(BaseListener):
    def __init__(self, coordinator: Any) -> None:
        self.coordinator = coordinator
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fedaas-mlflow")
        self._runs: dict[str, tuple[Any, str] | None] = {}  # job -> (client, run id); None: off

    @staticmethod
    def _uri(job: JobStatus) -> str | None:
        return job.spec.tracking.mlflow if job.spec.tracking is not None else None

    def job_started(self, job: JobStatus) -> None:
        if self._uri(job):
            self._pool.submit(self._safely, self._run_of, job)

    def round_closed(self, job: JobStatus, record: RoundRecord) -> None:
        if self._uri(job):
            self._pool.submit(self._safely, self._log_round, job, record)

    def job_finished(self, job: JobStatus) -> None:
        if not self._uri(job):
            return
        model: Path | None = None
        try:  # copied now: the file may be pruned or replaced before the worker gets to it
            path, _ = self.coordinator.model_file(job.id, None)
            tmp = Path(tempfile.mkdtemp(prefix="fedaas-mlflow-"))
            model = tmp / "model.safetensors"
            shutil.copyfile(path, model)
        except Exception:  # no model (a job that failed before round 1): log the run's end only
            model = None
        self._pool.submit(self._safely, self._finish, job, model)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=False)

    # worker thread ---------------------------------------------------------------------
    def _safely(self, fn: Any, job: JobStatus, *args: Any) -> None:
        if self._runs.get(job.id, ()) is None:
            return  # tracking failed before for this job: quiet from now on
        try:
            fn(job, *args)
        except Exception as exc:
            self._runs[job.id] = None
            log.warning("job %s: MLflow tracking stopped: %s: %s", job.id, type(exc).__name__, exc)

    def _run_of(self, job: JobStatus) -> tuple[Any, str]:
        known = self._runs.get(job.id)
        if known is not None:
            return known
        uri = self._uri(job)
        assert uri is not None and job.spec.tracking is not None
        if uri.startswith("file:"):  # the operator asked for MLflow's file store explicitly
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        from mlflow.tracking import MlflowClient

        own = logging.getLogger("mlflow")  # MLflow installs its own handler: use the process's
        own.handlers.clear()
        own.propagate = True
        own.setLevel(logging.WARNING)
        client = MlflowClient(tracking_uri=uri)
        name = job.spec.tracking.experiment
        experiment = client.get_experiment_by_name(name)
        experiment_id = (
            experiment.experiment_id
            if experiment is not None
            else client.create_experiment(name, artifact_location=artifact_location(uri))
        )
        found = client.search_runs(
            [experiment_id], filter_string=f"tags.`fedaas.job_id` = '{job.id}'", max_results=1
        )
        if found:
            run_id = found[0].info.run_id
        else:
            run = client.create_run(
                experiment_id,
                run_name=f"{job.name} ({job.id})",
                tags={"fedaas.job_id": job.id, "fedaas.job_name": job.name},
            )
            run_id = run.info.run_id
            from mlflow.entities import Param

            spec = job.spec.to_dict()
            spec.pop("tracking", None)
            params = [Param(k, v) for k, v in flatten(spec).items()]
            for start in range(0, len(params), 100):
                client.log_batch(run_id, params=params[start : start + 100])
        self._runs[job.id] = (client, run_id)
        log.info("job %s: tracked in MLflow run %s", job.id, run_id)
        return client, run_id

    def _log_round(self, job: JobStatus, record: RoundRecord) -> None:
        from mlflow.entities import Metric

        client, run_id = self._run_of(job)
        stamp = int(time.time() * 1000)
        values = {
            key: float(value)
            for key, value in record.model_dump().items()
            if isinstance(value, int | float) and not isinstance(value, bool) and key != "round"
        }
        metrics = [Metric(key, value, stamp, record.round) for key, value in values.items()]
        if metrics:
            client.log_batch(run_id, metrics=metrics)

    def _finish(self, job: JobStatus, model: Path | None) -> None:
        client, run_id = self._run_of(job)
        if job.reason:
            client.set_tag(run_id, "fedaas.reason", job.reason[:5000])
        if model is not None:
            client.log_artifact(run_id, str(model))
            shutil.rmtree(model.parent, ignore_errors=True)
        client.set_terminated(run_id, END_STATUS.get(job.status, "FINISHED"))
        log.info("job %s: MLflow run %s ended (%s)", job.id, run_id, END_STATUS.get(job.status))
