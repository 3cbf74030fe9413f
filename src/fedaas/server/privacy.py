"""The coordinator's side of differential privacy: one object that owns a job's privacy state.

:class:`JobPrivacy` decides every privacy number of a round; the coordinator
only folds and divides. Client-level DP (DP-FedAvg, McMahan et al. 2018,
arXiv:1710.06963): the privacy ledger (epsilon after every round, the
budget), the current clip norm (adaptive clipping, Andrew et al. 2021,
arXiv:1905.03871), the instructions each member gets (clip norm, its share of
the noise), and, for ``central`` placement, the noise added to the sum of
clipped updates before it is divided by the number of sampled members
(Gaussian, or Ornstein-Uhlenbeck noise whose state survives restarts).
Record-level DP (DP-SGD inside each member): the members keep their own
ledgers and report their epsilons; the job keeps the largest next-round
epsilon and stops before any member would exceed the budget.

Everything needed to continue after a restart is in :meth:`JobPrivacy.persisted`
(JSON, stored with every round) and, for central OU noise, an artifact file
written by :meth:`JobPrivacy.save_ou` before the round is committed.

A round, as the coordinator drives it::

    privacy.open_round(number, sampled, eligible)   # BudgetReached / PrivacyError
    task.privacy = privacy.instructions(sampled)
    fold(update, weight=privacy.weight(num_examples))  # per accepted upload
    noise = privacy.central_noise(manifest, sampled, number)  # add to the sum
    mean = take_mean(denominator=privacy.denominator(sampled))
    metrics |= privacy.close_round(number, unclipped=..., reported=..., sampled=...,
                                   member_metrics=...)
    privacy.save_ou(path); store(privacy.persisted())
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from fedaas import protocol, tensors
from fedaas.algorithms.accounting import accounted_sampling_rate
from fedaas.algorithms.ledger import PrivacyEvent, PrivacyLedger
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
from fedaas.spec import JobSpec, PrivacyGaussian, PrivacyOU, PrivacyRecord


class BudgetReached(Exception):
    """The next round would exceed the job's privacy budget: stop the job cleanly."""


class PrivacyError(ValueError):
    """The job's privacy settings cannot be applied to this round: the job fails."""


class JobPrivacy:
    """A job's whole privacy state on the coordinator (see the module docstring).

    ``saved`` is what :meth:`persisted` returned after the last committed
    round (``None`` for a new job); ``ou_path`` the central OU state file of
    that round, if any.
    """

    def __init__(self, spec: JobSpec, saved: dict[str, Any] | None, ou_path: Path | None) -> None:
        self.cfg = spec.privacy
        self.seed = spec.job.seed
        self.quorum = spec.federation.min_clients
        self.client_level = isinstance(self.cfg, PrivacyGaussian | PrivacyOU)
        self.record_level = isinstance(self.cfg, PrivacyRecord)
        self.active = self.client_level or self.record_level
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
        # record level: the largest epsilon a member would reach with one more round
        self.record_epsilon_next = float(saved.get("record_epsilon_next", 0.0))
        self._event: PrivacyEvent | None = None
        self._ou: OUNoise | None = None
        if ou_path is not None and ou_path.exists():
            arrays, meta = tensors.load_state(ou_path)
            self._ou = OUNoise.from_state(arrays, meta)

    # opening the round ----------------------------------------------------------
    def check_budget(self, number: int) -> None:
        """Raise :class:`BudgetReached` if a member's record-level epsilon would exceed the budget.

        Needs no sampling, so the coordinator may call it before waiting for
        members; :meth:`open_round` calls it too.
        """
        if not isinstance(self.cfg, PrivacyRecord):
            return
        budget = self.cfg.epsilon_budget
        if budget is not None and self.record_epsilon_next > budget:
            raise BudgetReached(
                f"privacy budget reached: after round {number - 1}, one more round of DP-SGD "
                f"would bring a member's record-level epsilon to {self.record_epsilon_next:.3f} "
                f"> {budget:g}"
            )

    def open_round(self, number: int, sampled: int, eligible: int) -> None:
        """Check that round ``number`` may run with ``sampled`` of ``eligible`` members.

        Raises :class:`BudgetReached` when the round would take epsilon past
        the budget (client level: the ledger with this round's event; record
        level: a member's next epsilon), :class:`PrivacyError` when the round
        cannot be private (OU noise needs every member). Remembers the
        round's event for :meth:`close_round`.
        """
        self._event = None
        self.check_budget(number)
        if self.ledger is None:
            return
        event = self._round_event(sampled, eligible)
        if self.ledger.would_exceed(event):
            raise BudgetReached(
                f"privacy budget reached: epsilon {self.ledger.epsilon():.3f} after round "
                f"{number - 1}; round {number} would bring it to "
                f"{self.ledger.epsilon_with(event):.3f} > {self.ledger.epsilon_budget:g}"
            )
        self._event = event

    def _round_event(self, sampled: int, eligible: int) -> PrivacyEvent:
        """This round's release for the accountant."""
        cfg = self.cfg
        assert isinstance(cfg, PrivacyGaussian | PrivacyOU)
        q = accounted_sampling_rate(cfg.placement, sampled / max(eligible, 1))
        if isinstance(cfg, PrivacyOU):
            if q < 1:
                raise PrivacyError(
                    f"OU noise needs every member in every round, but {sampled} of {eligible} "
                    "were sampled: drop clients_per_round/fraction for this job"
                )
            return PrivacyEvent(cfg.noise_multiplier, q, "ou", cfg.theta)
        return PrivacyEvent(cfg.noise_multiplier, q)

    def _update_multiplier(self, sampled: int) -> float:
        """The multiplier the update noise is drawn with (lowered under adaptive clipping)."""
        assert isinstance(self.cfg, PrivacyGaussian | PrivacyOU)
        z = self.cfg.noise_multiplier
        if isinstance(self.cfg, PrivacyGaussian) and self.cfg.adaptive_clipping:
            return adjusted_noise_multiplier(z, count_noise_std(sampled))
        return z

    def instructions(self, sampled: int) -> protocol.PrivacyInstructions:
        """What each of the ``sampled`` members must do to its update this round."""
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
        if cfg.placement != "central":
            member_std = noise_std(
                self._update_multiplier(sampled),
                self.clip_norm,
                cfg.placement,
                min(sampled, self.quorum),  # the sum of any quorum of shares is fully noised
            )
        return protocol.ClientPrivacy(
            mechanism=cfg.mechanism,
            placement=cfg.placement,
            clip_norm=self.clip_norm,
            noise_std=member_std,
            theta=cfg.theta if isinstance(cfg, PrivacyOU) else None,
            reproducible=cfg.reproducible,
            seed=self.seed,
        )

    # aggregating -----------------------------------------------------------------
    def weight(self, num_examples: int) -> float:
        """FedAvg weight of one upload: 1 under client-level DP (fixed denominator), else n_k."""
        return 1.0 if self.client_level else float(num_examples)

    def denominator(self, sampled: int) -> int | None:
        """Divide the sum by this (client-level DP: the sampled count); ``None``: weighted mean."""
        return sampled if self.client_level else None

    def _source(self, number: int) -> NoiseSource:
        assert isinstance(self.cfg, PrivacyGaussian | PrivacyOU)
        if self.cfg.reproducible:
            return reproducible_noise_source(self.seed, stream=number)
        return secure_noise_source()

    def central_noise(
        self, manifest: tensors.Manifest, sampled: int, number: int
    ) -> dict[str, np.ndarray] | None:
        """Noise for the coordinator to add to the sum (``central`` placement only)."""
        cfg = self.cfg
        if not isinstance(cfg, PrivacyGaussian | PrivacyOU) or cfg.placement != "central":
            return None
        assert self.clip_norm is not None
        std = noise_std(self._update_multiplier(sampled), self.clip_norm, "central")
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
        sampled: int,
        member_metrics: list[tuple[int, dict[str, float]]],
    ) -> dict[str, Any]:
        """Account for the closed round; returns the privacy metrics of its round record.

        Client level: adapts the clip norm, records the round's event in the
        ledger and returns ``epsilon`` (``None`` if infinite), ``delta``,
        ``clip_norm``, ``private``. Record level: the guarantee is the
        weakest member's, so ``record_epsilon`` is the largest any member
        reported (with ``delta``), and ``record_epsilon_next`` the largest
        next-round epsilon, whose running maximum :meth:`check_budget`
        watches. Apply the result after the members' mean metrics.
        """
        if isinstance(self.cfg, PrivacyRecord):
            return self._close_record_round(member_metrics)
        if self.ledger is None:
            return {}
        if self._event is None:
            raise RuntimeError(f"round {number} was closed without open_round")
        self._adapt_clip_norm(unclipped, reported, sampled, number)
        self.ledger.record(self._event)
        self._event = None
        return self.metrics()

    def _adapt_clip_norm(self, unclipped: int, reported: int, sampled: int, number: int) -> None:
        cfg = self.cfg
        if not (isinstance(cfg, PrivacyGaussian) and cfg.adaptive_clipping):
            return
        assert self.clip_norm is not None
        b = noised_unclipped_fraction(
            unclipped, reported, sampled, count_noise_std(sampled), self._source(2 * number + 1)
        )
        self.clip_norm = next_clip_norm(self.clip_norm, b, cfg.target_quantile, cfg.clip_lr)

    def _close_record_round(
        self, member_metrics: list[tuple[int, dict[str, float]]]
    ) -> dict[str, Any]:
        assert isinstance(self.cfg, PrivacyRecord)
        metrics: dict[str, Any] = {}
        spent = [m["record_epsilon"] for _, m in member_metrics if "record_epsilon" in m]
        if spent:
            metrics.update(record_epsilon=max(spent), delta=self.cfg.delta)
        upcoming = [
            m["record_epsilon_next"] for _, m in member_metrics if "record_epsilon_next" in m
        ]
        if upcoming:  # a member's epsilon only grows: the running maximum is the one to watch
            self.record_epsilon_next = max(self.record_epsilon_next, *upcoming)
            metrics["record_epsilon_next"] = max(upcoming)
        return metrics

    def metrics(self) -> dict[str, Any]:
        """Client-level privacy so far: ``epsilon``, ``delta``, ``clip_norm``, ``private``."""
        if self.ledger is None:
            return {}
        assert isinstance(self.cfg, PrivacyGaussian | PrivacyOU)
        eps = self.ledger.epsilon()
        return {
            "epsilon": eps if math.isfinite(eps) else None,
            "delta": self.cfg.delta,
            "clip_norm": self.clip_norm,
            "private": self.ledger.private,
        }

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
        if self.record_level:
            state["record_epsilon_next"] = self.record_epsilon_next
        return state
