"""Robust aggregation rules against direct float64 computations and hand-worked cases."""

from __future__ import annotations

import numpy as np
import pytest

from fedaas.algorithms.robust import (
    CoordinateMedian,
    ExampleCap,
    Krum,
    NormBound,
    TrimmedMean,
    gram_add,
    squared_distances,
)


def _updates(seed: int, n: int = 9, d: int = 37) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, d))


def _blockwise(rule, rows: np.ndarray, block: int) -> np.ndarray:
    """Apply a coordinate-wise rule column block by column block, as the coordinator does."""
    out = np.empty(rows.shape[1])
    for start in range(0, rows.shape[1], block):
        out[start : start + block] = rule.combine(rows[:, start : start + block].copy())
    return out


@pytest.mark.parametrize("block", [1, 5, 37, 1000])
@pytest.mark.parametrize("n", [1, 2, 5, 10])
def test_median_blockwise_equals_numpy_median(block: int, n: int) -> None:
    rows = _updates(n, n=n)
    np.testing.assert_array_equal(
        _blockwise(CoordinateMedian(), rows, block), np.median(rows, axis=0)
    )


def test_median_by_hand_ignores_one_huge_value() -> None:
    rows = np.array([[1.0, -1.0], [2.0, 5.0], [1e30, -1e30]])
    np.testing.assert_array_equal(CoordinateMedian().combine(rows), [2.0, -1.0])


@pytest.mark.parametrize("beta", [0.0, 0.1, 0.2, 0.3, 0.49])
@pytest.mark.parametrize("n", [1, 3, 10, 11])
def test_trimmed_mean_equals_sort_and_slice(beta: float, n: int) -> None:
    rows = _updates(n + 100, n=n)
    b = int(np.floor(beta * n))
    want = np.sort(rows, axis=0)[b : n - b].mean(axis=0)
    np.testing.assert_allclose(_blockwise(TrimmedMean(beta), rows, 7), want, rtol=1e-12)


def test_trimmed_mean_by_hand() -> None:
    rows = np.array([[0.0], [1.0], [2.0], [3.0], [1000.0]])
    assert TrimmedMean(0.2).trimmed(5) == 1
    np.testing.assert_allclose(TrimmedMean(0.2).combine(rows), [2.0])  # mean of 1, 2, 3
    with pytest.raises(ValueError, match="beta"):
        TrimmedMean(0.5)


def _krum_direct(rows: np.ndarray, f: int, m: int) -> list[int]:
    n = len(rows)
    scores = []
    for i in range(n):
        d = sorted(float(np.sum((rows[i] - rows[j]) ** 2)) for j in range(n) if j != i)
        scores.append(sum(d[: n - f - 2]))
    return sorted(int(i) for i in np.argsort(scores, kind="stable")[:m])


@pytest.mark.parametrize(("n", "f", "m"), [(5, 1, 1), (7, 2, 1), (10, 2, 4), (10, 3, 1)])
def test_krum_blockwise_gram_equals_direct_scores(n: int, f: int, m: int) -> None:
    rows = _updates(n * 10 + f, n=n)
    gram = np.zeros((n, n))
    for start in range(0, rows.shape[1], 6):
        gram_add(gram, rows[:, start : start + 6])
    dists = squared_distances(gram)
    direct = np.array([[np.sum((a - b) ** 2) for b in rows] for a in rows])
    np.testing.assert_allclose(dists, direct, rtol=1e-10, atol=1e-10)
    assert Krum(f, m).select(dists) == _krum_direct(rows, f, m)


def test_krum_leaves_out_the_outliers() -> None:
    honest = np.random.default_rng(0).normal(scale=0.1, size=(8, 20))
    attack = np.vstack([honest, -50.0 * np.ones((2, 20))])
    gram = np.zeros((10, 10))
    gram_add(gram, attack)
    chosen = Krum(2, 4).select(squared_distances(gram))
    assert len(chosen) == 4 and max(chosen) < 8
    with pytest.raises(ValueError, match="more than 6"):
        Krum(2).select(squared_distances(gram[:6, :6]))
    assert Krum(2).minimum_members() == 7


def test_norm_bound_scales_to_the_bound() -> None:
    bound = NormBound(2.0)
    assert bound.scale(1.0) == 1.0 and bound.scale(2.0) == 1.0
    assert bound.scale(8.0) == pytest.approx(0.25)
    x = np.array([3.0, 4.0])  # norm 5
    np.testing.assert_allclose(np.linalg.norm(x * NormBound(1.0).scale(5.0)), 1.0)
    relative = NormBound.relative([1.0, 3.0, 1e30], factor=10)
    assert relative.bound == 30.0  # the lower median is 3, never the outlier
    assert NormBound.relative([2.0, 1e30], factor=10).bound == 20.0
    with pytest.raises(ValueError):
        NormBound(0.0)


def test_example_cap() -> None:
    cap = ExampleCap(3.0)
    assert cap.weights([100, 120, 10**12]) == [100.0, 120.0, 360.0]
    assert cap.weights([10, 10**12]) == [10.0, 30.0]  # lower median: the honest claim
    assert cap.weights([50]) == [50.0]
    assert ExampleCap(3.0, ceiling=100).weights([80, 200, 300]) == [80.0, 100.0, 100.0]
    assert cap.weights([]) == []
