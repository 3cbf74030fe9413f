"""Bringing a job back into memory: the state after its last committed round.

Run when a job starts, after a coordinator restart, and when a failed job is
resumed. An interrupted (or resumed) round's receipts are discarded so that
it reruns from scratch; the global model, the central OU noise state and the
server optimizer's state of the last committed round are restored from the
artifact store (pulled from the remote mirror on a fresh machine); the
privacy state and the members that declined come from the database.
"""

from __future__ import annotations

import logging
import time

from fedaas import tensors
from fedaas.algorithms.server_optimizers import ServerOptimizer
from fedaas.data.dataset import DataError, storage_outage
from fedaas.data.source import open_dataset
from fedaas.models import build_model
from fedaas.models.registry import ModelError
from fedaas.server.artifacts import Artifacts
from fedaas.server.db import Job, Store
from fedaas.server.errors import JobFailed
from fedaas.server.outages import HeldOutUnavailable
from fedaas.server.privacy import JobPrivacy
from fedaas.server.rounds import ActiveJob
from fedaas.spec import JobSpec

log = logging.getLogger("fedaas.coordinator")


def activate(
    row: Job, spec: JobSpec, store: Store, artifacts: Artifacts, allowed_code: tuple[str, ...]
) -> ActiveJob:
    """The job's in-memory state after its last committed round (a worker thread)."""
    if row.status == "running" or row.round > 0:  # interrupted or resumed: rerun the round
        store.discard_updates_after(row.id, row.round)
        log.info("resuming job %s after round %d", row.id, row.round)
    if not store.start_job(row.id, time.time()):
        raise JobFailed("the job ended before it started")
    path = artifacts.model_path(row.id, row.round)
    if not artifacts.restore(path):
        raise JobFailed(f"the model of round {row.round} is missing from the artifact store")
    ou_path = artifacts.ou_path(row.id, row.round)
    artifacts.restore(ou_path)
    manifest = tensors.SafetensorsFile(path).manifest
    ids = {m.name: m.id for m in store.members()}
    declined = store.declined(row.id)
    job = ActiveJob(
        id=row.id,
        spec=spec,
        manifest=manifest,
        max_upload=tensors.max_payload_bytes(manifest),
        completed_round=row.round,
        privacy=JobPrivacy(spec, store.privacy_state(row.id), ou_path),
        optimizer=_optimizer(row, spec, artifacts, manifest),
        declined={ids[name]: reason for name, reason in declined.items() if name in ids},
    )
    if spec.evaluation.holdout:
        try:
            job.holdout = open_dataset(spec.evaluation.holdout, spec.data)
        except DataError as exc:
            if (outage := storage_outage(exc)) is not None:  # its store is down: waited out
                raise HeldOutUnavailable(str(outage), outage.kind) from None
            raise JobFailed(f"held-out data: {exc}") from None
        try:
            job.module = build_model(
                spec.model, spec.data, task=spec.train.task, allowed_code=allowed_code
            )
        except ModelError as exc:
            raise JobFailed(f"model: {exc}") from None
    return job


def _optimizer(
    row: Job, spec: JobSpec, artifacts: Artifacts, manifest: tensors.Manifest
) -> ServerOptimizer:
    """The job's server optimizer, with its state after the last committed round."""
    cfg = spec.strategy
    fresh = ServerOptimizer(cfg.name, manifest, cfg.lr, cfg.beta1, cfg.beta2, cfg.tau)
    if not fresh.stateful or row.round == 0:
        return fresh
    path = artifacts.optimizer_path(row.id, row.round)
    if not artifacts.restore(path):
        raise JobFailed(f"the server optimizer state of round {row.round} is missing")
    arrays, meta = tensors.load_state(path)
    try:
        return ServerOptimizer.from_state(manifest, arrays, meta)
    except ValueError as exc:
        raise JobFailed(f"round {row.round}: {exc}") from None
