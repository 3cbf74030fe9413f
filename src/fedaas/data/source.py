"""Open a member's dataset from a path or URL, and write one.

Every location goes through fsspec (``fsspec.open``), so local paths and
``file://`` URLs work today and object-store URLs (``s3://``, ``gs://``,
``az://``) work wherever the matching fsspec backend is installed, with
``storage_options`` passed straight to it. Arrays are read with
``allow_pickle=False``: an NPZ that smuggles Python objects is rejected.
"""

from __future__ import annotations

import io
import zipfile
from typing import Any

import fsspec
import numpy as np

from fedaas.data.dataset import ArrayDataset, DataError
from fedaas.spec import DataSection


def _suffix(url: str) -> str:
    name = url.rstrip("/").rsplit("/", 1)[-1]
    return name.rsplit(".", 1)[-1].lower() if "." in name else ""


def read_npz(
    url: str, storage_options: dict[str, Any] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Arrays ``x`` and ``y`` of an NPZ file."""
    try:
        with fsspec.open(url, "rb", **(storage_options or {})) as f:
            raw = f.read()
    except FileNotFoundError:
        raise DataError([f"{url}: no such file"]) from None
    except OSError as exc:
        raise DataError([f"{url}: cannot read ({exc})"]) from None
    try:
        with np.load(io.BytesIO(raw), allow_pickle=False) as npz:
            missing = [k for k in ("x", "y") if k not in npz.files]
            if missing:
                raise DataError([f"{url}: missing array(s) {', '.join(missing)} (need x and y)"])
            return npz["x"], npz["y"]
    except (ValueError, OSError, zipfile.BadZipFile) as exc:
        if isinstance(exc, DataError):
            raise
        raise DataError([f"{url}: not a readable NPZ file ({exc})"]) from None


def open_dataset(
    url: str, schema: DataSection, storage_options: dict[str, Any] | None = None
) -> ArrayDataset:
    """Read the dataset at ``url`` and check it against ``schema``."""
    kind = _suffix(url)
    if kind != "npz":
        raise DataError([f"{url}: unsupported data format {kind or '(none)'!r}; use .npz"])
    x, y = read_npz(url, storage_options)
    return ArrayDataset.checked(x, y, schema)


def write_npz(
    url: str, x: np.ndarray, y: np.ndarray, storage_options: dict[str, Any] | None = None
) -> None:
    """Write arrays ``x`` and ``y`` as a compressed NPZ at ``url``."""
    buffer = io.BytesIO()
    np.savez_compressed(buffer, x=x, y=y)
    with fsspec.open(url, "wb", auto_mkdir=True, **(storage_options or {})) as f:
        f.write(buffer.getvalue())
