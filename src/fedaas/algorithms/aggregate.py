"""Streaming weighted averaging of model updates (FedAvg).

Federated averaging (McMahan et al., AISTATS 2017, arXiv:1602.05629) sets
``w_{t+1} = w_t + sum_k (n_k / sum_j n_j) * (w_k - w_t)`` over the members
that reported in round t. :class:`WeightedSum` computes the numerator
incrementally: each update is folded in and can then be dropped, so
memory is one model's worth (in float64) regardless of how many members
report. The sum is float64: a float32 sum of 10^12-weighted values of 1e30
overflows to Inf, a float64 one does not, and a weighted mean (a convex
combination) of finite float32 values is again a finite float32 value.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from fedaas.tensors import Manifest


class WeightedSum:
    """Running ``sum_k w_k * delta_k`` (float64) and ``sum_k w_k`` over folded updates."""

    def __init__(self, manifest: Manifest) -> None:
        self._sums = {name: np.zeros(shape, dtype=np.float64) for name, shape in manifest.items()}
        self.total_weight = 0.0
        self.count = 0

    def add_chunk(self, name: str, offset: int, values: np.ndarray, weight: float) -> None:
        """Add ``weight * values`` into tensor ``name`` at flat position ``offset``."""
        flat = self._sums[name].reshape(-1)
        if offset < 0 or offset + values.size > flat.size:
            raise ValueError(f"chunk [{offset}, {offset + values.size}) outside tensor {name!r}")
        target = flat[offset : offset + values.size]
        target += float(weight) * np.asarray(values, dtype=np.float64)

    def commit(self, weight: float) -> None:
        """Record that one complete update of this weight has been added."""
        self.total_weight += weight
        self.count += 1

    def fold(self, update: Mapping[str, np.ndarray], weight: float) -> None:
        """Add one whole update (all tensors) with the given weight."""
        if weight <= 0:
            raise ValueError("update weight must be positive")
        for name, values in update.items():
            self.add_chunk(name, 0, np.asarray(values, dtype=np.float32).reshape(-1), weight)
        self.commit(weight)

    def mean(self) -> dict[str, np.ndarray]:
        """The weighted mean of the folded updates as float32 (a new dict; the sum is kept)."""
        if self.count == 0:
            raise ValueError("no update has been folded")
        scale = 1.0 / self.total_weight
        return {name: (total * scale).astype(np.float32) for name, total in self._sums.items()}

    def take_mean(self, denominator: float | None = None) -> dict[str, np.ndarray]:
        """The mean as float32, tensor by tensor (the sum is consumed).

        Each float64 sum is freed as soon as its float32 mean exists, so the
        peak stays near the float64 sum's size; the server optimizer
        (:mod:`fedaas.algorithms.server_optimizers`) owns any learning rate.
        ``denominator`` replaces the total weight, as DP-FedAvg divides by the
        expected number of members.
        """
        if self.count == 0:
            raise ValueError("no update has been folded")
        scale = 1.0 / (denominator or self.total_weight)
        sums, self._sums = self._sums, {}
        self.count, self.total_weight = 0, 0.0
        means = {}
        for name in list(sums):
            total = sums.pop(name)
            total *= scale
            with np.errstate(over="ignore"):  # the caller checks that the model is finite
                means[name] = total.astype(np.float32)
            del total
        return means


def fedavg(
    global_model: Mapping[str, np.ndarray],
    deltas: list[Mapping[str, np.ndarray]],
    weights: list[float],
) -> dict[str, np.ndarray]:
    """Direct (non-streaming) FedAvg, for reference and tests."""
    total = float(sum(weights))
    return {
        name: np.asarray(value, dtype=np.float64)
        + sum(
            w * np.asarray(d[name], dtype=np.float64) for d, w in zip(deltas, weights, strict=True)
        )
        / total
        for name, value in global_model.items()
    }
