"""The coordinator's side of differential privacy: one object that owns a job's privacy state.

:class:`JobPrivacy` decides every privacy number of a round; the coordinator
only folds and divides. Client-level DP (DP-FedAvg, McMahan et al. 2018,
arXiv:1710.06963): the privacy ledger (epsilon after every round, the
budget), the current clip norm (adaptive clipping, Andrew et al. 2021,
arXiv:1905.03871), the instructions each member gets (clip norm, its share of
the noise), and, for ``central`` placement, the noise added to the sum of
clipped updates before it is divided by the expected number of members ``q*N``
(Gaussian, or Ornstein-Uhlenbeck noise whose state survives restarts).
Who is sampled (Poisson over every eligible member under client-level DP,
:mod:`fedaas.algorithms.sampling`) and what may be published
(:mod:`fedaas.server.disclosure`) are decided here too.
Record-level DP (DP-SGD inside each member): the members keep their own
ledgers and report their epsilons; the job keeps the largest next-round
epsilon and stops before any member would exceed the budget.

Restart safety (:meth:`JobPrivacy.record_release`): the round's privacy
event is stored before any byte of the round's model exists, so a round that
crashed after its model was written (locally or in the object-store mirror)
and reruns with fresh noise is counted twice, never once. Under DP the sample
comes from the cryptographic source, not the job seed, so the rerun draws a
fresh sample; nothing of the interrupted one was published (no participants
under DP; models are served only once their round is committed). The rest of
the state is :meth:`JobPrivacy.persisted` (JSON, stored with every round)
and the central OU state file (:meth:`JobPrivacy.save_ou`). The order of
calls is in ``docs/architecture.md`` ("One round, as the code runs it").
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fedaas import protocol, tensors
from fedaas.algorithms.accounting import accounted_sampling_rate
from fedaas.algorithms.ledger import PrivacyEvent, PrivacyLedger
from fedaas.algorithms.noise import ReproducibleNoise
from fedaas.algorithms.privacy import (
    NoiseSource,
    OUNoise,
    adjusted_noise_multiplier,
    count_noise_std,
    gaussian_noise,
    next_clip_norm,
    noise_std,
    noised_unclipped_fraction,
    reproducible_noise_source,
    secure_noise_source,
)
from fedaas.algorithms.sampling import (
    amplification_note,
    expected_count,
    poisson_sample,
    sampling_rate,
    seeded_sample,
)
from fedaas.server.disclosure import Disclosure
from fedaas.server.record_budget import BudgetReached as BudgetReached
from fedaas.server.record_budget import RecordBudget
from fedaas.spec import JobSpec, PrivacyGaussian, PrivacyOU, PrivacyRecord

_SAMPLING_STREAM = 1 << 40  # reproducible runs: the sampling stream, apart from the noise ones


class PrivacyError(ValueError):
    """The job's privacy settings cannot be applied to this round: the job fails."""


class JobPrivacy:
    """A job's whole privacy state on the coordinator (see the module docstring).

    ``saved`` is what :meth:`persisted` returned after the last committed
    round (``None`` for a new job); ``ou_path`` the central OU state file of
    that round, if any.
    """

    def __init__(self, spec: JobSpec, saved: dict[str, Any] | None, ou_path: Path | None) -> None:
        self.spec = spec
        self.cfg = spec.privacy
        self.seed = spec.job.seed
        self.client_level = isinstance(self.cfg, PrivacyGaussian | PrivacyOU)
        self.record_level = isinstance(self.cfg, PrivacyRecord)
        self.active = self.client_level or self.record_level
        self.disclosure = Disclosure(self.cfg)
        saved = saved or {}
        self.ledger: PrivacyLedger | None = None
        self.clip_norm: float | None = None
        if isinstance(self.cfg, PrivacyGaussian | PrivacyOU):
            if "ledger" in saved:
                self.ledger = PrivacyLedger.from_dict(saved["ledger"])
            else:
                self.ledger = PrivacyLedger(
                    self.cfg.delta,
                    self.cfg.epsilon_budget,
                    self.cfg.accountant,
                    private=not self.cfg.reproducible,
                )
            self.clip_norm = float(saved.get("clip_norm", self.cfg.clip_norm))
        self.record: RecordBudget | None = None
        if isinstance(self.cfg, PrivacyRecord):
            self.record = RecordBudget(self.cfg, saved.get("record_epsilon_next", 0.0))
        self._event: PrivacyEvent | None = None
        self._released = False
        self.rate = 1.0  # the round's Poisson rate over ...
        self.population = 0  # ... this many eligible members (client level)
        self._ou: OUNoise | None = None
        if ou_path is not None and ou_path.exists():
            arrays, meta = tensors.load_state(ou_path)
            self._ou = OUNoise.from_state(arrays, meta)

    # sampling and opening the round ---------------------------------------------
    def check_budget(self, number: int) -> None:
        """Record level: raise :class:`BudgetReached` if a member would exceed the budget
        (needs no sampling: the coordinator calls it before waiting for members)."""
        if self.record is not None:
            self.record.check(number)

    def sample(self, number: int, eligible: Sequence[int], online: Sequence[int]) -> list[int]:
        """Who is asked to train in round ``number`` (member ids, sorted).

        Client-level DP: Poisson over *every* eligible member (online or not)
        at rate ``q = wanted / N`` from the cryptographic source, so that the
        accountant's rate holds whoever is online and nobody can predict the
        sample (:mod:`fedaas.algorithms.sampling`); a reproducible run draws
        it from the seed (and is marked not private). Otherwise the seeded,
        reproducible draw among the online members.
        """
        if not self.client_level:
            count = min(self.spec.clients_for_round(len(eligible)), len(online))
            return seeded_sample(online, count, self.seed, number)
        self.population = len(eligible)
        self.rate = sampling_rate(self.spec.clients_for_round(len(eligible)), len(eligible))
        assert isinstance(self.cfg, PrivacyGaussian | PrivacyOU)
        if self.cfg.reproducible:
            seeded = ReproducibleNoise(self.seed, _SAMPLING_STREAM + number)
            return poisson_sample(eligible, self.rate, seeded.uniform)
        return poisson_sample(eligible, self.rate)

    def open_round(self, number: int, eligible: int) -> None:
        """Check that round ``number`` may run, sampled from ``eligible`` members.

        Raises :class:`BudgetReached` when the round would take epsilon past
        the budget, :class:`PrivacyError` when it cannot be private (OU noise
        needs every member). Remembers the event for :meth:`record_release`.
        """
        self._event = None
        self._released = False
        self.check_budget(number)
        if self.ledger is None:
            return
        if self.population != eligible:  # not sampled through :meth:`sample`
            self.population = eligible
            self.rate = sampling_rate(self.spec.clients_for_round(eligible), eligible)
        event = self._round_event()
        if self.ledger.would_exceed(event):
            raise BudgetReached(
                f"privacy budget reached: epsilon {self.ledger.epsilon():.3f} after round "
                f"{number - 1}; round {number} would bring it to "
                f"{self.ledger.epsilon_with(event):.3f} > {self.ledger.epsilon_budget:g}"
            )
        self._event = event

    def _round_event(self) -> PrivacyEvent:
        """This round's release for the accountant: Poisson rate ``q`` over the eligible."""
        cfg = self.cfg
        assert isinstance(cfg, PrivacyGaussian | PrivacyOU)
        q = accounted_sampling_rate(cfg.placement, self.rate)
        if isinstance(cfg, PrivacyOU):
            if q < 1:
                raise PrivacyError(
                    f"OU noise needs every member in every round, but the sampling rate is "
                    f"{self.rate:.3g} over {self.population} eligible members: drop "
                    "clients_per_round/fraction for this job"
                )
            return PrivacyEvent(cfg.noise_multiplier, q, "ou", cfg.theta)
        return PrivacyEvent(cfg.noise_multiplier, q)

    @property
    def expected(self) -> float:
        """``q * N``: how many members a client-level round expects (the fixed denominator)."""
        return expected_count(self.rate, max(self.population, 1))

    def _update_multiplier(self) -> float:
        """The multiplier the update noise is drawn with (lowered under adaptive clipping)."""
        assert isinstance(self.cfg, PrivacyGaussian | PrivacyOU)
        z = self.cfg.noise_multiplier
        if isinstance(self.cfg, PrivacyGaussian) and self.cfg.adaptive_clipping:
            return adjusted_noise_multiplier(z, count_noise_std(self.expected))
        return z

    def instructions(self) -> protocol.PrivacyInstructions:
        """What each sampled member must do to its update this round."""
        cfg = self.cfg
        if isinstance(cfg, PrivacyRecord):
            return protocol.RecordPrivacy(
                noise_multiplier=cfg.noise_multiplier,
                clip_norm=cfg.clip_norm,
                delta=cfg.delta,
                accountant=cfg.accountant,
                epsilon_budget=cfg.epsilon_budget,
                reproducible=cfg.reproducible,
                seed=self.seed,
            )
        if not isinstance(cfg, PrivacyGaussian | PrivacyOU):
            return protocol.NoPrivacy()
        assert self.clip_norm is not None
        member_std = 0.0
        if cfg.placement != "central":  # "local" (the spec refuses "distributed" for now)
            member_std = noise_std(self._update_multiplier(), self.clip_norm, cfg.placement)
        return protocol.ClientPrivacy(
            mechanism=cfg.mechanism,
            placement=cfg.placement,
            clip_norm=self.clip_norm,
            noise_std=member_std,
            theta=cfg.theta if isinstance(cfg, PrivacyOU) else None,
            adaptive_clipping=isinstance(cfg, PrivacyGaussian) and cfg.adaptive_clipping,
            reproducible=cfg.reproducible,
            seed=self.seed,
        )

    # aggregating -----------------------------------------------------------------
    def weight(self, num_examples: int | None) -> float:
        """FedAvg weight of one upload: 1 under DP (members send no example count), else n_k."""
        if self.active or num_examples is None:
            return 1.0
        return float(num_examples)

    def denominator(self, reported: int) -> float | None:
        """Divide the sum by ``q*N`` (client level), by the reports (record level: a
        plain mean), or ``None``: FedAvg's example-weighted mean."""
        if self.client_level:
            return self.expected
        return float(max(reported, 1)) if self.record_level else None

    def record_release(self, number: int) -> None:
        """Record round ``number``'s event in the ledger, before anything of the round exists.

        The coordinator stores :meth:`persisted` right after, before it draws
        the noise and writes the model: a crash after that point counts the
        round even if it reruns (see the module docstring). Idempotent.
        """
        if self.ledger is None or self._released:
            return
        if self._event is None:
            raise RuntimeError(f"round {number} was released without open_round")
        self.ledger.record(self._event)
        self._released = True

    def _source(self, number: int) -> NoiseSource:
        if self.cfg.reproducible:  # type: ignore[union-attr]
            return reproducible_noise_source(self.seed, stream=number)
        return secure_noise_source()

    def central_noise(
        self, manifest: tensors.Manifest, number: int
    ) -> dict[str, np.ndarray] | None:
        """Noise for the coordinator to add to round ``number``'s sum (``central`` only)."""
        cfg = self.cfg
        if not isinstance(cfg, PrivacyGaussian | PrivacyOU) or cfg.placement != "central":
            return None
        assert self.clip_norm is not None
        std = noise_std(self._update_multiplier(), self.clip_norm, "central")
        if isinstance(cfg, PrivacyOU):
            if self._ou is None:
                self._ou = OUNoise(manifest, std, cfg.theta)
            return {
                k: v.astype(np.float32) for k, v in self._ou.next(self._source(2 * number)).items()
            }
        return gaussian_noise(manifest, std, self._source(2 * number))

    # closing the round -------------------------------------------------------------
    def close_round(
        self,
        number: int,
        *,
        unclipped: int,
        reported: int,
        member_metrics: list[tuple[int, dict[str, float]]],
    ) -> dict[str, Any]:
        """Account for the closed round; returns the privacy metrics of its round record.

        Client level: makes sure the round's event is in the ledger, adapts
        the clip norm (the noised count of unclipped updates over ``q*N``)
        and returns :meth:`metrics`. Record level: :meth:`RecordBudget.close`.
        """
        if self.record is not None:
            return self.record.close(member_metrics)
        if self.ledger is None:
            return {}
        self.record_release(number)
        self._adapt_clip_norm(unclipped, reported, number)
        self._event, self._released = None, False
        return self.metrics()

    def _adapt_clip_norm(self, unclipped: int, reported: int, number: int) -> None:
        cfg = self.cfg
        if not (isinstance(cfg, PrivacyGaussian) and cfg.adaptive_clipping):
            return
        assert self.clip_norm is not None
        expected = self.expected
        b = noised_unclipped_fraction(
            unclipped, reported, expected, count_noise_std(expected), self._source(2 * number + 1)
        )
        self.clip_norm = next_clip_norm(self.clip_norm, b, cfg.target_quantile, cfg.clip_lr)

    def metrics(self) -> dict[str, Any]:
        """Client-level privacy so far: ``epsilon``, ``delta``, ``clip_norm``, ``private``,
        and the sampling that epsilon assumes: ``sampling_rate`` (the accounted ``q``),
        ``population`` (``N``), ``amplification``, and ``amplification_note`` when none
        is claimed."""
        if self.ledger is None:
            return {}
        assert isinstance(self.cfg, PrivacyGaussian | PrivacyOU)
        eps = self.ledger.epsilon()
        note = amplification_note(self.rate, self.population, self.cfg.placement)
        out: dict[str, Any] = {
            "epsilon": eps if math.isfinite(eps) else None,
            "delta": self.cfg.delta,
            "clip_norm": self.clip_norm,
            "private": self.ledger.private,
            "sampling_rate": accounted_sampling_rate(self.cfg.placement, self.rate),
            "population": self.population,
            "amplification": note is None,
        }
        if note is not None:
            out["amplification_note"] = note
        return out

    # persistence -------------------------------------------------------------------
    def save_ou(self, path: Path) -> bool:
        """Write the central OU noise state to ``path``; ``False`` if there is none."""
        if self._ou is None:
            return False
        arrays, meta = self._ou.state_dict()
        tensors.save_state(path, arrays, meta)
        return True

    def persisted(self) -> dict[str, Any]:
        """JSON-able state to store with every round and pass back as ``saved`` on restart."""
        state: dict[str, Any] = {}
        if self.ledger is not None:
            state.update(ledger=self.ledger.to_dict(), clip_norm=self.clip_norm)
        if self.record is not None:
            state["record_epsilon_next"] = self.record.epsilon_next
        return state
