"""In-memory datasets and the schema check every member runs before training."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from fedaas.spec import DataSection
from fedaas.storage import StorageError


class DataError(ValueError):
    """A member's data that does not fit the job; ``problems`` lists every mismatch.

    ``storage``: the storage failure behind it, when the data could not be read at all; a
    transient one (``storage.transient``: the service down) is an outage to wait out, not a
    reason to leave a job.
    """

    def __init__(self, problems: list[str], storage: StorageError | None = None) -> None:
        self.problems = problems
        self.storage = storage
        super().__init__("; ".join(problems))


def storage_outage(exc: BaseException) -> StorageError | None:
    """The transient storage failure behind ``exc`` (itself, or the read a :class:`DataError`
    could not make), if it is one: an outage to wait out rather than a problem of the data."""
    found = exc.storage if isinstance(exc, DataError) else exc
    return found if isinstance(found, StorageError) and found.transient else None


def label_dtype(schema: DataSection) -> type[np.generic]:
    """Class labels are int64; a regression's (no ``classes``) real-valued targets float32."""
    return np.int64 if schema.classes is not None else np.float32


def schema_problems(x: np.ndarray, y: np.ndarray, schema: DataSection) -> list[str]:
    """Every way ``(x, y)`` fails the job's data schema (empty when it fits)."""
    problems: list[str] = []
    if x.ndim != 2:
        problems.append(f"features must be a 2-D array (examples x features), got {x.ndim}-D")
    elif x.shape[1] != schema.features:
        problems.append(f"data has {x.shape[1]} features, the job expects {schema.features}")
    if y.ndim != 1:
        problems.append(f"labels must be a 1-D array, got {y.ndim}-D")
    if x.ndim >= 1 and y.ndim >= 1 and x.shape[0] != y.shape[0]:
        problems.append(f"{x.shape[0]} feature rows but {y.shape[0]} labels")
    if x.ndim >= 1 and x.shape[0] == 0:
        problems.append("the dataset is empty")
    if not np.issubdtype(x.dtype, np.number) or np.issubdtype(x.dtype, np.complexfloating):
        problems.append(f"features must be real numbers, got dtype {x.dtype}")
    elif not np.isfinite(x).all():
        problems.append("features hold NaN or Inf")
    if schema.classes is None:  # a regression: any finite real target
        if not np.issubdtype(y.dtype, np.number) or np.issubdtype(y.dtype, np.complexfloating):
            problems.append(f"targets must be real numbers, got dtype {y.dtype}")
        elif not np.isfinite(y).all():
            problems.append("targets hold NaN or Inf")
        return problems
    if not np.issubdtype(y.dtype, np.integer):
        if (
            np.issubdtype(y.dtype, np.floating)
            and np.isfinite(y).all()
            and (y == np.round(y)).all()
        ):
            pass  # integral floats (as CSV readers produce) are accepted
        else:
            problems.append(f"labels must be integers, got dtype {y.dtype}")
            return problems
    if y.size:
        low, high = y.min(), y.max()
        if low < 0 or high >= schema.classes:
            bad = int(low) if low < 0 else int(high)
            problems.append(
                f"label {bad} is out of range: the job has classes 0..{schema.classes - 1}"
            )
    return problems


class Dataset(Protocol):
    """What training and evaluation need: a size and a stream of mini-batches.

    Implementations may hold everything in memory (:class:`ArrayDataset`) or
    stream record batches from storage; batches are ``(x float32, y int64)`` (a
    regression's ``y``: float32).
    """

    @property
    def num_examples(self) -> int: ...

    def batches(
        self, batch_size: int, rng: np.random.Generator | None = None
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]: ...


@dataclass
class ArrayDataset:
    """Features ``x`` (float32, examples x features) and labels ``y`` (int64)."""

    x: np.ndarray
    y: np.ndarray

    @classmethod
    def checked(cls, x: np.ndarray, y: np.ndarray, schema: DataSection) -> ArrayDataset:
        """Validate against the schema (raising :class:`DataError`) and convert."""
        problems = schema_problems(np.asarray(x), np.asarray(y), schema)
        if problems:
            raise DataError(problems)
        return cls(np.asarray(x, dtype=np.float32), np.asarray(y).astype(label_dtype(schema)))

    @property
    def num_examples(self) -> int:
        return int(self.y.shape[0])

    def split(self, fraction: float, seed: int) -> tuple[ArrayDataset, ArrayDataset | None]:
        """Hold out ``fraction`` of the examples for validation (at least one, never all)."""
        if fraction <= 0 or self.num_examples < 2:
            return self, None
        order = np.random.default_rng(seed).permutation(self.num_examples)
        cut = min(max(1, int(round(fraction * self.num_examples))), self.num_examples - 1)
        val, train = order[:cut], order[cut:]
        return ArrayDataset(self.x[train], self.y[train]), ArrayDataset(self.x[val], self.y[val])

    def batches(
        self, batch_size: int, rng: np.random.Generator | None = None
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Mini-batches in a shuffled (``rng``) or fixed order."""
        n = self.num_examples
        order = rng.permutation(n) if rng is not None else np.arange(n)
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            yield self.x[idx], self.y[idx]
