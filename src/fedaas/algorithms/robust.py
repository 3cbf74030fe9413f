"""Byzantine-robust aggregation: rules that one member's update cannot steer.

FedAvg's mean moves arbitrarily far with a single update; the rules here
bound what ``f`` of ``n`` updates ``x_1 .. x_n`` (model deltas, flattened)
can do to the aggregate ``g``:

- :class:`CoordinateMedian` (Yin et al., "Byzantine-Robust Distributed
  Learning: Towards Optimal Statistical Rates", ICML 2018,
  arXiv:1803.01498): ``g_j = median_k x_{k,j}``, every coordinate on its own.
- :class:`TrimmedMean` (same paper): per coordinate, drop the ``b = floor(beta
  n)`` largest and ``b`` smallest values and average the rest,
  ``g_j = (1 / (n - 2b)) sum_{k=b+1}^{n-b} x_{(k),j}``; robust while
  ``beta`` is at least the Byzantine fraction (``beta < 1/2``).
- :class:`Krum` (Blanchard et al., "Machine Learning with Adversaries:
  Byzantine Tolerant Gradient Descent", NeurIPS 2017): the score of ``x_i``
  is ``s(i) = sum_{j in N_i} ||x_i - x_j||^2`` over its ``n - f - 2``
  nearest neighbours; Krum takes the update with the lowest score,
  Multi-Krum the mean of the ``m`` lowest. Needs ``n > 2f + 2``.
- :class:`NormBound` (Sun et al., "Can You Really Backdoor Federated
  Learning?", arXiv:1911.07963, 2019): ``x_k <- x_k / max(1, ||x_k|| / M)``.
- :class:`ExampleCap`: a member's claimed example count, the FedAvg weight,
  is capped at a multiple of the round's median claim.

Median and trimmed mean work coordinate by coordinate, so the caller feeds
them column blocks ``(n, b)`` of the stacked updates and never needs all of
them in memory at once; Krum needs the pairwise distances, which
:func:`gram_add` accumulates block by block. Pure numpy, float64, no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


class CoordinateMedian:
    """``g_j = median_k x_{k,j}`` (Yin et al. 2018); unweighted."""

    def combine(self, block: np.ndarray) -> np.ndarray:
        """``(n, b)`` rows of updates -> the ``b`` coordinates of the aggregate."""
        return np.median(block, axis=0)


class TrimmedMean:
    """Coordinate-wise ``beta``-trimmed mean (Yin et al. 2018); unweighted."""

    def __init__(self, beta: float) -> None:
        if not 0 <= beta < 0.5:
            raise ValueError("the trimmed mean needs 0 <= beta < 1/2")
        self.beta = beta

    def trimmed(self, n: int) -> int:
        """How many values are dropped at each end of ``n``: ``floor(beta * n)``."""
        return math.floor(self.beta * n)

    def combine(self, block: np.ndarray) -> np.ndarray:
        n = block.shape[0]
        b = self.trimmed(n)
        if b == 0:
            return block.mean(axis=0)
        kept = np.partition(block, (b, n - b - 1), axis=0)[b : n - b]
        return kept.mean(axis=0)


def gram_add(gram: np.ndarray, block: np.ndarray) -> None:
    """Add the block's inner products ``X X^T`` into ``gram`` (``(n, n)``, float64)."""
    gram += block @ block.T


def squared_distances(gram: np.ndarray) -> np.ndarray:
    """``||x_i - x_j||^2 = G_ii + G_jj - 2 G_ij`` from the Gram matrix (clipped at 0)."""
    diag = np.diag(gram)
    return np.maximum(diag[:, None] + diag[None, :] - 2.0 * gram, 0.0)


class Krum:
    """Krum (``m = 1``) and Multi-Krum (``m > 1``), Blanchard et al. 2017."""

    def __init__(self, f: int, m: int = 1) -> None:
        if f < 0 or m < 1:
            raise ValueError("Krum needs f >= 0 and m >= 1")
        self.f, self.m = f, m

    def minimum_members(self) -> int:
        """The smallest ``n`` with ``n > 2f + 2``."""
        return 2 * self.f + 3

    def scores(self, sq_dists: np.ndarray) -> np.ndarray:
        """``s(i)``: the sum of squared distances to the ``n - f - 2`` nearest others."""
        n = sq_dists.shape[0]
        if n < self.minimum_members():
            raise ValueError(f"Krum with f = {self.f} needs more than {2 * self.f + 2} updates")
        neighbours = n - self.f - 2
        others = np.where(np.eye(n, dtype=bool), np.inf, sq_dists)
        return np.sort(others, axis=1)[:, :neighbours].sum(axis=1)

    def select(self, sq_dists: np.ndarray) -> list[int]:
        """Indices of the ``m`` updates with the lowest scores (ties: the lower index)."""
        scores = self.scores(sq_dists)
        m = min(self.m, len(scores))
        return sorted(int(i) for i in np.argsort(scores, kind="stable")[:m])


class NormBound:
    """Clip each update to norm ``M`` (Sun et al. 2019): the factor ``min(1, M / ||x||)``."""

    def __init__(self, bound: float) -> None:
        if not bound > 0:
            raise ValueError("the norm bound must be positive")
        self.bound = bound

    @classmethod
    def relative(cls, norms: Sequence[float], factor: float) -> NormBound:
        """``M = factor * `` the lower median of ``norms`` (at least a tiny positive number).

        The lower median is one of the norms, and with two updates the
        smaller one, so one outlier can never raise its own bound.
        """
        ordered = sorted(norms)
        median = ordered[(len(ordered) - 1) // 2] if ordered else 0.0
        return cls(max(factor * median, 1e-12))

    def scale(self, norm: float) -> float:
        return 1.0 if norm <= self.bound else self.bound / norm


class ExampleCap:
    """Cap claimed example counts at ``ratio x`` the round's (lower) median claim.

    A member's FedAvg weight is its claimed count ``n_k``, which the
    coordinator cannot check. With the cap ``w_k = min(n_k, ratio * median_j
    n_j, ceiling)`` one member claiming 10^12 examples weighs at most
    ``ratio`` times a typical member; honest members whose data differ
    in size by less than ``ratio`` keep their exact FedAvg weights.
    """

    def __init__(self, ratio: float, ceiling: int | None = None) -> None:
        if not ratio >= 1:
            raise ValueError("the example cap ratio must be at least 1")
        self.ratio, self.ceiling = ratio, ceiling

    def weights(self, claims: Sequence[int]) -> list[float]:
        if not claims:
            return []
        ordered = sorted(claims)
        cap = self.ratio * ordered[(len(ordered) - 1) // 2]
        if self.ceiling is not None:
            cap = min(cap, self.ceiling)
        return [float(min(n, cap)) for n in claims]
