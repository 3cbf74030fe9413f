"""Open a member's dataset from a path or URL, and write one.

Locations are local paths, ``file://``, ``s3://``, ``gs://`` or ``az://`` URLs
(see :mod:`fedaas.storage` for credentials). Formats:

- ``npz``: arrays ``x`` (examples x features) and ``y`` (labels), read whole;
  ``allow_pickle=False``, so an NPZ that smuggles Python objects is rejected.
- ``parquet`` / ``csv``: a file or a folder of files with feature columns
  ``x0..x{n-1}`` (or as named) and a label column ``y``, streamed in record
  batches (:mod:`fedaas.data.tabular`).
- ``images``: a folder with one subfolder per class (:mod:`fedaas.data.images`).

The format follows from the file suffix or the folder's content unless given.
Every mismatch with the job's schema is reported at once as a
:class:`DataError` before any training starts.
"""

from __future__ import annotations

import io
import threading
import zipfile
from typing import Any, Literal

import numpy as np

from fedaas import storage
from fedaas.data.dataset import ArrayDataset, DataError
from fedaas.data.images import ImageMode, open_images, write_images
from fedaas.data.streaming import StreamingDataset
from fedaas.data.tabular import SUFFIXES, TableFormat, open_table, write_table
from fedaas.spec import DataSection

DataFormat = Literal["npz", "parquet", "csv", "images"]
FORMATS: tuple[str, ...] = ("npz", "parquet", "csv", "images")
DEFAULT_MEMORY_BUDGET = 256 << 20
"""Bytes of decoded examples a dataset may hold in memory; larger data is streamed."""

_NPY_HEADERS = threading.Lock()
"""One NPZ read at a time per process. NumPy parses each array's header with
``ast.literal_eval``, and on CPython 3.11 the AST constructor's recursion
counter is shared by all threads (python/cpython#106905): members run as
threads that read their data at once can fail with ``SystemError: AST
constructor recursion depth mismatch``. A read is once per job per member."""


def _format_of_name(name: str) -> str | None:
    low = name.lower().rstrip("/")
    if low.endswith(".npz"):
        return "npz"
    for fmt, suffixes in SUFFIXES.items():
        if low.endswith(suffixes):
            return fmt
    return None


def detect_format(url: str, storage_options: dict[str, Any] | None = None) -> str:
    """The format of the dataset at ``url``: by suffix, else by the folder's content."""
    by_name = _format_of_name(url)
    if by_name:
        return by_name
    fs, path = storage.resolve(url, storage_options)
    with storage.errors_as_storage_error(url, fs, path):
        if not fs.isdir(path) and not fs.exists(path):
            raise FileNotFoundError(path)
        entries = fs.ls(path, detail=True) if fs.isdir(path) else None
    if entries is None:
        raise DataError([f"{storage.redact(url)}: unknown data format; use {', '.join(FORMATS)}"])
    files = [e["name"] for e in entries if e["type"] != "directory"]
    folders = [
        e["name"].rstrip("/").rsplit("/", 1)[-1] for e in entries if e["type"] == "directory"
    ]
    for fmt in ("parquet", "csv"):
        if any(_format_of_name(f) == fmt for f in files):
            return fmt
    if folders and all("=" in f for f in folders):
        return "parquet"  # a Hive-partitioned folder: key=value/part.parquet
    if folders:
        return "images"
    raise DataError(
        [f"{storage.redact(url)}: empty folder or unknown data format; use {', '.join(FORMATS)}"]
    )


def read_npz(
    url: str, storage_options: dict[str, Any] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Arrays ``x`` and ``y`` of an NPZ file."""
    shown = storage.redact(url)
    try:
        raw = storage.read_bytes(url, storage_options)
    except storage.StorageError as exc:
        raise DataError([str(exc)], exc) from None
    try:
        with _NPY_HEADERS, np.load(io.BytesIO(raw), allow_pickle=False) as npz:
            missing = [k for k in ("x", "y") if k not in npz.files]
            if missing:
                raise DataError([f"{shown}: missing array(s) {', '.join(missing)} (need x and y)"])
            return npz["x"], npz["y"]
    except (ValueError, OSError, zipfile.BadZipFile) as exc:
        if isinstance(exc, DataError):
            raise
        raise DataError([f"{shown}: not a readable NPZ file ({storage.one_line(exc)})"]) from None


def open_dataset(
    url: str,
    schema: DataSection,
    storage_options: dict[str, Any] | None = None,
    *,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
) -> ArrayDataset | StreamingDataset:
    """Read the dataset at ``url`` and check it against the job's ``[data]`` section.

    The section is the one source of truth for how to read it: ``format``
    (``auto``: from the suffix or folder), ``feature_columns`` (default
    ``x0..``), ``label_column``, ``image_size`` (default square) and
    ``image_mode``. Returns an :class:`ArrayDataset` when the data fits
    half of ``memory_budget`` (always for NPZ), else a
    :class:`StreamingDataset`; both have ``num_examples``, ``batches`` and
    ``split``. Raises :class:`DataError` listing every problem (storage
    failures included, one line each, credentials redacted).
    """
    try:
        fmt = schema.format if schema.format != "auto" else detect_format(url, storage_options)
        if fmt not in FORMATS:
            raise DataError([f"unknown data format {fmt!r}; use {', '.join(FORMATS)}"])
        if fmt == "npz":
            x, y = read_npz(url, storage_options)
            try:
                return ArrayDataset.checked(x, y, schema)
            except DataError as exc:
                raise DataError([f"{storage.redact(url)}: {p}" for p in exc.problems]) from None
        fs, path = storage.resolve(url, storage_options)
        if fmt == "images":
            size = (schema.image_size[0], schema.image_size[1]) if schema.image_size else None
            return open_images(url, fs, path, schema, size, schema.image_mode, memory_budget)
        with storage.errors_as_storage_error(url, fs, path):
            if not fs.exists(path):
                raise FileNotFoundError(path)
        table_format: TableFormat = "parquet" if fmt == "parquet" else "csv"
        return open_table(
            url,
            fs,
            path,
            table_format,
            schema,
            schema.feature_columns,
            schema.label_column,
            memory_budget,
        )
    except storage.StorageError as exc:
        raise DataError([str(exc)], exc) from None


def write_npz(
    url: str,
    x: np.ndarray,
    y: np.ndarray,
    storage_options: dict[str, Any] | None = None,
    *,
    compressed: bool = True,
) -> None:
    """Write arrays ``x`` and ``y`` as an NPZ at ``url`` (``compressed``: zlib, for data that
    is kept; scratch data read again every round is faster to write and read without)."""
    buffer = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(buffer, x=x, y=y)
    storage.write_bytes(url, buffer.getvalue(), storage_options)


def write_dataset(
    url_dir: str,
    name: str,
    x: np.ndarray,
    y: np.ndarray,
    fmt: str,
    storage_options: dict[str, Any] | None = None,
    *,
    feature_columns: list[str] | str | None = None,
    label_column: str = "y",
    image_size: tuple[int, int] | None = None,
    image_mode: ImageMode | None = None,
) -> str:
    """Write ``(x, y)`` below ``url_dir`` in format ``fmt``; returns the dataset's URL.

    ``name.npz``, ``name.parquet``, ``name.csv``, or a folder ``name/`` of
    class subfolders of PNG images. Raises ``ValueError`` for an unknown
    format and :class:`~fedaas.storage.StorageError` when storage fails.
    """
    if fmt == "npz":
        url = storage.join(url_dir, f"{name}.npz")
        write_npz(url, x, y, storage_options)
    elif fmt in ("parquet", "csv"):
        url = storage.join(url_dir, f"{name}.{fmt}")
        table_format: TableFormat = "parquet" if fmt == "parquet" else "csv"
        write_table(url, [(x, y)], table_format, storage_options, feature_columns, label_column)
    elif fmt == "images":
        url = storage.join(url_dir, name)
        write_images(url, x, y, storage_options, image_size, image_mode)
    else:
        raise ValueError(f"unknown data format {fmt!r}; use {', '.join(FORMATS)}")
    return url
