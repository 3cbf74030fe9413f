"""Fixtures for the data layer (the storage emulators and targets are in tests/conftest.py).

Marker ``bigdata``: writes and streams a ~200 MB Parquet file.
"""

from __future__ import annotations

import numpy as np
import pytest

from fedaas.spec import DataSection


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "bigdata: streams a dataset larger than its memory budget")


@pytest.fixture
def schema() -> DataSection:
    return DataSection(features=16, classes=4)


@pytest.fixture
def arrays() -> tuple[np.ndarray, np.ndarray]:
    """48 examples of 16 features in [0, 1] (4x4 grayscale images) and labels 0..3."""
    rng = np.random.default_rng(7)
    x = rng.random((48, 16)).astype(np.float32)
    y = np.arange(48) % 4
    return x, y
