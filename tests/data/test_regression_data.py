"""A regression's data: ``[data] classes`` left out, real-valued targets kept as they are."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fedaas.data.dataset import DataError
from fedaas.data.source import open_dataset, write_dataset
from fedaas.spec import DataSection


@pytest.mark.parametrize("fmt", ["csv", "parquet", "npz"])
def test_real_targets_round_trip(tmp_path: Path, fmt: str) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 3)).astype(np.float32)
    y = rng.normal(100.0, 30.0, size=40)
    url = write_dataset(str(tmp_path), "d", x, y, fmt)
    data = open_dataset(url, DataSection(features=3))
    got = np.concatenate([b[1] for b in data.batches(16)])
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, y, rtol=1e-6)
    with pytest.raises(DataError, match="labels must be integers"):
        open_dataset(url, DataSection(features=3, classes=2))
    if fmt != "npz":  # a table too large for memory is streamed: the targets stay real
        streamed = open_dataset(url, DataSection(features=3), memory_budget=1)
        assert type(streamed).__name__ == "StreamingDataset"
        rng_batches = streamed.batches(16, np.random.default_rng(1))
        shuffled = np.concatenate([b[1] for b in rng_batches])
        assert shuffled.dtype == np.float32
        np.testing.assert_allclose(np.sort(shuffled), np.sort(y), rtol=1e-6)


def test_targets_must_be_finite(tmp_path: Path) -> None:
    x = np.zeros((3, 2), dtype=np.float32)
    url = write_dataset(str(tmp_path), "d", x, np.array([1.0, np.inf, 2.0]), "npz")
    with pytest.raises(DataError, match="targets hold NaN or Inf"):
        open_dataset(url, DataSection(features=2))


def test_image_folders_refuse_a_regression(tmp_path: Path) -> None:
    x = np.zeros((4, 4), dtype=np.float32)
    url = write_dataset(str(tmp_path), "img", x, np.array([0, 1, 0, 1]), "images")
    with pytest.raises(DataError, match="a regression reads a table or npz"):
        open_dataset(url, DataSection(features=4, format="images"))
