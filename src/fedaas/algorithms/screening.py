"""Screened mean: drop ``f`` suspected Byzantine updates, then FedAvg of the rest.

Under non-IID data, honest updates point in very different directions (on
the demo's Dirichlet-0.5 split their pairwise cosines range from -0.3 to
0.7), so an attacker that trains honestly on flipped labels is *not* far
from the others in distance: Krum and Multi-Krum keep it and drop honest
members instead, and the coordinate-wise median and trimmed mean are pulled
off by the honest spread itself. What gives it away is its direction
relative to the federation as a whole: its cosine to the (robust) mean
update is the lowest, round after round. Magnitude attacks (a scaled or
noise update, several attackers sending the same vector) are the opposite:
far in distance, but able to steer any mean-based centre. So the screen
spends its budget of ``f`` rejections in two steps, over the updates
``x_1 .. x_n`` with FedAvg weights ``w_k``:

1. **distance** (Krum scores, Blanchard et al., "Machine Learning with
   Adversaries: Byzantine Tolerant Gradient Descent", NeurIPS 2017):
   ``s(i) = sum_{j in N_i} ||x_i - x_j||^2`` over the ``n - f - 2`` nearest
   neighbours; ``x_i`` is rejected when ``s(i) > kappa * median_k s(k)``
   (:data:`OUTLIER`, ``kappa = 4``; at most ``f``, highest score first).
   An update more than about 3x the typical norm, or a colluding group far
   from the honest ones, scores well above that.
2. **direction** (the cosine trust of FLTrust, Cao et al., "FLTrust:
   Byzantine-robust Federated Learning via Trust Bootstrapping", NDSS 2021,
   with the coordinator's robust centre in place of root data): the centre
   is ``c = sum_{k kept} w_k min(1, M / ||x_k||) x_k`` over the updates kept
   by step 1, each clipped to the round's lower median norm ``M`` so no
   update weighs more than a typical one; the remaining ``f - r_1``
   rejections go to the lowest ``cos(x_i, c) = <x_i, c> / (||x_i|| ||c||)``.

The aggregate is the FedAvg mean of what is left,
``g = sum_{k in S} w_k x_k / sum_{k in S} w_k`` (the caller applies its
norm bounding first). Everything above needs only the Gram matrix
``G = X X^T``: ``||x_i - x_j||^2 = G_ii + G_jj - 2 G_ij`` and
``<x_i, c> = (G a)_i``, ``||c||^2 = a^T G a`` with ``a_k`` the centre's
coefficients; the caller accumulates ``G`` block by block
(:func:`fedaas.algorithms.robust.gram_add`), so memory stays O(n^2 + model).

The price: every round drops ``f`` updates even when nobody attacks, which
costs a non-IID federation some accuracy (measured in
``bench/bench_byzantine.py``). Pure numpy, float64, no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from fedaas.algorithms.robust import Krum, squared_distances

OUTLIER = 4.0
"""Step 1 rejects an update whose Krum score exceeds this many times the median score."""


@dataclass(frozen=True)
class Screened:
    """Which rows were kept, which were rejected by distance and by direction."""

    kept: list[int]
    by_distance: list[int]
    by_direction: list[int]

    def coefficients(self, weights: Sequence[float]) -> np.ndarray:
        """``w_k / sum_{j in S} w_j`` for the kept rows, 0 for the rejected ones."""
        coef = np.zeros(len(weights))
        kept = np.asarray(self.kept, dtype=int)
        total = float(sum(weights[i] for i in self.kept))
        coef[kept] = np.asarray([weights[i] for i in self.kept]) / total
        return coef


class ScreenedMean:
    """Reject ``f`` of ``n`` updates by Krum score, then by cosine to the centre (see module)."""

    def __init__(self, f: int, outlier: float = OUTLIER) -> None:
        if f < 0 or not outlier > 1:
            raise ValueError("the screen needs f >= 0 and an outlier factor above 1")
        self.f, self.outlier = f, outlier

    def minimum_members(self) -> int:
        """Krum's scores need ``n > 2f + 2``."""
        return 2 * self.f + 3

    def screen(self, gram: np.ndarray, weights: Sequence[float]) -> Screened:
        """The rows to keep, from the Gram matrix of the (bounded) updates and their weights."""
        n = gram.shape[0]
        if n < self.minimum_members():
            raise ValueError(
                f"the screen with f = {self.f} needs more than {2 * self.f + 2} updates"
            )
        if len(weights) != n or any(not w > 0 for w in weights):
            raise ValueError("one positive weight per update is needed")
        if self.f == 0:
            return Screened(list(range(n)), [], [])
        scores = Krum(self.f).scores(squared_distances(gram))
        limit = self.outlier * float(np.median(scores))
        ranked = [int(i) for i in np.argsort(-scores, kind="stable")]
        by_distance = [i for i in ranked if scores[i] > limit][: self.f]
        rest = [i for i in range(n) if i not in by_distance]
        cosines = self.cosines(gram, weights, rest)
        order = sorted(rest, key=lambda i: (cosines[i], i))
        by_direction = order[: self.f - len(by_distance)]
        kept = sorted(set(rest) - set(by_direction))
        return Screened(kept, sorted(by_distance), sorted(by_direction))

    @staticmethod
    def cosines(gram: np.ndarray, weights: Sequence[float], rows: list[int]) -> np.ndarray:
        """``cos(x_i, c)`` for every row, ``c`` the clipped weighted centre of ``rows``.

        A zero update (or a zero centre) has cosine 0: it carries no direction.
        """
        norms = np.sqrt(np.maximum(np.diag(gram), 0.0))
        ordered = sorted(float(norms[i]) for i in rows)
        median = ordered[(len(ordered) - 1) // 2]
        a = np.zeros(gram.shape[0])
        for i in rows:
            a[i] = weights[i] * (min(1.0, median / norms[i]) if norms[i] > 0 else 0.0)
        ga = gram @ a
        centre = float(np.sqrt(max(float(a @ ga), 0.0)))
        denominator = norms * centre
        safe = np.where(denominator > 0, denominator, 1.0)
        return np.where(denominator > 0, ga / safe, 0.0)
