"""Dirichlet label-skew partitioning and the built-in digits split."""

from __future__ import annotations

import numpy as np
import pytest

from fedaas.data.digits import CLASSES, FEATURES, digits_federation, digits_split
from fedaas.data.partition import dirichlet_per_class


def _labels(n: int = 1000, classes: int = 10, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, classes, size=n)


def _mean_label_entropy(labels: np.ndarray, parts: list[np.ndarray], classes: int) -> float:
    """Mean Shannon entropy (nats) of each client's label distribution."""
    entropies = []
    for part in parts:
        p = np.bincount(labels[part], minlength=classes) / part.size
        p = p[p > 0]
        entropies.append(float(-(p * np.log(p)).sum()))
    return float(np.mean(entropies))


@pytest.mark.parametrize(("clients", "alpha"), [(1, 0.5), (2, 0.1), (10, 0.5), (25, 100.0)])
def test_every_index_exactly_once(clients: int, alpha: float) -> None:
    labels = _labels()
    parts = dirichlet_per_class(labels, clients, alpha, seed=3)
    assert len(parts) == clients
    joined = np.concatenate(parts)
    assert joined.size == labels.size
    np.testing.assert_array_equal(np.sort(joined), np.arange(labels.size))
    for part in parts:
        assert part.dtype.kind == "i"
        assert (np.diff(part) > 0).all()  # sorted, no repeats


def test_deterministic_per_seed_and_seeds_differ() -> None:
    labels = _labels()
    a = dirichlet_per_class(labels, 8, 0.5, seed=11)
    b = dirichlet_per_class(labels, 8, 0.5, seed=11)
    c = dirichlet_per_class(labels, 8, 0.5, seed=12)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c, strict=True))


@pytest.mark.parametrize("min_size", [1, 10, 40])
def test_min_size_respected(min_size: int) -> None:
    labels = _labels(n=600)
    parts = dirichlet_per_class(labels, 10, 0.3, seed=5, min_size=min_size)
    assert min(p.size for p in parts) >= min_size


def test_min_size_lowered_when_data_is_too_small() -> None:
    labels = _labels(n=30, classes=3)
    parts = dirichlet_per_class(labels, 5, 100.0, seed=0, min_size=10)  # at most 6 each
    assert sum(p.size for p in parts) == 30
    assert min(p.size for p in parts) >= 1


def test_smaller_alpha_means_more_label_skew() -> None:
    labels = _labels(n=5000)
    entropy = {
        alpha: np.mean(
            [
                _mean_label_entropy(labels, dirichlet_per_class(labels, 10, alpha, seed=s), 10)
                for s in range(3)
            ]
        )
        for alpha in (0.05, 0.5, 100.0)
    }
    assert entropy[0.05] < entropy[0.5] < entropy[100.0]
    assert entropy[100.0] > 0.95 * np.log(10)  # nearly IID
    assert entropy[0.05] < 0.5 * np.log(10)  # a few classes per client


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"clients": 0}, "clients must be at least 1"),
        ({"clients": -3}, "clients must be at least 1"),
        ({"alpha": 0.0}, "alpha must be positive"),
        ({"alpha": -1.0}, "alpha must be positive"),
        ({"clients": 101}, "cannot split 100 examples across 101 clients"),
    ],
)
def test_bad_arguments(kwargs: dict, message: str) -> None:
    args = {"labels": _labels(n=100), "clients": 4, "alpha": 0.5, "seed": 0} | kwargs
    with pytest.raises(ValueError, match=message):
        dirichlet_per_class(**args)


def test_impossible_min_size_gives_up_with_a_reason() -> None:
    labels = _labels(n=100)
    with pytest.raises(ValueError, match=r"raise alpha or lower clients"):
        dirichlet_per_class(labels, 10, 0.001, seed=0, min_size=10, max_tries=5)


def test_digits_split_shapes_and_ranges() -> None:
    x_train, y_train, x_test, y_test = digits_split()
    assert x_train.shape == (1437, FEATURES) and y_train.shape == (1437,)
    assert x_test.shape == (360, FEATURES) and y_test.shape == (360,)
    assert x_train.dtype == np.float32 and y_train.dtype == np.int64
    for x in (x_train, x_test):
        assert x.min() >= 0.0 and x.max() <= 1.0
        assert x.max() == 1.0
    # stratified: every class's share of the test split is within one example of 20 %
    train_counts = np.bincount(y_train, minlength=CLASSES)
    test_counts = np.bincount(y_test, minlength=CLASSES)
    totals = train_counts + test_counts
    assert (np.abs(test_counts - 0.2 * totals) <= 1).all()
    # the split is fixed
    again = digits_split()
    np.testing.assert_array_equal(again[1], y_train)
    np.testing.assert_array_equal(again[3], y_test)


def test_digits_federation_covers_the_training_split() -> None:
    members, (x_test, y_test) = digits_federation(clients=5, alpha=0.5, seed=2)
    assert len(members) == 5
    assert sum(y.size for _, y in members) == 1437
    assert x_test.shape == (360, FEATURES) and y_test.shape == (360,)
    x_train, y_train, _, _ = digits_split()
    all_x = np.concatenate([x for x, _ in members])
    all_y = np.concatenate([y for _, y in members])
    # the same examples, redistributed
    assert np.bincount(all_y, minlength=CLASSES).tolist() == np.bincount(y_train).tolist()
    order = np.lexsort(all_x.T)
    reference = np.lexsort(x_train.T)
    np.testing.assert_array_equal(all_x[order], x_train[reference])
    for x, y in members:
        assert x.shape == (y.size, FEATURES) and y.size >= 10
