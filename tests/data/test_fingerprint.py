"""The data fingerprint changes with the data and only with it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fedaas.data.fingerprint import data_fingerprint
from fedaas.data.source import write_npz
from fedaas.storage import StorageError


def _npz(path: Path, seed: int) -> str:
    rng = np.random.default_rng(seed)
    write_npz(str(path), rng.normal(size=(20, 4)).astype(np.float32), rng.integers(0, 3, 20))
    return str(path)


def test_same_data_same_fingerprint_wherever_it_is_read_from(tmp_path: Path) -> None:
    a = _npz(tmp_path / "a.npz", 1)
    assert data_fingerprint(a) == data_fingerprint(f"file://{a}")
    copy = tmp_path / "copy"
    copy.mkdir()
    (copy / "a.npz").write_bytes(Path(a).read_bytes())
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "a.npz").write_bytes(Path(a).read_bytes())
    assert data_fingerprint(str(copy)) == data_fingerprint(str(folder))


def test_other_data_other_fingerprint(tmp_path: Path) -> None:
    a, b = _npz(tmp_path / "a.npz", 1), _npz(tmp_path / "b.npz", 2)
    assert data_fingerprint(a) != data_fingerprint(b)
    folder = tmp_path / "parts"
    folder.mkdir()
    (folder / "x.csv").write_text("x0,y\n1,0\n")
    before = data_fingerprint(str(folder))
    (folder / "y.csv").write_text("x0,y\n2,1\n")  # a file added
    added = data_fingerprint(str(folder))
    (folder / "y.csv").write_text("x0,y\n3,1\n")  # a file edited, same size
    edited = data_fingerprint(str(folder))
    assert len({before, added, edited}) == 3


def test_missing_data_is_a_storage_error(tmp_path: Path) -> None:
    with pytest.raises(StorageError):
        data_fingerprint(str(tmp_path / "nothing.npz"))
