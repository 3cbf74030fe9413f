"""Fixtures for the data layer: one emulator per cloud for the whole session.

Markers: ``emulator`` (needs a storage emulator subprocess: moto, gcp-storage-emulator,
Azurite) and ``bigdata`` (writes and streams a ~200 MB Parquet file).
Select with ``-m emulator`` / ``-m "not emulator"``.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fedaas.data import emulators
from fedaas.spec import DataSection

KINDS = ("file", "s3", "gs", "az")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "emulator: needs a local object-storage emulator process")
    config.addinivalue_line("markers", "bigdata: streams a dataset larger than its memory budget")


def _emulator(kind: emulators.EmulatorKind, **kwargs: Any) -> Iterator[emulators.Emulator]:
    try:
        emu = emulators.start(kind, **kwargs)
    except emulators.EmulatorError as exc:
        pytest.skip(str(exc))
    try:
        yield emu
    finally:
        emu.stop()


@pytest.fixture(scope="session")
def s3_emulator() -> Iterator[emulators.Emulator]:
    """moto_server with signature checks (wrong credentials are refused)."""
    yield from _emulator("s3", auth=True)


@pytest.fixture(scope="session")
def gcs_emulator() -> Iterator[emulators.Emulator]:
    yield from _emulator("gs")


@pytest.fixture(scope="session")
def az_emulator() -> Iterator[emulators.Emulator]:
    yield from _emulator("az")


@dataclass
class Target:
    """A writable place: a base URL (an empty folder or fresh bucket) and its options."""

    kind: str
    base: str
    options: dict[str, Any]
    emulator: emulators.Emulator | None = None


def _target(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> Target:
    if kind == "file":
        return Target(kind, str(tmp_path / "store"), {})
    fixture = {"s3": "s3_emulator", "gs": "gcs_emulator", "az": "az_emulator"}[kind]
    emu: emulators.Emulator = request.getfixturevalue(fixture)
    bucket = f"t{uuid.uuid4().hex[:12]}"
    return Target(kind, emu.make_bucket(bucket), dict(emu.storage_options), emu)


@pytest.fixture(params=KINDS)
def target(request: pytest.FixtureRequest, tmp_path: Path) -> Target:
    """Each URL kind in turn: local folder, s3://, gs://, az:// (cloud ones marked emulator)."""
    return _target(request.param, request, tmp_path)


@pytest.fixture(params=KINDS[1:])
def cloud_target(request: pytest.FixtureRequest, tmp_path: Path) -> Target:
    """Each object store in turn: s3://, gs://, az:// (a fresh bucket in its emulator)."""
    return _target(request.param, request, tmp_path)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here not in item.path.parents:
            continue
        callspec = getattr(item, "callspec", None)
        params = callspec.params if callspec else {}
        kind = params.get("target", params.get("cloud_target"))
        if kind in ("s3", "gs", "az"):
            item.add_marker(pytest.mark.emulator)


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
