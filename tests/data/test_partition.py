"""Dirichlet label-skew partitioning (with its minimum-size repair) and the digits split."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

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
        ({"alpha": float("nan")}, "alpha must be positive"),
        ({"min_size": -1}, "min_size must be at least 0"),
        ({"max_tries": 0}, "max_tries must be at least 1"),
        ({"labels": np.zeros((10, 2))}, "labels must be one-dimensional"),
    ],
)
def test_bad_arguments(kwargs: dict, message: str) -> None:
    args = {"labels": _labels(n=100), "clients": 4, "alpha": 0.5, "seed": 0} | kwargs
    with pytest.raises(ValueError, match=message):
        dirichlet_per_class(**args)


def test_unreachable_minimum_is_repaired_not_refused() -> None:
    # the plain retry rule gives up here: every draw leaves some members short
    labels = _labels(n=100)
    parts = dirichlet_per_class(labels, 10, 0.001, seed=0, min_size=10, max_tries=5)
    assert [p.size for p in parts] == [10] * 10
    np.testing.assert_array_equal(np.sort(np.concatenate(parts)), np.arange(100))


def test_a_draw_that_passes_is_returned_unrepaired() -> None:
    # with a reachable minimum, the first passing draw is the split, whatever max_tries allows
    labels = _labels(n=2000)
    a = dirichlet_per_class(labels, 5, 1.0, seed=4, min_size=10, max_tries=1)
    b = dirichlet_per_class(labels, 5, 1.0, seed=4, min_size=10, max_tries=1000)
    assert min(p.size for p in a) >= 10
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


def test_repair_tops_up_from_the_largest_and_keeps_receivers_skewed() -> None:
    labels = _labels(n=3000)
    raw = dirichlet_per_class(labels, 100, 0.05, seed=1, min_size=0, max_tries=1)
    fixed = dirichlet_per_class(labels, 100, 0.05, seed=1, min_size=20, max_tries=1)
    assert min(p.size for p in raw) < 20 <= min(p.size for p in fixed)
    raw_sizes = np.array([p.size for p in raw])
    fixed_sizes = np.array([p.size for p in fixed])
    gained = fixed_sizes > raw_sizes
    assert (raw_sizes[gained] < 20).all() and (fixed_sizes[gained] == 20).all()
    # donors are the large members: nobody who was at or under 2x the minimum gave anything
    assert (fixed_sizes[raw_sizes <= 40] >= raw_sizes[raw_sizes <= 40]).all()
    # members that were short received a few classes, not an IID sample
    entropies = [
        _mean_label_entropy(labels, [p], 10) for p, g in zip(fixed, gained, strict=True) if g
    ]
    assert np.mean(entropies) < 0.5 * np.log(10)


def test_a_hundred_member_digits_split_exists() -> None:
    members, _ = digits_federation(clients=100, alpha=0.5, seed=0)
    assert len(members) == 100
    assert sum(y.size for _, y in members) == 1437
    assert min(y.size for _, y in members) >= 10


@pytest.mark.parametrize("clients", [100, 1000])
def test_label_skew_still_follows_alpha_with_many_members(clients: int) -> None:
    labels = _labels(n=20 * clients)
    entropy = [
        _mean_label_entropy(labels, dirichlet_per_class(labels, clients, alpha, 0, 10, 3), 10)
        for alpha in (0.05, 0.5, 5.0, 100.0)
    ]
    assert entropy == sorted(entropy) and entropy[0] < entropy[-1] - 0.5


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    clients=st.integers(2, 1000),
    per_member=st.integers(1, 30),
    classes=st.integers(2, 20),
    alpha=st.sampled_from([0.01, 0.1, 0.5, 1.0, 10.0, 1000.0]),
    min_size=st.integers(0, 30),
    seed=st.integers(0, 2**32 - 1),
    max_tries=st.integers(1, 3),
)
def test_any_member_count_gets_a_valid_split(
    clients: int,
    per_member: int,
    classes: int,
    alpha: float,
    min_size: int,
    seed: int,
    max_tries: int,
) -> None:
    n = clients * per_member + seed % clients
    labels = np.random.default_rng(seed).integers(0, classes, size=n)
    parts = dirichlet_per_class(labels, clients, alpha, seed, min_size, max_tries)
    assert len(parts) == clients
    np.testing.assert_array_equal(np.sort(np.concatenate(parts)), np.arange(n))
    floor = min_size if min_size <= n // clients else max(1, n // (2 * clients))
    assert min(p.size for p in parts) >= floor
    again = dirichlet_per_class(labels, clients, alpha, seed, min_size, max_tries)
    assert all(np.array_equal(x, y) for x, y in zip(parts, again, strict=True))


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
