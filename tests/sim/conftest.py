"""Fixtures of the simulation engine's tests (helpers in ``fixtures/simulation.py``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedaas.spec import JobSpec
from fixtures.simulation import digits_spec


@pytest.fixture
def spec() -> JobSpec:
    return digits_spec()


@pytest.fixture
def out(tmp_path: Path) -> Path:
    return tmp_path / "run"
