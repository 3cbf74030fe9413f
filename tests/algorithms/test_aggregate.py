"""Streaming FedAvg (WeightedSum) against the direct float64 computation."""

from __future__ import annotations

import numpy as np
import pytest

from fedaas.algorithms.aggregate import WeightedSum, fedavg
from fedaas.tensors import manifest_of


def _random_model(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """A few tensors of random rank (0-d included) and size."""
    model = {}
    for i in range(int(rng.integers(1, 5))):
        shape = tuple(int(d) for d in rng.integers(1, 9, size=int(rng.integers(0, 4))))
        model[f"layer{i}.weight"] = rng.normal(size=shape).astype(np.float32)
    return model


def _deltas(
    rng: np.random.Generator, model: dict[str, np.ndarray], count: int
) -> list[dict[str, np.ndarray]]:
    return [
        {name: rng.normal(scale=0.1, size=v.shape).astype(np.float32) for name, v in model.items()}
        for _ in range(count)
    ]


def _assert_close(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    assert set(got) == set(want)
    for name in want:
        assert got[name].shape == want[name].shape, name
        np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-6, err_msg=name)


@pytest.mark.parametrize("seed", range(5))
def test_fold_matches_direct_fedavg(seed: int) -> None:
    rng = np.random.default_rng(seed)
    model = _random_model(rng)
    deltas = _deltas(rng, model, int(rng.integers(1, 8)))
    weights = [float(w) for w in rng.integers(1, 1000, size=len(deltas))]

    acc = WeightedSum(manifest_of(model))
    for delta, weight in zip(deltas, weights, strict=True):
        acc.fold(delta, weight)

    assert acc.count == len(deltas)
    assert acc.total_weight == pytest.approx(sum(weights))
    mean = acc.mean()
    streamed = {name: model[name] + mean[name] for name in model}
    _assert_close(streamed, fedavg(model, deltas, weights))


@pytest.mark.parametrize("chunk", [1, 3, 7, 64, 10_000])
def test_chunks_at_offsets_equal_whole_fold(chunk: int) -> None:
    """Adding each tensor in pieces at flat offsets (as uploads are folded) is exact."""
    rng = np.random.default_rng(chunk)
    model = {"w": np.zeros((13, 7), np.float32), "b": np.zeros(7, np.float32)}
    deltas = _deltas(rng, model, 3)
    weights = [3.0, 1.0, 12.0]

    pieces = WeightedSum(manifest_of(model))
    whole = WeightedSum(manifest_of(model))
    for delta, weight in zip(deltas, weights, strict=True):
        for name, values in delta.items():
            flat = values.reshape(-1)
            # out of order, to show that the offset alone places each piece
            for offset in reversed(range(0, flat.size, chunk)):
                pieces.add_chunk(name, offset, flat[offset : offset + chunk], weight)
        pieces.commit(weight)
        whole.fold(delta, weight)

    assert pieces.count == whole.count == 3
    assert pieces.total_weight == whole.total_weight == 16.0
    for name, values in whole.mean().items():
        np.testing.assert_array_equal(pieces.mean()[name], values)
    _assert_close(
        {n: model[n] + v for n, v in pieces.mean().items()}, fedavg(model, deltas, weights)
    )


def test_single_update_mean_is_that_update() -> None:
    delta = {"w": np.array([[1.0, -2.0], [0.5, 4.0]], np.float32)}
    acc = WeightedSum(manifest_of(delta))
    acc.fold(delta, 10.0)
    np.testing.assert_allclose(acc.mean()["w"], delta["w"], rtol=1e-6)


def test_mean_keeps_the_sum_and_take_mean_consumes_it() -> None:
    rng = np.random.default_rng(7)
    model = _random_model(rng)
    deltas = _deltas(rng, model, 4)
    weights = [1.0, 2.0, 3.0, 4.0]
    acc = WeightedSum(manifest_of(model))
    for delta, weight in zip(deltas, weights, strict=True):
        acc.fold(delta, weight)

    first = acc.mean()
    second = acc.mean()  # mean() does not consume the sum
    for name in first:
        np.testing.assert_array_equal(first[name], second[name])

    taken = acc.take_mean()
    assert set(taken) == set(first)
    for name in first:
        assert taken[name].dtype == np.float32
        np.testing.assert_allclose(taken[name], first[name], rtol=1e-6, atol=1e-7)
    direct = fedavg(model, deltas, weights)
    _assert_close({n: model[n] + taken[n] for n in model}, direct)
    with pytest.raises(ValueError, match="no update"):
        acc.take_mean()  # consumed

    again = WeightedSum(manifest_of(model))
    for delta in deltas:
        again.fold(delta, 1.0)
    fixed = again.take_mean(denominator=8.0)  # DP-FedAvg: a fixed denominator, not the count
    for name in first:
        np.testing.assert_allclose(
            fixed[name], sum(d[name] for d in deltas) / 8.0, rtol=1e-5, atol=1e-6
        )


def test_empty_sum_has_no_mean() -> None:
    acc = WeightedSum({"w": (2, 2)})
    with pytest.raises(ValueError, match="no update"):
        acc.mean()
    with pytest.raises(ValueError, match="no update"):
        acc.take_mean()
    # chunks added without a commit are not a complete update
    acc.add_chunk("w", 0, np.ones(4, np.float32), 1.0)
    with pytest.raises(ValueError, match="no update"):
        acc.mean()


@pytest.mark.parametrize("weight", [0.0, -1.0])
def test_non_positive_weight_is_rejected(weight: float) -> None:
    acc = WeightedSum({"w": (2,)})
    with pytest.raises(ValueError, match="positive"):
        acc.fold({"w": np.ones(2, np.float32)}, weight)
    assert acc.count == 0 and acc.total_weight == 0.0


def test_fedavg_reference_by_hand() -> None:
    model = {"w": np.array([1.0, 1.0])}
    deltas = [{"w": np.array([1.0, 0.0])}, {"w": np.array([0.0, 4.0])}]
    got = fedavg(model, deltas, [3.0, 1.0])
    np.testing.assert_allclose(got["w"], [1.0 + 0.75, 1.0 + 1.0])
    assert got["w"].dtype == np.float64
