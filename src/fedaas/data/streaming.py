"""Datasets too large for memory: record-batch streams with a bounded shuffle buffer.

A :class:`ChunkSource` (Parquet, CSV, image folder) yields chunks
``(x float32, y int64, index int64)``, where ``index`` is each example's
position in the whole dataset. :class:`StreamingDataset` turns that into
mini-batches. With an ``rng`` it reads the source's pieces in a shuffled order
and mixes examples through a fixed-size buffer (as ``tf.data``'s
``shuffle``): each arriving example replaces a uniformly chosen buffered one,
which is emitted. Memory is the buffer plus one chunk, whatever the dataset size.

Splits are deterministic without a pass over the data: example ``i`` belongs
to the held-out part when ``hash(seed, i) < fraction`` (SplitMix64).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

import numpy as np

Chunk = tuple[np.ndarray, np.ndarray, np.ndarray]


@dataclass(frozen=True)
class MemoryPlan:
    """How a memory budget (bytes of decoded examples) is spent.

    Data whose decoded size is at most ``in_memory_bytes`` (half the budget:
    the other half covers the copy made while assembling it) is held as an
    array; larger data streams through a shuffle buffer of ``buffer_rows``
    (a quarter of the budget) filled ``read_rows`` at a time.
    """

    row_bytes: int
    in_memory_bytes: int
    buffer_rows: int
    read_rows: int

    @classmethod
    def of(cls, budget: int, features: int) -> MemoryPlan:
        row_bytes = features * 4 + 16  # float32 features, int64 label, int64 index
        buffer_rows = max(1, budget // (4 * row_bytes))
        return cls(row_bytes, budget // 2, buffer_rows, max(1, min(buffer_rows // 4, 65536)))


class ChunkSource(Protocol):
    """Where a streaming dataset's examples come from."""

    features: int
    num_rows: int

    def chunks(self, rng: np.random.Generator | None) -> Iterator[Chunk]:
        """Every example once, in pieces; piece order shuffled by ``rng`` if given."""
        ...


def split_uniform(index: np.ndarray, seed: int) -> np.ndarray:
    """A uniform number in [0, 1) per example index, fixed by ``seed`` (SplitMix64)."""
    offset = np.uint64((seed * 0x9E3779B97F4A7C15) % 2**64)
    with np.errstate(over="ignore"):
        z = index.astype(np.uint64) + offset
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) / float(2**53)


class _Subset:
    """The held-out (``held``) or remaining share of examples of a split."""

    def __init__(self, seed: int, fraction: float, held: bool) -> None:
        self.seed, self.fraction, self.held = seed, fraction, held

    def mask(self, index: np.ndarray) -> np.ndarray:
        inside = split_uniform(index, self.seed) < self.fraction
        return inside if self.held else ~inside

    def count(self, total: int, step: int = 1 << 20) -> int:
        return sum(
            int(self.mask(np.arange(s, min(s + step, total), dtype=np.int64)).sum())
            for s in range(0, total, step)
        )


class _Rebatcher:
    """Collects rows and hands them out in batches of exactly ``size`` (last may be short)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.xs: list[np.ndarray] = []
        self.ys: list[np.ndarray] = []
        self.rows = 0

    def add(self, x: np.ndarray, y: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        if len(y):
            self.xs.append(x)
            self.ys.append(y)
            self.rows += len(y)
        while self.rows >= self.size:
            yield self._take(self.size)

    def flush(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        if self.rows:
            yield self._take(self.rows)

    def _take(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        x = np.concatenate(self.xs) if len(self.xs) > 1 else self.xs[0]
        y = np.concatenate(self.ys) if len(self.ys) > 1 else self.ys[0]
        self.xs, self.ys = ([x[n:]], [y[n:]]) if len(y) > n else ([], [])
        self.rows = len(y) - n
        return np.ascontiguousarray(x[:n]), np.ascontiguousarray(y[:n])


class StreamingDataset:
    """A :class:`~fedaas.data.dataset.Dataset` read from storage on every pass.

    ``buffer_rows`` bounds the shuffle buffer (the source's chunks must be no
    larger). The schema was checked when the dataset was opened.
    """

    def __init__(
        self, source: ChunkSource, buffer_rows: int, subset: _Subset | None = None
    ) -> None:
        self.source = source
        self.buffer_rows = max(1, int(buffer_rows))
        self.subset = subset
        self._count = source.num_rows if subset is None else subset.count(source.num_rows)

    @property
    def num_examples(self) -> int:
        return self._count

    def split(self, fraction: float, seed: int) -> tuple[StreamingDataset, StreamingDataset | None]:
        """Hold out about ``fraction`` of the examples (chosen by hashing, see module doc)."""
        if fraction <= 0 or self.num_examples < 2 or self.subset is not None:
            return self, None
        held = StreamingDataset(self.source, self.buffer_rows, _Subset(seed, fraction, True))
        if held.num_examples == 0:
            return self, None
        rest = StreamingDataset(self.source, self.buffer_rows, _Subset(seed, fraction, False))
        return rest, held

    def _chunks(self, rng: np.random.Generator | None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for x, y, index in self.source.chunks(rng):
            if self.subset is not None:
                keep = self.subset.mask(index)
                x, y = x[keep], y[keep]
            if len(y):
                yield x, y

    def batches(
        self, batch_size: int, rng: np.random.Generator | None = None
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Mini-batches ``(x float32, y)``: shuffled through the buffer with ``rng``."""
        out = _Rebatcher(batch_size)
        if rng is None:
            for x, y in self._chunks(None):
                yield from out.add(x, y)
            yield from out.flush()
            return
        cap = max(self.buffer_rows, batch_size)
        buf_x = np.empty((cap, self.source.features), dtype=np.float32)
        buf_y: np.ndarray | None = None  # the labels' dtype: int64, or a regression's float32
        filled = 0
        for x, y in self._chunks(rng):
            if buf_y is None:
                buf_y = np.empty(cap, dtype=y.dtype)
            take = min(cap - filled, len(y))
            buf_x[filled : filled + take], buf_y[filled : filled + take] = x[:take], y[:take]
            filled += take
            x, y = x[take:], y[take:]
            for start in range(0, len(y), cap):  # a chunk larger than the buffer: pieces
                xs, ys = x[start : start + cap], y[start : start + cap]
                slots = rng.choice(cap, size=len(ys), replace=False)
                gone_x, gone_y = buf_x[slots], buf_y[slots]
                buf_x[slots], buf_y[slots] = xs, ys
                yield from out.add(gone_x, gone_y)
        order = rng.permutation(filled)
        for start in range(0, filled, batch_size):  # drain without copying the whole buffer
            rows = order[start : start + batch_size]
            assert buf_y is not None
            yield from out.add(buf_x[rows], buf_y[rows])
        yield from out.flush()
