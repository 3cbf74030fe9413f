"""The learning rate of a round: in federated learning the rate decays with the round.

A member trains a few local epochs per round on a model that every round
resets to the global one, so a schedule inside one member's epoch would
restart each round. The schedule here is a pure function of the round number
(which every task carries) and the job's ``[train]`` section, so every member
of a round uses the same rate and a restarted member picks up the same value
(cf. the per-round decay used by Li et al., "On the Convergence of FedAvg on
Non-IID Data", ICLR 2020, arXiv:1907.02189).
"""

from __future__ import annotations

import math

from fedaas.spec_train import TrainSection


def round_lr(round: int, rounds: int, cfg: TrainSection) -> float:
    """The local learning rate of round ``round`` (1-based) of ``rounds``.

    - ``constant``: ``lr``;
    - ``step``: ``lr * lr_gamma ** ((round - 1) // lr_step_rounds)``;
    - ``cosine``: from ``lr`` at round 1 to ``lr_min`` at the last round,
      ``lr_min + (lr - lr_min) * (1 + cos(pi * (round - 1) / (rounds - 1))) / 2``.
    """
    if rounds < 1 or not 1 <= round <= rounds:
        raise ValueError(f"round must lie in 1..{rounds}, got {round}")
    if cfg.lr_schedule == "step":
        return cfg.lr * cfg.lr_gamma ** ((round - 1) // cfg.lr_step_rounds)
    if cfg.lr_schedule == "cosine":
        if rounds == 1:
            return cfg.lr
        progress = (round - 1) / (rounds - 1)
        return cfg.lr_min + (cfg.lr - cfg.lr_min) * (1.0 + math.cos(math.pi * progress)) / 2.0
    return cfg.lr
