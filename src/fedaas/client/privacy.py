"""The member's side of differential privacy: one object that holds its privacy state.

:class:`MemberPrivacy` keeps, in the member's state folder, everything that
must survive an agent restart:

- client-level DP (DP-FedAvg, McMahan et al. 2018, arXiv:1710.06963): every
  private job clips the model delta to the coordinator's current clip norm;
  with ``local`` or ``distributed`` placement the member also adds noise
  itself, with the standard deviation the coordinator computed for the
  round: independent Gaussian, or Ornstein-Uhlenbeck noise whose state is
  kept so that a restarted agent continues the same process instead of
  starting a fresh (cheaper-looking but differently accounted) one;
- record-level DP (DP-SGD, Abadi et al. 2016, arXiv:1607.00133): the ledger
  of rounds this member has trained in per job, from which it computes its
  own cumulative epsilon and refuses a round that would exceed the budget:
  the guarantee is enforced where the data is, whatever the coordinator asks.

It does not train: the agent runs :func:`fedaas.train.train_local_dp` itself
after :meth:`MemberPrivacy.start_record_round` has allowed the round.
"""

from __future__ import annotations

import json
import math
import zlib
from pathlib import Path

import numpy as np

from fedaas import tensors
from fedaas.algorithms.accounting import dp_sgd_schedule, record_epsilon_after
from fedaas.algorithms.privacy import (
    NoiseSource,
    OUNoise,
    clip_update,
    gaussian_noise,
    reproducible_noise_source,
    secure_noise_source,
)
from fedaas.protocol import ClientPrivacy, PrivacyInstructions, RecordPrivacy
from fedaas.spec import TrainSection


class BudgetSpent(Exception):
    """One more round of DP-SGD would take this member past the job's epsilon budget."""


class MemberPrivacy:
    """A member's privacy state, kept under ``state_dir``.

    ``member_key`` tells members apart when noise is reproducible (the same
    job seed must not give two members the same noise); the agent passes its
    data URL.
    """

    def __init__(self, state_dir: Path, member_key: str) -> None:
        self.state_dir = Path(state_dir)
        self.member_key = member_key

    # record level (DP-SGD) ---------------------------------------------------------
    def ledger_path(self, job_id: str) -> Path:
        """The file that counts the rounds of DP-SGD this member has trained in ``job_id``."""
        return self.state_dir / f"dpsgd-{job_id}.json"

    def rounds_spent(self, job_id: str) -> int:
        """Rounds of DP-SGD this member has (started to) train in ``job_id``."""
        path = self.ledger_path(job_id)
        return int(json.loads(path.read_text())["rounds"]) if path.exists() else 0

    def start_record_round(
        self, job_id: str, instructions: RecordPrivacy, num_examples: int, cfg: TrainSection
    ) -> dict[str, float]:
        """Allow and spend one round of DP-SGD on ``num_examples`` records; returns its metrics.

        Raises :class:`BudgetSpent` before any record is touched if the
        round would take this member's cumulative epsilon (all its rounds'
        steps composed, :func:`record_epsilon_after`) past the budget.
        Otherwise the round is counted in the ledger *before* training, so
        that a crash mid-round still counts it as spent. Returns the metrics
        to report with the update: ``record_epsilon`` (cumulative, if
        finite) and, with a budget, ``record_epsilon_next`` (after one more
        round: lets the coordinator stop the job before it would exceed).
        These replace the per-call ``record_epsilon`` of
        :func:`fedaas.train.train_local_dp`'s metrics.
        """
        z, delta = instructions.noise_multiplier, instructions.delta
        budget, accountant = instructions.epsilon_budget, instructions.accountant
        rounds = self.rounds_spent(job_id) + 1
        q, steps = dp_sgd_schedule(num_examples, cfg.batch_size, cfg.epochs)
        eps = record_epsilon_after(rounds, steps, q, z, delta, accountant=accountant)
        if budget is not None and eps > budget:
            raise BudgetSpent(
                f"record-level privacy budget reached: after {rounds - 1} round(s) of DP-SGD, "
                f"one more would bring this member's epsilon to {eps:.3f} > {budget:g} "
                f"(delta {delta:g})"
            )
        path = self.ledger_path(job_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".partial")
        tmp.write_text(json.dumps({"rounds": rounds}))
        tmp.replace(path)
        metrics: dict[str, float] = {}
        if math.isfinite(eps):
            metrics["record_epsilon"] = eps
        if budget is not None:
            metrics["record_epsilon_next"] = record_epsilon_after(
                rounds + 1, steps, q, z, delta, accountant=accountant
            )
        return metrics

    # client level -------------------------------------------------------------------
    def _source(self, instructions: ClientPrivacy, number: int) -> NoiseSource:
        if instructions.reproducible:
            stream = (zlib.crc32(self.member_key.encode()) << 20) + number
            return reproducible_noise_source(instructions.seed, stream=stream)
        return secure_noise_source()

    def privatize(
        self,
        delta: dict[str, np.ndarray],
        instructions: PrivacyInstructions,
        *,
        job_id: str,
        number: int,
    ) -> tuple[dict[str, np.ndarray], bool]:
        """Apply round ``number``'s instructions to the model delta; returns ``(update, unclipped)``.

        Without client-level DP the delta goes as it is (record-level DP
        already happened inside training). Otherwise it is clipped to the
        clip norm and, unless the coordinator adds the noise (``central``),
        noised with the member's share. ``unclipped``: whether the delta was
        within the clip norm (adaptive clipping counts these).
        """
        if not isinstance(instructions, ClientPrivacy):
            return delta, True
        clip_norm = instructions.clip_norm
        clipped, norm = clip_update(delta, clip_norm)
        std = instructions.noise_std
        if instructions.placement == "central" or std == 0:
            return clipped, norm <= clip_norm
        source = self._source(instructions, number)
        shapes = {name: values.shape for name, values in clipped.items()}
        if instructions.mechanism == "ou":
            noise = self._ou_noise(job_id, shapes, std, instructions.theta, source)
        else:
            noise = gaussian_noise(shapes, std, source)
        noised = {name: clipped[name] + noise[name].astype(np.float32) for name in clipped}
        return noised, norm <= clip_norm

    def _ou_noise(
        self,
        job_id: str,
        shapes: dict[str, tuple[int, ...]],
        std: float,
        theta: float | None,
        source: NoiseSource,
    ) -> dict[str, np.ndarray]:
        """The next step of this member's OU process for ``job_id``, saved before it is used."""
        path = self.state_dir / f"ou-{job_id}.safetensors"
        if path.exists():
            arrays, meta = tensors.load_state(path)
            process = OUNoise.from_state(arrays, meta)
        else:
            if theta is None:
                raise ValueError("OU noise instructions without theta")
            process = OUNoise(shapes, std, theta)
        noise = process.next(source)
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors.save_state(path, *process.state_dict())
        return noise
