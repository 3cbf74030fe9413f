"""Streaming weighted averaging of model updates (FedAvg).

Federated averaging (McMahan et al., AISTATS 2017, arXiv:1602.05629) sets
``w_{t+1} = w_t + sum_k (n_k / sum_j n_j) * (w_k - w_t)`` over the members
that reported in round t. :class:`WeightedSum` computes the numerator
incrementally: each update is folded in as it arrives and can then be
dropped, so memory is one model's worth regardless of how many members
report.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from fedaas.tensors import Manifest


class WeightedSum:
    """Running ``sum_k w_k * delta_k`` and ``sum_k w_k`` over folded updates."""

    def __init__(self, manifest: Manifest) -> None:
        self._sums = {name: np.zeros(shape, dtype=np.float32) for name, shape in manifest.items()}
        self.total_weight = 0.0
        self.count = 0

    def add_chunk(self, name: str, offset: int, values: np.ndarray, weight: float) -> None:
        """Add ``weight * values`` into tensor ``name`` at flat position ``offset``."""
        flat = self._sums[name].reshape(-1)
        if offset < 0 or offset + values.size > flat.size:
            raise ValueError(f"chunk [{offset}, {offset + values.size}) outside tensor {name!r}")
        target = flat[offset : offset + values.size]
        target += np.float32(weight) * values

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
        """The weighted mean of the folded updates (a new dict; the sum is kept)."""
        if self.count == 0:
            raise ValueError("no update has been folded")
        scale = np.float32(1.0 / self.total_weight)
        return {name: total * scale for name, total in self._sums.items()}

    def take_mean(self, denominator: float | None = None) -> dict[str, np.ndarray]:
        """The mean, computed in the sum's own buffers (the sum is consumed).

        Avoids a second model-sized allocation when the coordinator turns the
        sum into the new global model; the server optimizer
        (:mod:`fedaas.algorithms.server_optimizers`) owns any learning rate.
        ``denominator`` replaces the total weight, as DP-FedAvg divides by the
        expected number of members.
        """
        if self.count == 0:
            raise ValueError("no update has been folded")
        scale = np.float32(1.0 / (denominator or self.total_weight))
        sums, self._sums = self._sums, {}
        self.count, self.total_weight = 0, 0.0
        for total in sums.values():
            total *= scale
        return sums


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
