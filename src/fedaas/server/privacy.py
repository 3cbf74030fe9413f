"""The coordinator's side of differential privacy for one job.

Holds the privacy ledger (epsilon after every round, the budget), the
current clip norm (adaptive clipping, Andrew et al. 2021), and, for
``central`` placement, adds the noise to the sum of clipped updates before
it is divided by the number of sampled members (DP-FedAvg, McMahan et al.
2018). Everything it needs to continue after a restart is in
:meth:`persisted` (JSON, stored with the round) and, for central OU noise,
an artifact file written before the round is committed.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from fedaas import tensors
from fedaas.algorithms.accounting import PrivacyEvent, PrivacyLedger, accounted_sampling_rate
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
from fedaas.spec import JobSpec


class PrivacyError(ValueError):
    """The job's privacy settings cannot be applied to this round."""


class JobPrivacy:
    def __init__(self, spec: JobSpec, saved: dict[str, Any] | None, ou_path: Path | None) -> None:
        self.cfg = spec.privacy
        self.seed = spec.job.seed
        self.quorum = spec.federation.min_clients
        # client-level DP is the coordinator's business; record-level DP (DP-SGD)
        # happens inside each member, which reports its own epsilon
        self.record_level = self.cfg.mechanism != "none" and self.cfg.unit == "record"
        self.enabled = self.cfg.mechanism != "none" and not self.record_level
        saved = saved or {}
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
        self._ou: OUNoise | None = None
        if ou_path is not None and ou_path.exists():
            arrays, meta = tensors.load_state(ou_path)
            self._ou = OUNoise.from_state(arrays, meta)

    # before the round ------------------------------------------------------
    def event(self, sampled: int, eligible: int) -> PrivacyEvent:
        """This round's release for the accountant."""
        q = accounted_sampling_rate(self.cfg.placement, sampled / max(eligible, 1))
        if self.cfg.mechanism == "ou" and q < 1:
            raise PrivacyError(
                f"OU noise needs every member in every round, but {sampled} of {eligible} "
                "were sampled: drop clients_per_round/fraction for this job"
            )
        theta = self.cfg.theta or 0.0
        mechanism = "ou" if self.cfg.mechanism == "ou" else "gaussian"
        assert self.cfg.noise_multiplier is not None
        return PrivacyEvent(
            self.cfg.noise_multiplier, q, mechanism, theta if mechanism == "ou" else 0.0
        )

    def _update_multiplier(self, sampled: int) -> float:
        z = self.cfg.noise_multiplier or 0.0
        if self.cfg.adaptive_clipping:
            return adjusted_noise_multiplier(z, count_noise_std(sampled))
        return z

    def task_info(self, sampled: int) -> dict[str, Any]:
        """What each member needs: clip norm and the noise it must add itself."""
        if self.record_level:
            return {
                "mechanism": self.cfg.mechanism,
                "unit": "record",
                "noise_multiplier": self.cfg.noise_multiplier,
                "clip_norm": self.cfg.clip_norm,
                "delta": self.cfg.delta,
                "reproducible": self.cfg.reproducible,
                "seed": self.seed,
            }
        if not self.enabled:
            return {"mechanism": "none"}
        member_std = 0.0
        if self.cfg.placement != "central":
            member_std = noise_std(
                self._update_multiplier(sampled),
                self.clip_norm,
                self.cfg.placement,
                min(sampled, self.quorum),  # the sum of any quorum of shares is fully noised
            )
        return {
            "mechanism": self.cfg.mechanism,
            "unit": "client",
            "placement": self.cfg.placement,
            "clip_norm": self.clip_norm,
            "noise_std": member_std,
            "theta": self.cfg.theta,
            "reproducible": self.cfg.reproducible,
            "seed": self.seed,
        }

    # closing the round -------------------------------------------------------
    def _source(self, number: int) -> NoiseSource:
        if self.cfg.reproducible:
            return reproducible_noise_source(self.seed, stream=number)
        return secure_noise_source()

    def central_noise(
        self, manifest: tensors.Manifest, sampled: int, number: int
    ) -> dict[str, np.ndarray] | None:
        """Noise for the coordinator to add to the sum (``central`` placement only)."""
        if not self.enabled or self.cfg.placement != "central":
            return None
        std = noise_std(self._update_multiplier(sampled), self.clip_norm, "central")
        if self.cfg.mechanism == "ou":
            if self._ou is None:
                self._ou = OUNoise(manifest, std, self.cfg.theta or 0.0)
            return {
                k: v.astype(np.float32) for k, v in self._ou.next(self._source(2 * number)).items()
            }
        return gaussian_noise(manifest, std, self._source(2 * number))

    def adapt_clip_norm(self, unclipped: int, reported: int, sampled: int, number: int) -> None:
        if not (self.enabled and self.cfg.adaptive_clipping):
            return
        b = noised_unclipped_fraction(
            unclipped, reported, sampled, count_noise_std(sampled), self._source(2 * number + 1)
        )
        self.clip_norm = next_clip_norm(
            self.clip_norm, b, self.cfg.target_quantile, self.cfg.clip_lr
        )

    def record(self, event: PrivacyEvent) -> float:
        return self.ledger.record(event)

    def save_ou(self, path: Path) -> None:
        if self._ou is not None:
            arrays, meta = self._ou.state_dict()
            tensors.save_state(path, arrays, meta)

    def persisted(self) -> dict[str, Any]:
        return {"ledger": self.ledger.to_dict(), "clip_norm": self.clip_norm}

    def metrics(self) -> dict[str, Any]:
        eps = self.ledger.epsilon()
        return {
            "epsilon": eps if math.isfinite(eps) else None,
            "delta": self.cfg.delta,
            "clip_norm": self.clip_norm,
            "private": self.ledger.private,
        }
