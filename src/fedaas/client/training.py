"""One round of local training as the round's privacy instructions say, and its update.

Plain local training (:func:`fedaas.train.train_local`), or DP-SGD within the
member's own record-level budget (:func:`fedaas.train.dp_sgd.train_local_dp`,
the round spent in the ledger first); then the update ``local - global``,
clipped and noised by :class:`~fedaas.client.privacy.MemberPrivacy`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from torch import nn

from fedaas.client.privacy import MemberPrivacy
from fedaas.data.dataset import Dataset
from fedaas.models import get_state
from fedaas.protocol import PrivacyInstructions, RecordPrivacy
from fedaas.spec import TrainSection
from fedaas.train import train_local
from fedaas.train.dp_sgd import train_local_dp


def train_round(
    module: nn.Module,
    data: Dataset,
    cfg: TrainSection,
    start: dict[str, np.ndarray],
    instructions: PrivacyInstructions,
    privacy: MemberPrivacy,
    *,
    job_id: str,
    number: int,
    seed: Sequence[int],
    max_epsilon: float | None,
) -> tuple[dict[str, np.ndarray], bool, dict[str, float]]:
    """Train ``module`` (starting from ``start``); ``(update, unclipped, metrics)``."""
    if isinstance(instructions, RecordPrivacy):
        spent = privacy.start_record_round(  # BudgetSpent before any record is touched
            job_id, instructions, data.num_examples, cfg, max_epsilon=max_epsilon
        )
        metrics = train_local_dp(
            module,
            data,
            cfg,
            seed=list(seed),
            noise_multiplier=instructions.noise_multiplier,
            max_grad_norm=instructions.clip_norm,
            delta=instructions.delta,
            secure=not instructions.reproducible,
            accountant=instructions.accountant,
        )
        metrics.pop("record_epsilon", None)
        metrics.update(spent)
    else:
        metrics = train_local(module, data, cfg, seed=list(seed))
    trained = get_state(module)
    delta = {name: trained[name] - start[name] for name in start}
    update, unclipped = privacy.privatize(delta, instructions, job_id=job_id, number=number)
    return update, unclipped, metrics
