"""Schema checks shared by the streaming formats: columns, dtypes, and a scan of values.

Every check appends to a list of problems instead of raising, so that a
member sees every mismatch of its data at once (as :class:`DataError`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from fedaas.spec import DataSection

DEFAULT_FEATURE_PREFIX = "x"
DEFAULT_LABEL_COLUMN = "y"


def _listing(names: list[str], limit: int = 8) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def feature_columns_for(
    available: list[str], spec: list[str] | str | None, count: int
) -> tuple[list[str], list[str]]:
    """The feature column names for a job with ``count`` features, and the problems.

    ``spec`` is a list of exact names, or a prefix ``p`` meaning columns
    ``p0 .. p{count-1}`` (default ``x``). With a prefix, extra columns
    ``p{count}``, ... are a wrong feature count.
    """
    present = set(available)
    problems: list[str] = []
    if isinstance(spec, list | tuple):
        names = [str(s) for s in spec]
        if len(names) != count:
            problems.append(f"feature_columns names {len(names)} columns, the job expects {count}")
        missing = [n for n in names if n not in present]
        if missing:
            problems.append(f"missing feature column(s) {_listing(missing)}")
        return names, problems
    prefix = DEFAULT_FEATURE_PREFIX if spec is None else str(spec)
    names = [f"{prefix}{i}" for i in range(count)]
    numbered = re.compile(rf"^{re.escape(prefix)}(0|[1-9]\d*)$")
    found = [n for n in available if numbered.match(n)]
    missing = [n for n in names if n not in present]
    if not found:
        problems.append(
            f"no feature columns {prefix}0..{prefix}{count - 1} "
            f"(columns found: {_listing(available) or 'none'})"
        )
        return names, problems
    if len(found) != count:
        problems.append(
            f"data has {len(found)} feature columns named {prefix}<i>, the job expects {count}"
            + (f" (missing {_listing(missing)})" if missing else "")
        )
    elif missing:
        problems.append(f"missing feature column(s) {_listing(missing)}")
    return names, problems


@dataclass
class ValueScan:
    """Accumulates the value checks of a full pass: finite features, integral in-range labels."""

    schema: DataSection
    rows: int = 0
    nonfinite_rows: int = 0
    non_integral: list[float] = field(default_factory=list)
    low: float = np.inf
    high: float = -np.inf
    missing_labels: int = 0
    nonfinite_labels: int = 0

    def add(self, x: np.ndarray | None, y: np.ndarray | None, rows: int) -> None:
        """Check one chunk of ``rows`` rows: features (any columns) and raw labels, if given."""
        self.rows += rows
        if x is not None and x.size:
            self.nonfinite_rows += int((~np.isfinite(x)).any(axis=1).sum())
        if y is None:
            return
        if np.issubdtype(y.dtype, np.floating):
            nan = np.isnan(y)
            self.missing_labels += int(nan.sum())
            y = y[~nan]
            if self.schema.classes is None:  # a regression's targets: any finite number
                self.nonfinite_labels += int((~np.isfinite(y)).sum())
                return
            bad = y[y != np.round(y)]
            if bad.size and len(self.non_integral) < 3:
                self.non_integral.extend(float(v) for v in bad[: 3 - len(self.non_integral)])
        if y.size:
            self.low, self.high = min(self.low, float(y.min())), max(self.high, float(y.max()))

    def problems(self, where: str) -> list[str]:
        out: list[str] = []
        if self.nonfinite_rows:
            out.append(
                f"{where}: features hold NaN, Inf or missing values ({self.nonfinite_rows} rows)"
            )
        if self.missing_labels:
            out.append(f"{where}: {self.missing_labels} rows have no label")
        if self.non_integral:
            shown = ", ".join(f"{v:g}" for v in self.non_integral)
            out.append(f"{where}: labels must be integers, got {shown}")
        classes = self.schema.classes
        if classes is None:  # a regression
            if self.nonfinite_labels:
                out.append(f"{where}: {self.nonfinite_labels} targets are infinite")
            return out
        if self.low < 0 or self.high >= classes:
            bad = int(self.low) if self.low < 0 else int(self.high)
            out.append(
                f"{where}: label {bad} is out of range: the job has classes 0..{classes - 1}"
            )
        return out
