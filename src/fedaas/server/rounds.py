"""The round state machine's states and the in-memory state of an open round.

A round moves through explicit stages::

    WAITING -> TRAINING -> AGGREGATING -> [EVALUATING] -> CLOSED

WAITING: enough members must be online to sample the round. TRAINING:
sampled members download the global model and upload updates, which are
folded into the running sum as they arrive. AGGREGATING: the mean update is
applied, the model persisted and evaluated on the coordinator's held-out
data. EVALUATING (only with federated evaluation): members report loss and
accuracy of the new model on their local validation split. Secure
aggregation will add a KEY_EXCHANGE stage before TRAINING and an UNMASKING
stage after it.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from fedaas.algorithms.aggregate import WeightedSum


class Stage(StrEnum):
    WAITING = "waiting"
    TRAINING = "training"
    AGGREGATING = "aggregating"
    EVALUATING = "evaluating"
    CLOSED = "closed"


@dataclass
class RoundState:
    number: int
    sampled: dict[int, str]
    deadline: float
    acc: WeightedSum | None
    stage: Stage = Stage.TRAINING
    opened_at: float = field(default_factory=time.monotonic)
    reported: dict[int, int] = field(default_factory=dict)
    train_metrics: list[tuple[int, dict[str, float]]] = field(default_factory=list)
    evaluators: dict[int, str] = field(default_factory=dict)
    evaluated: dict[int, tuple[int, float, float]] = field(default_factory=dict)
    receipts: list[Any] = field(default_factory=list)
    privacy: dict[str, Any] = field(default_factory=dict)
    event: Any = None
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
        if not self.expected(declined):
            self.done.set()


def weighted_means(items: list[tuple[int, dict[str, float]]]) -> dict[str, float]:
    """Example-weighted mean of each metric reported by members."""
    totals: dict[str, float] = {}
    weights: dict[str, float] = {}
    for n, metrics in items:
        for key, value in metrics.items():
            totals[key] = totals.get(key, 0.0) + n * value
            weights[key] = weights.get(key, 0.0) + n
    return {key: totals[key] / weights[key] for key in totals if weights[key] > 0}
