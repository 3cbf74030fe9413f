"""The schema check every member runs before training, and in-memory datasets."""

from __future__ import annotations

import numpy as np
import pytest

from fedaas.data.dataset import ArrayDataset, DataError, schema_problems
from fedaas.spec import DataSection

SCHEMA = DataSection(features=4, classes=3)


def _good(n: int = 10) -> tuple[np.ndarray, np.ndarray]:
    x = np.arange(n * 4, dtype=np.float64).reshape(n, 4)
    y = np.arange(n) % 3
    return x, y


def test_good_data_has_no_problems() -> None:
    x, y = _good()
    assert schema_problems(x, y, SCHEMA) == []
    data = ArrayDataset.checked(x, y, SCHEMA)
    assert data.x.dtype == np.float32 and data.y.dtype == np.int64
    assert data.num_examples == 10


def test_integral_float_labels_are_accepted() -> None:
    x, y = _good()
    assert schema_problems(x, y.astype(np.float64), SCHEMA) == []
    assert ArrayDataset.checked(x, y.astype(np.float32), SCHEMA).y.dtype == np.int64


def test_every_mismatch_is_reported_at_once() -> None:
    x = np.zeros((5, 6))
    x[2, 3] = np.nan
    y = np.array([0, 1, 2, 7, 1, 0])
    problems = schema_problems(x, y, SCHEMA)
    assert problems == [
        "data has 6 features, the job expects 4",
        "5 feature rows but 6 labels",
        "features hold NaN or Inf",
        "label 7 is out of range: the job has classes 0..2",
    ]
    with pytest.raises(DataError) as info:
        ArrayDataset.checked(x, y, SCHEMA)
    assert info.value.problems == problems
    assert str(info.value) == "; ".join(problems)


@pytest.mark.parametrize(
    ("x", "y", "expected"),
    [
        (np.zeros((3, 5)), np.zeros(3, int), "data has 5 features, the job expects 4"),
        (
            np.zeros((3, 4)),
            np.array([0, 1, 3]),
            "label 3 is out of range: the job has classes 0..2",
        ),
        (np.zeros((3, 4)), np.array([0, -1, 2]), "label -1 is out of range"),
        (np.zeros((3, 4)), np.array([0.5, 1.0, 2.0]), "labels must be integers, got dtype float64"),
        (np.zeros((3, 4)), np.array(["a", "b", "c"]), "labels must be integers, got dtype <U1"),
        (np.zeros((3, 4)), np.array([0.0, np.nan, 1.0]), "labels must be integers"),
        (np.full((3, 4), np.inf), np.zeros(3, int), "features hold NaN or Inf"),
        (np.zeros((3, 4)), np.zeros(4, int), "3 feature rows but 4 labels"),
        (np.zeros((0, 4)), np.zeros(0, int), "the dataset is empty"),
        (
            np.zeros(4),
            np.zeros(4, int),
            "features must be a 2-D array (examples x features), got 1-D",
        ),
        (np.zeros((3, 4)), np.zeros((3, 1), int), "labels must be a 1-D array, got 2-D"),
        (
            np.array([["a"] * 4] * 3),
            np.zeros(3, int),
            "features must be real numbers, got dtype <U1",
        ),
        (np.zeros((3, 4), complex), np.zeros(3, int), "features must be real numbers"),
    ],
)
def test_each_mismatch(x: np.ndarray, y: np.ndarray, expected: str) -> None:
    problems = schema_problems(x, y, SCHEMA)
    assert any(p.startswith(expected) for p in problems), problems


def test_non_integer_labels_and_other_problems_together() -> None:
    problems = schema_problems(np.zeros((2, 9)), np.array([0.5, 9.5]), SCHEMA)
    assert problems == [
        "data has 9 features, the job expects 4",
        "labels must be integers, got dtype float64",
    ]


def test_split_is_a_deterministic_partition() -> None:
    x, y = _good(50)
    data = ArrayDataset(x.astype(np.float32), y)
    train, val = data.split(0.2, seed=1)
    assert val is not None
    assert (train.num_examples, val.num_examples) == (40, 10)
    rows = np.concatenate([train.x[:, 0], val.x[:, 0]]) / 4  # first column identifies the row
    np.testing.assert_array_equal(np.sort(rows), np.arange(50))
    np.testing.assert_array_equal(train.y, (train.x[:, 0] / 4).astype(int) % 3)  # pairs kept
    again_train, again_val = data.split(0.2, seed=1)
    np.testing.assert_array_equal(again_train.x, train.x)
    assert again_val is not None
    np.testing.assert_array_equal(again_val.x, val.x)
    _, other = data.split(0.2, seed=2)
    assert other is not None and not np.array_equal(other.x, val.x)


def test_split_edge_cases() -> None:
    x, y = _good(10)
    data = ArrayDataset(x.astype(np.float32), y)
    kept, none = data.split(0.0, seed=0)
    assert kept is data and none is None
    train, val = data.split(0.01, seed=0)  # at least one example is held out
    assert val is not None and val.num_examples == 1 and train.num_examples == 9
    one = ArrayDataset(x[:1].astype(np.float32), y[:1])
    kept, none = one.split(0.5, seed=0)
    assert kept is one and none is None


def test_batches_in_fixed_order() -> None:
    x, y = _good(10)
    data = ArrayDataset(x.astype(np.float32), y)
    batches = list(data.batches(4))
    assert [b[0].shape for b in batches] == [(4, 4), (4, 4), (2, 4)]
    np.testing.assert_array_equal(np.concatenate([b[0] for b in batches]), data.x)
    np.testing.assert_array_equal(np.concatenate([b[1] for b in batches]), data.y)


def test_batches_shuffled_by_rng() -> None:
    x, y = _good(20)
    data = ArrayDataset(x.astype(np.float32), y)
    first = list(data.batches(6, np.random.default_rng(5)))
    second = list(data.batches(6, np.random.default_rng(5)))
    assert [b[0].shape[0] for b in first] == [6, 6, 6, 2]
    for (xa, ya), (xb, yb) in zip(first, second, strict=True):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
    seen = np.concatenate([b[0] for b in first])
    assert not np.array_equal(seen, data.x)  # shuffled ...
    np.testing.assert_array_equal(np.sort(seen[:, 0]), data.x[:, 0])  # ... but complete
    for xb, yb in first:
        np.testing.assert_array_equal(yb, (xb[:, 0] / 4).astype(int) % 3)


def test_batch_larger_than_the_data() -> None:
    x, y = _good(3)
    ((xb, yb),) = list(ArrayDataset(x.astype(np.float32), y).batches(100))
    assert xb.shape == (3, 4) and yb.shape == (3,)
