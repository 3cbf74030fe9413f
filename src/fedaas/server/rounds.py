"""The round state machine's stages and the in-memory state of the running job.

A round moves through these stages, each of which runs::

    WAITING -> TRAINING -> AGGREGATING -> [EVALUATING] -> CLOSED

WAITING: the round is open but not yet sampled; it waits until enough
eligible members are online. TRAINING: sampled members download the global
model and upload updates, folded into the running sum as they arrive.
AGGREGATING: the mean update goes through the job's privacy and server
optimizer; the new model is persisted and evaluated on the coordinator's
held-out data. EVALUATING (only with federated evaluation): members report
loss and accuracy of the new model on their validation split. CLOSED: the
round and its ledger entry are committed.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedaas import tensors
from fedaas.algorithms.server_optimizers import ServerOptimizer
from fedaas.data.dataset import ArrayDataset
from fedaas.models import set_state
from fedaas.protocol import NoPrivacy, PrivacyInstructions, UpdateMetadata
from fedaas.server.aggregation import add_base, aggregate, bounding_metrics, dp_norm_limit
from fedaas.server.errors import InvalidRequest
from fedaas.server.privacy import JobPrivacy
from fedaas.server.secagg import SecureRound
from fedaas.server.spill import RoundSpill
from fedaas.server.uploads import validate_update
from fedaas.spec import JobSpec
from fedaas.spec_train import job_metrics
from fedaas.train import evaluate


class Stage(StrEnum):
    WAITING = "waiting"
    TRAINING = "training"
    AGGREGATING = "aggregating"
    EVALUATING = "evaluating"
    CLOSED = "closed"


@dataclass
class RoundState:
    """One open round: who was sampled, who answered, and their spilled updates."""

    number: int
    deadline: float
    stage: Stage = Stage.WAITING
    sampled: dict[int, str] = field(default_factory=dict)
    spill: RoundSpill | None = None
    secure: SecureRound | None = None
    """A secure round's stages and recovered sum (server/secagg.py); ``None``: plain."""
    uploading: set[int] = field(default_factory=set)
    """Members whose upload for this round is being received (one at a time each)."""
    privacy: PrivacyInstructions = field(default_factory=NoPrivacy)
    opened_at: float = field(default_factory=time.monotonic)
    reported: dict[int, int] = field(default_factory=dict)
    train_metrics: list[tuple[int, dict[str, float]]] = field(default_factory=list)
    member_metrics: dict[int, dict[str, float]] = field(default_factory=dict)
    evaluators: dict[int, str] = field(default_factory=dict)
    evaluated: dict[int, tuple[int, float, float | None]] = field(default_factory=dict)
    evaluation_states: dict[int, dict[str, list[float]]] = field(default_factory=dict)
    """Member id -> the metric states of its evaluation (summed: server/member_reports.py)."""
    evaluation_metrics: list[tuple[int, dict[str, float]]] = field(default_factory=list)
    """What members' ``eval_step`` returned, with their example counts."""
    receipts: list[dict[str, Any]] = field(default_factory=list)
    unclipped: int = 0
    bytes_up: int = 0
    bytes_down: int = 0
    done: asyncio.Event = field(default_factory=asyncio.Event)

    def expected(self, declined: set[int]) -> set[int]:
        """Members whose answer the current stage still waits for."""
        if self.stage == Stage.TRAINING:
            return set(self.sampled) - set(self.reported) - declined
        if self.stage == Stage.EVALUATING:
            return set(self.evaluators) - set(self.evaluated) - declined
        return set()

    def check_done(self, declined: set[int]) -> None:
        if self.stage in (Stage.TRAINING, Stage.EVALUATING) and not self.expected(declined):
            self.done.set()

    def keep(
        self,
        member: int,
        body: bytes | Path | tensors.SafetensorsFile,
        meta: UpdateMetadata,
        norm: float,
        nbytes: int,
    ) -> None:
        """Count a checked update (:func:`check_update`): spilled for aggregation, its
        example count and metrics kept for the round's record."""
        assert self.spill is not None
        self.spill.keep(member, body, meta.num_examples or 1, norm)
        self.member_metrics[member] = meta.metrics
        self.unclipped += bool(meta.unclipped)
        self.reported[member] = meta.num_examples or 0
        self.train_metrics.append((meta.num_examples or 1, meta.metrics))
        self.bytes_up += nbytes


@dataclass
class ActiveJob:
    """The job being trained, as the round loop and the inbox share it."""

    id: str
    spec: JobSpec
    manifest: tensors.Manifest
    max_upload: int
    completed_round: int
    privacy: JobPrivacy
    optimizer: ServerOptimizer
    declined: dict[int, str] = field(default_factory=dict)
    missed: dict[int, int] = field(default_factory=dict)
    """Member id -> training deadlines it missed in a row (cleared when it reports)."""
    benched_until: dict[int, int] = field(default_factory=dict)
    """Member id -> the first round it may be sampled in again after missing a deadline."""
    round: RoundState | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)
    """Held while an upload is folded and while the round leaves TRAINING."""
    holdout: ArrayDataset | None = None
    module: Any = None
    secure_ahead: Any = None
    """Keys and shares members sent for the next secure round (``server.secagg_ahead.AheadKeys``)."""


def check_update(
    job: ActiveJob, state: RoundState, body: bytes | Path
) -> tuple[tensors.SafetensorsFile, UpdateMetadata, float]:
    """An update checked in full before it may join the round: the parsed update (what
    :meth:`RoundState.keep` may hold), its metadata and its L2 norm.

    Structure and finite values (:func:`validate_update`), under DP its norm
    against what the round's privacy allows, and only the metadata the
    accountant covers. Raises :class:`InvalidRequest` and changes nothing. The
    coordinator's inbox and ``fedaas simulate`` both check uploads here.
    """
    update, meta, norm = validate_update(body, job.manifest)
    limit = dp_norm_limit(state.privacy, sum(map(math.prod, job.manifest.values())))
    if limit is not None and norm > limit:
        raise InvalidRequest(
            f"update norm {norm:.6g} exceeds what this round's privacy allows "
            f"({limit:.6g}: the clip norm plus the member's own noise)",
            "invalid_update",
        )
    job.privacy.disclosure.check_update(meta)  # under DP: only what the accountant covers
    return update, meta, norm


def aggregate_round(
    job: ActiveJob, state: RoundState, base: tensors.SafetensorsFile
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Bounded, combined updates -> server optimizer -> the new model and its metrics.

    ``base`` is the previous round's model. The coordinator's round loop and
    ``fedaas simulate`` (:mod:`fedaas.sim.simulate`) both close a round here.
    """
    assert state.spill is not None
    noise = job.privacy.central_noise(job.manifest, state.number)
    denominator = job.privacy.denominator(len(state.reported))
    if state.secure is not None:  # SecAgg: only the recovered sum exists (server/secagg.py)
        model, bounded = state.secure.aggregate(noise, denominator)
    else:
        model, bounded = aggregate(
            state.spill, job.spec, job.privacy, state.number, noise, denominator
        )
    job.optimizer.step(model)  # the mean delta becomes the server optimizer's step
    add_base(model, base, state.spill, state.sampled)  # JobFailed on NaN or Inf
    metrics: dict[str, Any] = bounding_metrics(bounded)
    if job.holdout is not None:  # on the CPU: the coordinator never needs a GPU
        set_state(job.module, model)
        spec = job.spec
        result = evaluate(
            job.module,
            job.holdout,
            cfg=spec.train,
            classes=spec.data.classes,
            metrics=job_metrics(spec),
            device=torch.device("cpu"),
        )
        metrics.update(result.metrics, loss=result.loss)
        if spec.train.task != "regression":
            metrics["accuracy"] = result.accuracy
    return model, metrics
