"""Fixtures of the member-side tests: a live coordinator and one member's small dataset."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from fedaas.sim.cluster import LocalCluster


@pytest.fixture
def data(tmp_path: Path) -> str:
    """A member's NPZ: 40 examples, 4 features, 3 classes."""
    rng = np.random.default_rng(0)
    y = np.arange(40) % 3
    np.savez(tmp_path / "m.npz", x=rng.normal(size=(40, 4)).astype(np.float32), y=y)
    return str(tmp_path / "m.npz")


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    """A real coordinator process (no members yet)."""
    with LocalCluster(tmp_path / "cluster") as cluster:
        cluster.start_server()
        yield cluster
