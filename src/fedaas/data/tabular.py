"""Parquet and CSV datasets (one file or a folder of files), read in record batches.

Feature columns are ``x0 .. x{n-1}`` by default (or named / prefixed
otherwise), the label column ``y``. Opening a table checks the column names
and types of every file up front, then scans the values once (finite
features, integral labels in range) with bounded memory; every problem found
is reported together. Data whose decoded size fits the memory budget is kept
from that scan as an :class:`ArrayDataset`; larger data becomes a
:class:`StreamingDataset` that reads the files again on every pass.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from fsspec.spec import AbstractFileSystem

from fedaas import storage
from fedaas.data.checks import DEFAULT_LABEL_COLUMN, ValueScan, feature_columns_for
from fedaas.data.dataset import ArrayDataset, DataError, label_dtype
from fedaas.data.streaming import Chunk, MemoryPlan, StreamingDataset
from fedaas.spec import DataSection

TableFormat = Literal["parquet", "csv"]
SUFFIXES: dict[str, tuple[str, ...]] = {
    "parquet": (".parquet", ".pq"),
    "csv": (".csv", ".csv.gz", ".csv.bz2", ".csv.zst"),
}
_BUFFER_SIZE = 1 << 16  # Parquet column chunks are read through a 64 KiB buffer


def _numeric(t: pa.DataType) -> bool:
    return pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t)


class _Reader:
    """Format-specific access to one file: its column types and its record batches."""

    def __init__(self, fs: AbstractFileSystem, fmt: TableFormat, read_rows: int) -> None:
        self.fs, self.fmt, self.read_rows = fs, fmt, read_rows

    def schema(self, path: str) -> tuple[pa.Schema, int | None]:
        """Column names and types, and the row count where the metadata has it."""
        with self.fs.open(path, "rb") as f:
            if self.fmt == "parquet":
                meta = pq.ParquetFile(f).metadata
                return meta.schema.to_arrow_schema(), meta.num_rows
            options = pacsv.ReadOptions(block_size=1 << 16)  # types inferred from 64 KiB
            with pacsv.open_csv(self._text(f, path), read_options=options) as reader:
                return reader.schema, None

    def _text(self, f: Any, path: str) -> Any:
        if path.endswith((".gz", ".bz2", ".zst")):
            codec = {"gz": "gzip", "bz2": "bz2", "zst": "zstd"}[path.rsplit(".", 1)[1]]
            return pa.CompressedInputStream(f, codec)
        return f

    def batches(
        self, path: str, columns: list[str], types: dict[str, pa.DataType], rng: Any
    ) -> Iterator[tuple[pa.RecordBatch, int]]:
        """Record batches of ``columns`` with their first row's position in the file."""
        with self.fs.open(path, "rb") as f:
            if self.fmt == "parquet":
                pf = pq.ParquetFile(f, buffer_size=_BUFFER_SIZE)
                sizes = [pf.metadata.row_group(g).num_rows for g in range(pf.num_row_groups)]
                starts = np.concatenate([[0], np.cumsum(sizes)]).astype(int)
                groups = rng.permutation(len(sizes)) if rng is not None else range(len(sizes))
                for g in groups:
                    pos = int(starts[g])
                    for rb in pf.iter_batches(
                        self.read_rows, row_groups=[int(g)], columns=columns, use_threads=False
                    ):
                        yield rb, pos
                        pos += rb.num_rows
                return
            block = int(np.clip(self.read_rows * max(len(columns), 1) * 12, 1 << 16, 1 << 24))
            reader = pacsv.open_csv(
                self._text(f, path),
                read_options=pacsv.ReadOptions(block_size=block),
                convert_options=pacsv.ConvertOptions(include_columns=columns, column_types=types),
            )
            pos = 0
            with reader:
                for rb in reader:
                    yield rb, pos
                    pos += rb.num_rows


def _to_numpy(rb: pa.RecordBatch, names: list[str], dtype: type) -> np.ndarray:
    out = np.empty((rb.num_rows, len(names)), dtype=dtype)
    for j, name in enumerate(names):
        out[:, j] = rb.column(name).to_numpy(zero_copy_only=False)
    return out


class TableSource:
    """The :class:`~fedaas.data.streaming.ChunkSource` of checked Parquet/CSV files."""

    def __init__(
        self,
        reader: _Reader,
        paths: list[str],
        rows: list[int],
        feature_cols: list[str],
        label_col: str,
    ) -> None:
        self.reader, self.paths = reader, paths
        self.feature_cols, self.label_col = feature_cols, label_col
        self.label_type: type[np.generic] = np.int64  # a regression's: float32
        self.offsets = np.concatenate([[0], np.cumsum(rows)]).astype(np.int64)
        self.features = len(feature_cols)
        self.num_rows = int(self.offsets[-1])

    def chunks(self, rng: np.random.Generator | None) -> Iterator[Chunk]:
        order = rng.permutation(len(self.paths)) if rng is not None else range(len(self.paths))
        columns = [*self.feature_cols, self.label_col]
        types = {c: pa.float32() for c in self.feature_cols} | {self.label_col: pa.float64()}
        fs = self.reader.fs
        for i in order:
            path = self.paths[i]
            with storage.errors_as_storage_error(fs.unstrip_protocol(path), fs, path):
                for rb, pos in self.reader.batches(path, columns, types, rng):
                    x = _to_numpy(rb, self.feature_cols, np.float32)
                    y = rb.column(self.label_col).to_numpy(zero_copy_only=False)
                    y = y.astype(self.label_type)
                    start = int(self.offsets[i]) + pos
                    yield x, y, np.arange(start, start + len(y), dtype=np.int64)


def list_files(fs: AbstractFileSystem, path: str, fmt: TableFormat) -> list[str]:
    """``path`` itself, or every file of the format below the folder ``path``, sorted."""
    if not fs.isdir(path):
        return [path]
    return sorted(p for p in fs.find(path) if p.lower().endswith(SUFFIXES[fmt]))


def open_table(
    url: str,
    fs: AbstractFileSystem,
    path: str,
    fmt: TableFormat,
    schema: DataSection,
    feature_columns: list[str] | str | None = None,
    label_column: str = DEFAULT_LABEL_COLUMN,
    memory_budget: int = 256 << 20,
) -> ArrayDataset | StreamingDataset:
    """Check the table at ``url`` against ``schema`` and open it (see module doc)."""
    shown = storage.redact(url)
    files = list_files(fs, path, fmt)
    if not files:
        raise DataError([f"{shown}: no {fmt} files ({', '.join(SUFFIXES[fmt])}) in this folder"])
    plan = MemoryPlan.of(memory_budget, schema.features)
    reader = _Reader(fs, fmt, read_rows=plan.read_rows)
    problems: list[str] = []
    plans: list[tuple[str, list[str], bool, str]] = []  # file, columns to scan, label ok, name
    feature_cols: list[str] = []
    for file in files:
        name = shown if len(files) == 1 else storage.redact(fs.unstrip_protocol(file))
        try:
            arrow_schema, _ = reader.schema(file)
        except storage.StorageError as exc:
            if exc.transient:  # the service is down: not a problem of this file
                raise
            problems.append(str(exc))
            continue
        except Exception as exc:
            if isinstance(exc, FileNotFoundError | PermissionError):
                problems.append(str(storage.explain(exc, url, fs, file)))
            else:
                problems.append(f"{name}: not a readable {fmt} file ({storage.one_line(exc)})")
            continue
        names = arrow_schema.names
        feature_cols, col_problems = feature_columns_for(names, feature_columns, schema.features)
        problems += [f"{name}: {p}" for p in col_problems]
        good = []
        for col in feature_cols:
            if col in names:
                t = arrow_schema.field(col).type
                if _numeric(t):
                    good.append(col)
                else:
                    problems.append(f"{name}: feature column {col!r} has type {t}, not numbers")
        label_ok = label_column in names
        if not label_ok:
            problems.append(f"{name}: missing label column {label_column!r}")
        else:
            t = arrow_schema.field(label_column).type
            if not (pa.types.is_integer(t) or pa.types.is_floating(t)):
                problems.append(f"{name}: label column {label_column!r} has type {t}, not numbers")
                label_ok = False
        plans.append((file, good, label_ok, name))
    keep = not problems  # keep the scanned values while they fit the budget
    rows: list[int] = []
    kept: list[tuple[np.ndarray, np.ndarray]] = []
    kept_bytes = 0
    for file, cols, label_ok, name in plans:
        scan = ValueScan(schema)
        columns = [*cols, *([label_column] if label_ok else [])]
        types = {c: pa.float32() for c in cols} | ({label_column: pa.float64()} if label_ok else {})
        try:
            for rb, _ in reader.batches(file, columns, types, None):
                x = _to_numpy(rb, cols, np.float32) if cols else None
                y = rb.column(label_column).to_numpy(zero_copy_only=False) if label_ok else None
                scan.add(x, y, rb.num_rows)
                if keep and x is not None and y is not None:
                    kept.append((x, y))
                    kept_bytes += rb.num_rows * plan.row_bytes
                    if kept_bytes > plan.in_memory_bytes:
                        keep = False
                        kept.clear()
        except Exception as exc:
            problems.append(f"{name}: cannot read the values ({storage.one_line(exc)})")
            continue
        problems += scan.problems(name)
        rows.append(scan.rows)
    if problems:
        raise DataError(problems)
    if sum(rows) == 0:
        raise DataError([f"{shown}: the dataset is empty"])
    if keep:
        x = np.concatenate([k[0] for k in kept])
        y = np.concatenate([k[1] for k in kept]).astype(label_dtype(schema))
        return ArrayDataset(x, y)
    source = TableSource(reader, files, rows, feature_cols, label_column)
    source.label_type = label_dtype(schema)
    return StreamingDataset(source, plan.buffer_rows)


# ------------------------------------------------------------------- writers


def _column_names(features: int, feature_columns: list[str] | str | None) -> list[str]:
    if isinstance(feature_columns, list | tuple):
        if len(feature_columns) != features:
            raise ValueError(f"{len(feature_columns)} feature column names for {features} features")
        return [str(c) for c in feature_columns]
    prefix = "x" if feature_columns is None else feature_columns
    return [f"{prefix}{i}" for i in range(features)]


def write_table(
    url: str,
    chunks: Iterable[tuple[np.ndarray, np.ndarray]],
    fmt: TableFormat,
    storage_options: dict[str, Any] | None = None,
    feature_columns: list[str] | str | None = None,
    label_column: str = DEFAULT_LABEL_COLUMN,
    rows_per_group: int | None = None,
) -> None:
    """Write ``(x, y)`` chunks as one Parquet or CSV file at ``url``.

    Each chunk is written as it comes (one Parquet row group per
    ``rows_per_group`` rows, default about 8 MiB), so a dataset larger than
    memory can be written from a generator.
    """
    fs, path = storage.resolve(url, storage_options)
    writer: Any = None
    with storage.errors_as_storage_error(url, fs, path):
        fs.makedirs(fs._parent(path), exist_ok=True)
        with fs.open(path, "wb") as f:
            try:
                for x, y in chunks:
                    real = np.issubdtype(np.asarray(y).dtype, np.floating)  # regression targets
                    x = np.asarray(x, dtype=np.float32)
                    y = np.asarray(y, dtype=np.float64 if real else np.int64)
                    if x.ndim != 2 or y.shape != (x.shape[0],):
                        raise ValueError(f"bad chunk shapes {x.shape} and {y.shape}")
                    names = _column_names(x.shape[1], feature_columns)
                    table = pa.table([*x.T, y], names=[*names, label_column])
                    if writer is None:
                        writer = (
                            pq.ParquetWriter(f, table.schema, use_dictionary=[label_column])
                            if fmt == "parquet"
                            else pacsv.CSVWriter(f, table.schema)
                        )
                    group = rows_per_group or max(1, (8 << 20) // (x.shape[1] * 4 + 8))
                    if fmt == "parquet":
                        writer.write_table(table, row_group_size=group)
                    else:
                        writer.write_table(table)
                if writer is None:
                    raise ValueError("no rows to write")
            finally:
                if writer is not None:
                    writer.close()
