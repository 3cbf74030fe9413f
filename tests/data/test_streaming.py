"""The streaming dataset: shuffle buffer, splits, and bounded memory on a large file."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from fedaas.data.streaming import StreamingDataset, split_uniform


class _Counting:
    """A source of ``n`` examples whose only feature is the example's index."""

    features = 1

    def __init__(self, n: int, chunk: int) -> None:
        self.num_rows, self.chunk = n, chunk

    def chunks(self, rng: np.random.Generator | None) -> Iterator[tuple[np.ndarray, ...]]:
        starts = np.arange(0, self.num_rows, self.chunk)
        for start in rng.permutation(starts) if rng is not None else starts:
            index = np.arange(start, min(start + self.chunk, self.num_rows))
            yield index[:, None].astype(np.float32), index % 3, index


def _order(ds: StreamingDataset, batch: int, rng: np.random.Generator | None) -> np.ndarray:
    sizes, seen = [], []
    for x, y in ds.batches(batch, rng):
        assert x.dtype == np.float32 and y.dtype == np.int64 and x.flags.c_contiguous
        np.testing.assert_array_equal(y, x[:, 0].astype(np.int64) % 3)
        sizes.append(len(y))
        seen.append(x[:, 0].astype(np.int64))
    assert all(s == batch for s in sizes[:-1]) and 0 < sizes[-1] <= batch
    return np.concatenate(seen)


@pytest.mark.parametrize("buffer", [1, 64, 5000])
def test_every_example_once_and_shuffled(buffer: int) -> None:
    ds = StreamingDataset(_Counting(1000, 50), buffer_rows=buffer)
    assert ds.num_examples == 1000
    np.testing.assert_array_equal(_order(ds, 32, None), np.arange(1000))
    first = _order(ds, 32, np.random.default_rng(0))
    np.testing.assert_array_equal(np.sort(first), np.arange(1000))
    assert not np.array_equal(first, np.arange(1000))
    np.testing.assert_array_equal(first, _order(ds, 32, np.random.default_rng(0)))  # seeded
    if buffer >= 64:  # the buffer mixes examples from far-apart chunks
        assert np.abs(np.diff(first[:100])).mean() > 50


def test_split_is_disjoint_complete_and_deterministic() -> None:
    ds = StreamingDataset(_Counting(10_000, 700), buffer_rows=256)
    train, held = ds.split(0.2, seed=5)
    assert held is not None
    a, b = _order(train, 100, np.random.default_rng(1)), _order(held, 100, None)
    assert len(a) == train.num_examples and len(b) == held.num_examples
    assert set(a).isdisjoint(b) and len(a) + len(b) == 10_000
    assert 1800 < len(b) < 2200
    np.testing.assert_array_equal(b, _order(ds.split(0.2, seed=5)[1], 100, None))
    assert not np.array_equal(b, _order(ds.split(0.2, seed=6)[1], 100, None))
    assert ds.split(0.0, seed=5) == (ds, None)


def test_split_uniform_is_uniform() -> None:
    u = split_uniform(np.arange(100_000), seed=1)
    assert 0 <= u.min() and u.max() < 1 and abs(u.mean() - 0.5) < 0.01


_MAKE = """
import numpy as np, sys
from fedaas.data.tabular import write_table
rows, features, chunk = int(sys.argv[2]), int(sys.argv[3]), 50_000
def chunks():
    rng = np.random.default_rng(0)
    for start in range(0, rows, chunk):
        index = np.arange(start, min(start + chunk, rows))
        x = rng.random((len(index), features), dtype=np.float32)
        x[:, 0] = index
        yield x, index % 10
write_table(sys.argv[1], chunks(), "parquet", rows_per_group=20_000)
"""

_MEASURE = """
import json, sys, time
import numpy as np, psutil
from fedaas.data.source import open_dataset
from fedaas.spec import DataSection
from fedaas.data.source import write_dataset
url, rows, features, budget = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
schema = DataSection(features=features, classes=10)
counts = np.zeros(rows, dtype=np.uint8)
# Warm up on a small file first: pyarrow's allocator and reader set-up cost a
# fixed ~40 MB of RSS once per process, whatever the data size.
small = write_dataset(sys.argv[5], "warm", np.ones((20_000, features)), np.zeros(20_000), "parquet")
for _ in open_dataset(small, schema, memory_budget=budget).batches(256, np.random.default_rng(0)):
    pass
base = psutil.Process().memory_info().rss
start = time.monotonic()
ds = open_dataset(url, schema, memory_budget=budget)
batches = 0
for x, y in ds.batches(256, np.random.default_rng(0)):
    index = x[:, 0].astype(np.int64)
    assert (y == index % 10).all()
    counts[index] += 1
    batches += 1
# VmHWM: this program's own peak RSS (ru_maxrss would include the forking parent's).
status = open("/proc/self/status").read()
peak = int(status.split("VmHWM:")[1].split()[0]) * 1024
print(json.dumps({"kind": type(ds).__name__, "n": ds.num_examples, "growth": peak - base,
                  "once": bool((counts == 1).all()), "batches": batches,
                  "seconds": time.monotonic() - start}))
"""


@pytest.mark.bigdata
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
def test_parquet_larger_than_budget_streams_with_bounded_memory(tmp_path: Path) -> None:
    rows, features, budget = 800_000, 64, 16 << 20  # 205 MB of features, 16 MiB budget
    path = tmp_path / "big.parquet"
    script = textwrap.dedent(_MAKE)
    subprocess.run([sys.executable, "-c", script, str(path), str(rows), str(features)], check=True)
    assert path.stat().st_size > 190e6
    measure = textwrap.dedent(_MEASURE)
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            measure,
            str(path),
            str(rows),
            str(features),
            str(budget),
            str(tmp_path),
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["kind"] == "StreamingDataset" and result["n"] == rows
    assert result["once"], "every row exactly once"
    assert result["growth"] < 60e6, f"peak RSS grew {result['growth'] / 1e6:.0f} MB"
    print(f"streamed {path.stat().st_size / 1e6:.0f} MB: {result}")
