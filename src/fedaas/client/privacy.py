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
  of rounds of DP-SGD this member has run on its dataset, across every job,
  from which it computes its own cumulative epsilon and refuses a round that
  would exceed the budget (the job's, or the member policy's ``max_epsilon``,
  whichever is lower): the guarantee is enforced where the data is, whatever
  the coordinator asks. The ledger is keyed by a fingerprint of the dataset
  the member's operator configured (its URL), never by the coordinator's job
  id: a coordinator that renames the job, or starts a new one on the same
  records, cannot reset the budget.
- the client-level budgets it committed on its dataset: joining a
  client-level job commits that job's whole ``epsilon_budget`` (what the
  coordinator may spend at most), and a job that would take the sum over
  every job it joined on this dataset past the policy's ``max_epsilon`` is
  declined (basic composition: sound, and loose when jobs stop early).

It does not train: the agent runs :func:`fedaas.train.train_local_dp` itself
after :meth:`MemberPrivacy.start_record_round` has allowed the round.
"""

from __future__ import annotations

import hashlib
import json
import math
import zlib
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from fedaas import tensors
from fedaas.algorithms.accounting import composed, dp_sgd_schedule
from fedaas.algorithms.privacy import (
    NoiseSource,
    OUNoise,
    clip_update,
    gaussian_noise,
    reproducible_noise_source,
    secure_noise_source,
)
from fedaas.client.statepaths import state_file
from fedaas.protocol import ClientPrivacy, PrivacyInstructions, RecordPrivacy
from fedaas.spec import TrainSection
from fedaas.spec_privacy import PrivacyGaussian, PrivacyNone, PrivacyOU, PrivacyRecord


class BudgetSpent(Exception):
    """One more round of DP-SGD, or one more client-level job, would take this member past
    its epsilon budget on its dataset."""


def dataset_fingerprint(member_key: str) -> str:
    """The ledger key of a dataset: SHA-256 of what the member's operator configured (its URL).

    Not a hash of the records: the coordinator's spec picks columns and splits,
    so a content hash would let it mint "new" datasets from the same records.
    """
    return hashlib.sha256(member_key.encode()).hexdigest()[:32]


def _groups(events: Iterable[dict[str, float]]) -> tuple[tuple[float, float, int], ...]:
    """Rounds as ``(z, q, steps)`` groups, equal ``(z, q)`` merged (composition is additive)."""
    merged: dict[tuple[float, float], int] = {}
    for e in events:
        key = (float(e["z"]), float(e["q"]))
        merged[key] = merged.get(key, 0) + int(e["steps"])
    return tuple((z, q, n) for (z, q), n in merged.items() if n > 0)


def _write_atomically(path: Path, content: dict[str, object]) -> None:
    """``content`` as JSON at ``path``, whole or not at all (a sibling file, then a rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(json.dumps(content))
    tmp.replace(path)


class MemberPrivacy:
    """A member's privacy state, kept under ``state_dir``.

    ``member_key`` tells members apart when noise is reproducible (the same
    job seed must not give two members the same noise) and names the
    dataset its record-level ledger is about; the agent passes its data URL.
    """

    def __init__(self, state_dir: Path, member_key: str) -> None:
        self.state_dir = Path(state_dir)
        self.member_key = member_key
        self.dataset = dataset_fingerprint(member_key)

    # record level (DP-SGD) ---------------------------------------------------------
    def ledger_path(self) -> Path:
        """The file that lists every round of DP-SGD this member ran on its dataset."""
        return state_file(self.state_dir, "dpsgd", self.dataset, ".json")

    def ledger(self) -> list[dict[str, float]]:
        """Each round spent on this dataset: ``{"job", "z", "q", "steps"}`` (oldest first)."""
        path = self.ledger_path()
        return list(json.loads(path.read_text())["rounds"]) if path.exists() else []

    def rounds_spent(self, job_id: str | None = None) -> int:
        """Rounds of DP-SGD (started) on this dataset: in ``job_id``, or in all jobs."""
        return sum(1 for e in self.ledger() if job_id is None or e.get("job") == job_id)

    def start_record_round(
        self,
        job_id: str,
        instructions: RecordPrivacy,
        num_examples: int,
        cfg: TrainSection,
        *,
        max_epsilon: float | None = None,
    ) -> dict[str, float]:
        """Allow and spend one round of DP-SGD on ``num_examples`` records; returns its metrics.

        Raises :class:`BudgetSpent` before any record is touched if the
        round would take this dataset's cumulative epsilon (every round on
        it, in every job, composed at the round's ``delta``) past the budget:
        the job's ``epsilon_budget`` or the member's ``max_epsilon``,
        whichever is lower. Otherwise the round is written to the ledger
        *before* training, so that a crash mid-round still counts it as
        spent. Returns the metrics to report with the update:
        ``record_epsilon`` (cumulative on this dataset, if finite) and, with
        a budget, ``record_epsilon_next`` (after one more such round: lets the
        coordinator stop the job before it would exceed). These replace the
        per-call ``record_epsilon`` of :func:`fedaas.train.train_local_dp`'s
        metrics.
        """
        z, delta = instructions.noise_multiplier, instructions.delta
        accountant = instructions.accountant
        limits = [b for b in (instructions.epsilon_budget, max_epsilon) if b is not None]
        budget = min(limits) if limits else None
        q, steps = dp_sgd_schedule(num_examples, cfg.batch_size, cfg.epochs)
        events = self.ledger()
        event = {"job": job_id, "z": float(z), "q": float(q), "steps": steps}
        eps = composed(_groups([*events, event]), delta, accountant).epsilon()
        if budget is not None and eps > budget:
            raise BudgetSpent(
                f"record-level privacy budget reached: after {len(events)} round(s) of DP-SGD "
                f"on this member's dataset (all jobs), one more would bring its epsilon to "
                f"{eps:.3f} > {budget:g} (delta {delta:g})"
            )
        _write_atomically(self.ledger_path(), {"dataset": self.dataset, "rounds": [*events, event]})
        metrics: dict[str, float] = {}
        if math.isfinite(eps):
            metrics["record_epsilon"] = eps
        if budget is not None:
            after = _groups([*events, event, event])
            metrics["record_epsilon_next"] = composed(after, delta, accountant).epsilon()
        return metrics

    # client level -------------------------------------------------------------------
    def commitments_path(self) -> Path:
        """The file that lists the client-level jobs joined on this dataset, with budgets."""
        return state_file(self.state_dir, "client-budgets", self.dataset, ".json")

    def commitments(self) -> dict[str, float]:
        """Each client-level job joined on this dataset: its ``epsilon_budget``."""
        path = self.commitments_path()
        return dict(json.loads(path.read_text())["jobs"]) if path.exists() else {}

    def commit_job(
        self,
        job_id: str,
        privacy: PrivacyNone | PrivacyGaussian | PrivacyOU | PrivacyRecord,
        max_epsilon: float | None,
    ) -> None:
        """Before joining ``job_id``: commit its client-level ``epsilon_budget`` on this dataset.

        Raises :class:`BudgetSpent` (nothing written) if the budgets of every client-level
        job joined on this dataset would then add up past ``max_epsilon``. A job already
        committed (an agent restart, a job resumed) counts once; a job without client-level
        privacy, or a member without ``max_epsilon``, commits nothing.
        """
        client_level = isinstance(privacy, PrivacyGaussian | PrivacyOU)  # unit "client"
        budget = privacy.epsilon_budget if client_level else None
        if max_epsilon is None or budget is None:
            return
        jobs = self.commitments()
        if job_id in jobs:
            return
        spent = sum(jobs.values())
        if spent + budget > max_epsilon:
            raise BudgetSpent(
                f"client-level privacy budget reached: {len(jobs)} job(s) on this member's "
                f"dataset committed epsilon {spent:g}; job {job_id}'s epsilon_budget {budget:g} "
                f"would bring it past this member's max_epsilon {max_epsilon:g}"
            )
        committed = {**jobs, job_id: budget}
        _write_atomically(self.commitments_path(), {"dataset": self.dataset, "jobs": committed})

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
        path = state_file(self.state_dir, "ou", job_id, ".safetensors")
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
