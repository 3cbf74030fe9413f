"""Client-level differential privacy: clipping, noise sources, calibration, OU noise.

DP-FedAvg (McMahan et al., "Learning Differentially Private Recurrent Language
Models", ICLR 2018, arXiv:1710.06963): each member clips its model delta to
global L2 norm ``S``; Gaussian noise ``N(0, (z*S)^2)`` protects the sum of the
clipped deltas, where ``z`` is the noise multiplier. :func:`noise_std` says
how much noise each party adds for each placement (central, distributed,
local). Adaptive clipping (Andrew et al., "Differentially Private Learning
with Adaptive Clipping", NeurIPS 2021, arXiv:1905.03871) moves ``S``
geometrically towards a target quantile of the members' update norms.

:class:`OUNoise` draws temporally correlated (Ornstein-Uhlenbeck, AR(1))
noise; it costs *more* privacy than independent noise at the same per-round
sigma, see :mod:`fedaas.algorithms.accounting`.

Privacy noise comes from :mod:`fedaas.algorithms.noise` (the operating
system's cryptographic source with the floating-point mitigation of the
DP-SGD path), never from numpy's or Python's pseudo-random generators;
seeded noise exists only for the reproducibility mode, which marks a run as
not private.

Pure math: no files, no network. Nothing here is pickled; every state is a
dict of numpy arrays (for safetensors) plus a JSON-compatible dict.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Literal

import numpy as np

from fedaas.algorithms.noise import (
    NoiseSource,
    ReproducibleNoise,
    SecureNoise,
    reproducible_noise_source,
    secure_noise_source,
)

__all__ = [
    "NoiseSource",
    "OUNoise",
    "ReproducibleNoise",
    "SecureNoise",
    "adjusted_noise_multiplier",
    "clip_update",
    "count_noise_std",
    "gaussian_noise",
    "global_norm",
    "next_clip_norm",
    "noise_std",
    "noised_unclipped_fraction",
    "reproducible_noise_source",
    "secure_noise_source",
]

Placement = Literal["central", "distributed", "local"]
Shape = tuple[int, ...]


# --------------------------------------------------------------------- clipping


def global_norm(update: Mapping[str, np.ndarray]) -> float:
    """The L2 norm of all tensors of ``update`` taken together (float64)."""
    total = 0.0
    for values in update.values():
        flat = np.asarray(values, dtype=np.float64).reshape(-1)
        total += float(np.dot(flat, flat))
    return math.sqrt(total)


def clip_update(
    update: Mapping[str, np.ndarray], norm: float
) -> tuple[dict[str, np.ndarray], float]:
    """Scale ``update`` so that its global L2 norm is at most ``norm``.

    Per-client clipping of DP-FedAvg (McMahan et al. 2018, arXiv:1710.06963):
    every tensor is multiplied by ``min(1, norm / ||update||)``, which keeps
    the direction. Returns the clipped copy (same dtypes) and the norm
    before clipping (for adaptive clipping, :func:`noised_unclipped_fraction`).
    """
    if not (math.isfinite(norm) and norm > 0):
        raise ValueError(f"clip norm must be a positive finite number, got {norm}")
    before = global_norm(update)
    if not math.isfinite(before):
        raise ValueError("update holds non-finite values; refusing to clip it")
    scale = min(1.0, norm / before) if before > 0 else 1.0
    clipped = _scaled(update, scale)
    after = global_norm(clipped)
    if after > norm:  # rounding to float32 pushed it over by ~1e-7: shrink a hair more
        clipped = _scaled(clipped, norm / after * (1 - 1e-6))
    return clipped, before


def _scaled(update: Mapping[str, np.ndarray], scale: float) -> dict[str, np.ndarray]:
    out = {}
    for name, values in update.items():
        array = np.asarray(values)
        dtype = array.dtype if np.issubdtype(array.dtype, np.floating) else np.float64
        out[name] = (array.astype(np.float64) * scale).astype(dtype)
    return out


# ------------------------------------------------------------ Gaussian noise


def noise_std(
    noise_multiplier: float, clip_norm: float, placement: Placement, members: int = 1
) -> float:
    """Standard deviation each noising party adds, per coordinate.

    McMahan et al. 2018: the sum of the clipped deltas must carry
    ``N(0, (z*S)^2)``. ``central``: the coordinator adds it once to the sum;
    ``distributed``: each member adds ``N(0, (z*S)^2 / m)``, so that the
    (securely aggregated) sum of any ``m = members`` or more shares carries at
    least the full noise: pass the fewest members whose sum may be released
    (the quorum), not the number sampled, or a dropout leaves the sum short of
    noise (Kairouz et al. 2021, arXiv:2102.06387, calibrate the same way);
    ``local``: each member adds the full ``N(0, (z*S)^2)`` to its own update.
    """
    if noise_multiplier < 0 or clip_norm <= 0:
        raise ValueError("noise_multiplier must be >= 0 and clip_norm > 0")
    std = noise_multiplier * clip_norm
    if placement == "distributed":
        if members < 1:
            raise ValueError("distributed noise needs at least one member")
        return std / math.sqrt(members)
    if placement in ("central", "local"):
        return std
    raise ValueError(f"unknown placement {placement!r}")


def gaussian_noise(
    shapes: Mapping[str, Shape], std: float, source: NoiseSource, dtype: Any = np.float32
) -> dict[str, np.ndarray]:
    """Independent ``N(0, std^2)`` noise for each named tensor shape."""
    if not (math.isfinite(std) and std >= 0):
        raise ValueError(f"noise std must be finite and >= 0, got {std}")
    return {
        name: (std * source.standard_normal(tuple(shape))).astype(dtype)
        for name, shape in shapes.items()
    }


# ----------------------------------------------------- Ornstein-Uhlenbeck noise

OU_FORMAT = "fedaas.ou-noise/1"


class OUNoise:
    """Ornstein-Uhlenbeck noise discretized per round, i.e. an AR(1) process.

    ``z_1 = sigma*xi_1``, ``z_t = theta*z_{t-1} + sqrt(1-theta^2)*sigma*xi_t``
    with ``xi_t ~ N(0, I)``: stationary variance ``sigma^2`` and correlation
    ``theta^|t-s|`` between rounds. One object per noising party (member or
    coordinator). Its state survives a restart through :meth:`state_dict`
    (tensors for safetensors, metadata for JSON) and :meth:`from_state`.
    Account for it with the whitening bound in
    :func:`fedaas.algorithms.accounting.ou_effective_multiplier`, never as
    independent noise per round.
    """

    def __init__(self, shapes: Mapping[str, Shape], sigma: float, theta: float) -> None:
        if not (math.isfinite(sigma) and sigma >= 0):
            raise ValueError(f"OU sigma must be finite and >= 0, got {sigma}")
        if not -1.0 < theta < 1.0:
            raise ValueError(f"OU theta must lie strictly between -1 and 1, got {theta}")
        self.shapes = {name: tuple(int(d) for d in shape) for name, shape in shapes.items()}
        self.sigma = float(sigma)
        self.theta = float(theta)
        self.step = 0
        self._z: dict[str, np.ndarray] = {}

    def next(self, source: NoiseSource) -> dict[str, np.ndarray]:
        """Advance one round and return the new noise ``z_t`` (float64 copies)."""
        innovation = self.sigma if self.step == 0 else math.sqrt(1 - self.theta**2) * self.sigma
        for name, shape in self.shapes.items():
            fresh = innovation * source.standard_normal(shape)
            self._z[name] = fresh if self.step == 0 else self.theta * self._z[name] + fresh
        self.step += 1
        return {name: z.copy() for name, z in self._z.items()}

    def state_dict(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """``(tensors, metadata)``: float64 arrays for safetensors, a JSON-able dict."""
        meta = {
            "format": OU_FORMAT,
            "sigma": self.sigma,
            "theta": self.theta,
            "step": self.step,
            "shapes": {name: list(shape) for name, shape in self.shapes.items()},
        }
        return {name: z.copy() for name, z in self._z.items()}, meta

    @classmethod
    def from_state(cls, tensors: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> OUNoise:
        """Rebuild the process saved by :meth:`state_dict`; validates everything."""
        if meta.get("format") != OU_FORMAT:
            raise ValueError(f"not an OU noise state (format {meta.get('format')!r})")
        shapes = {name: tuple(shape) for name, shape in meta["shapes"].items()}
        noise = cls(shapes, float(meta["sigma"]), float(meta["theta"]))
        step = int(meta["step"])
        if step < 0:
            raise ValueError("OU state has a negative step")
        expected = set(shapes) if step > 0 else set()
        if set(tensors) != expected:
            raise ValueError("OU state tensors do not match its shapes")
        for name, array in tensors.items():
            value = np.array(array, dtype=np.float64)
            if value.shape != noise.shapes[name] or not np.all(np.isfinite(value)):
                raise ValueError(f"OU state tensor {name!r} has a wrong shape or non-finite values")
            noise._z[name] = value
        noise.step = step
        return noise


# ---------------------------------------------------------- adaptive clipping


def count_noise_std(expected_clients: float) -> float:
    """Andrew et al.'s default noise on the unclipped count: ``sigma_b = m / 20``."""
    if expected_clients <= 0:
        raise ValueError("expected_clients must be positive")
    return expected_clients / 20.0


def adjusted_noise_multiplier(noise_multiplier: float, count_std: float) -> float:
    """Update noise multiplier ``z_delta = (z^-2 - (2*sigma_b)^-2)^(-1/2)``.

    Andrew et al. 2021 (arXiv:1905.03871): the noised count of unclipped
    members (sensitivity 1/2 after centering) and the noised sum of deltas
    together cost as much privacy as one Gaussian mechanism with multiplier
    ``z``. Account with ``z``, add noise with ``z_delta``.
    """
    if noise_multiplier <= 0 or count_std <= 0:
        raise ValueError("noise_multiplier and the count noise must be positive")
    rest = noise_multiplier**-2 - (2.0 * count_std) ** -2
    if rest <= 0:
        raise ValueError(
            f"adaptive clipping impossible: noise_multiplier {noise_multiplier:g} needs "
            f"count noise sigma_b > z/2 = {noise_multiplier / 2:g}, got {count_std:g}; "
            "sample more clients per round or lower the noise multiplier"
        )
    return rest**-0.5


def noised_unclipped_fraction(
    unclipped: int, reported: int, expected_clients: float, count_std: float, source: NoiseSource
) -> float:
    """Noisy fraction ``b`` of members whose update norm was at most the clip norm.

    Andrew et al. 2021: each reporting member contributes ``b_i - 1/2``
    (sensitivity 1/2), the sum gets ``N(0, sigma_b^2)``, and
    ``b = (sum + noise) / m + 1/2`` with ``m`` the expected number of members.
    """
    if not 0 <= unclipped <= reported or expected_clients <= 0 or count_std < 0:
        raise ValueError("need 0 <= unclipped <= reported, expected_clients > 0, count_std >= 0")
    noise = count_std * float(source.standard_normal((1,))[0])
    return (unclipped - 0.5 * reported + noise) / expected_clients + 0.5


def next_clip_norm(
    clip_norm: float, unclipped_fraction: float, target_quantile: float = 0.5, lr: float = 0.2
) -> float:
    """Geometric update ``S <- S * exp(-eta_C * (b - gamma))`` (Andrew et al. 2021)."""
    if clip_norm <= 0 or lr <= 0 or not 0 < target_quantile < 1:
        raise ValueError("need clip_norm > 0, lr > 0 and 0 < target_quantile < 1")
    return clip_norm * math.exp(-lr * (unclipped_fraction - target_quantile))
