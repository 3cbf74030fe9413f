"""The screened mean against a direct float64 computation and hand-built attacks."""

from __future__ import annotations

import numpy as np
import pytest

from fedaas.algorithms.robust import gram_add
from fedaas.algorithms.screening import OUTLIER, ScreenedMean


def _reference(x: np.ndarray, w: np.ndarray, f: int) -> tuple[list[int], np.ndarray]:
    """The module docstring's formulas, computed on the updates themselves (no Gram matrix)."""
    n = len(x)
    d2 = np.array([[float(np.sum((x[i] - x[j]) ** 2)) for j in range(n)] for i in range(n)])
    scores = np.array([np.sort(np.delete(d2[i], i))[: n - f - 2].sum() for i in range(n)])
    limit = OUTLIER * np.median(scores)
    far = [i for i in np.argsort(-scores, kind="stable") if scores[i] > limit][:f]
    rest = [i for i in range(n) if i not in far]
    norms = np.linalg.norm(x, axis=1)
    m = sorted(norms[rest])[(len(rest) - 1) // 2]
    centre = sum(w[k] * min(1.0, m / norms[k]) * x[k] for k in rest)
    cos = {i: float(x[i] @ centre / (norms[i] * np.linalg.norm(centre))) for i in rest}
    drop = sorted(rest, key=lambda i: (cos[i], i))[: f - len(far)]
    kept = sorted(set(rest) - set(drop))
    return kept, sum(w[k] * x[k] for k in kept) / w[kept].sum()


def _gram_blockwise(x: np.ndarray, block: int) -> np.ndarray:
    gram = np.zeros((len(x), len(x)))
    for start in range(0, x.shape[1], block):
        gram_add(gram, x[:, start : start + block].copy())
    return gram


@pytest.mark.parametrize(("n", "f", "seed"), [(5, 1, 0), (9, 2, 1), (10, 2, 2), (13, 3, 3)])
def test_screen_equals_the_direct_formula(n: int, f: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 41)) * rng.uniform(0.5, 2, size=(n, 1))
    x[0] *= 50  # one far update: rejected by distance
    w = rng.integers(10, 300, size=n).astype(np.float64)
    screened = ScreenedMean(f).screen(_gram_blockwise(x, 6), list(w))
    kept, want = _reference(x, w, f)
    assert screened.kept == kept
    assert 0 in screened.by_distance
    assert len(screened.by_distance) + len(screened.by_direction) == f
    np.testing.assert_allclose(screened.coefficients(list(w)) @ x, want, rtol=1e-12)


def _honest(rng: np.random.Generator, n: int, d: int = 60) -> np.ndarray:
    """Non-IID honest updates: a shared direction plus a large member-specific part."""
    shared = rng.normal(size=d)
    return np.stack([0.6 * shared + rng.normal(size=d) for _ in range(n)])


def test_label_flip_like_updates_are_rejected_by_direction() -> None:
    rng = np.random.default_rng(5)
    honest = _honest(rng, 8)
    # trained on flipped labels: a member-like update pointing against the shared direction
    flipped = np.stack([-1.2 * honest.mean(axis=0) + rng.normal(size=60) for _ in range(2)])
    x = np.vstack([honest, flipped])
    screened = ScreenedMean(2).screen(x @ x.T, [100.0] * 10)
    assert screened.by_direction == [8, 9]
    assert screened.by_distance == []
    assert screened.kept == list(range(8))


@pytest.mark.parametrize("scale", [10.0, 1e4])
def test_colluding_large_updates_are_rejected_by_distance(scale: float) -> None:
    rng = np.random.default_rng(7)
    honest = _honest(rng, 8)
    norm = float(np.median(np.linalg.norm(honest, axis=1)))
    same = -scale * norm * honest.mean(axis=0) / np.linalg.norm(honest.mean(axis=0))
    x = np.vstack([honest, same, same])  # two attackers send the same vector
    screened = ScreenedMean(2).screen(x @ x.T, [1.0] * 8 + [1e6, 1e6])
    assert screened.by_distance == [8, 9]
    assert screened.kept == list(range(8))


def test_no_attacker_still_drops_f_and_f_zero_keeps_all() -> None:
    x = _honest(np.random.default_rng(9), 7)
    assert len(ScreenedMean(2).screen(x @ x.T, [1.0] * 7).kept) == 5
    assert ScreenedMean(0).screen(x @ x.T, [1.0] * 7).kept == list(range(7))


def test_zero_update_and_bad_input() -> None:
    x = _honest(np.random.default_rng(11), 6)
    x[3] = 0.0  # carries no direction: cosine 0, never NaN
    cos = ScreenedMean.cosines(x @ x.T, [1.0] * 6, list(range(6)))
    assert np.isfinite(cos).all() and cos[3] == 0.0
    with pytest.raises(ValueError, match="more than 4 updates"):
        ScreenedMean(1).screen(x[:4] @ x[:4].T, [1.0] * 4)
    with pytest.raises(ValueError, match="positive weight"):
        ScreenedMean(1).screen(x @ x.T, [1.0] * 5 + [0.0])
    with pytest.raises(ValueError, match="f >= 0"):
        ScreenedMean(-1)
