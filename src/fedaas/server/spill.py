"""The accepted updates of the open round, kept on disk until the round closes.

Robust rules (coordinate-wise median, trimmed mean, Krum) need every update
at once, and even the mean needs every member's claimed example count before
any weight is known (:class:`fedaas.algorithms.robust.ExampleCap`). So each
validated upload stays in the artifact spool as its safetensors file
(``round-<job>-<round>-m<member>.safetensors``; an upload that was already
spooled is renamed, a small one in memory is written) and only its norm and
claim are kept in memory. At the close, :mod:`fedaas.server.aggregation`
reads the files back in column blocks (:meth:`RoundSpill.columns`), so
coordinator memory stays O(model) whatever the number of members. The files
go with the round (:meth:`RoundSpill.discard`); a coordinator that restarts
clears the spool, and the interrupted round reruns.

Blocks are read with ordinary positioned file reads rather than memory maps:
every page a memory map touches counts in the coordinator's resident memory
until it is unmapped, while the page cache behind a read does not.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fedaas.tensors import Manifest, SafetensorsFile

BLOCK_BYTES = 8 * 1024 * 1024
"""Float64 bytes of one ``(members, block)`` column block."""
NORM_CHUNK = 1 << 16
"""Elements per float64 piece when an update's norm is summed (0.5 MB, per upload in flight)."""


def update_norm(update: SafetensorsFile) -> float:
    """The update's L2 norm over all tensors, summed in float64 (no overflow for float32 input)."""
    total = 0.0
    for name in update.manifest:
        for _, values in update.chunks(name, NORM_CHUNK):
            wide = values.astype(np.float64)
            total += float(np.dot(wide, wide))
    return math.sqrt(total)


@dataclass(frozen=True)
class Spilled:
    """One member's accepted update: where it lies, what it claimed, its norm."""

    member_id: int
    path: Path
    num_examples: int
    norm: float


@dataclass
class RoundSpill:
    """The round's accepted updates by member id (see the module docstring)."""

    spool: Path
    job_id: str
    number: int
    manifest: Manifest
    entries: dict[int, Spilled] = field(default_factory=dict)

    def path_for(self, member_id: int) -> Path:
        return self.spool / f"round-{self.job_id}-{self.number}-m{member_id}.safetensors"

    def keep(self, member_id: int, body: bytes | Path, num_examples: int, norm: float) -> Spilled:
        """Keep a validated update (bytes are written, a spool file is renamed)."""
        path = self.path_for(member_id)
        if isinstance(body, Path):
            os.replace(body, path)
        else:
            tmp = path.with_name(path.name + ".partial")
            tmp.write_bytes(body)
            os.replace(tmp, path)
        entry = Spilled(member_id, path, num_examples, norm)
        self.entries[member_id] = entry
        return entry

    def members(self) -> list[int]:
        return sorted(self.entries)

    def columns(self, members: list[int] | None = None) -> Iterator[tuple[str, int, np.ndarray]]:
        """``(tensor, flat offset, block)``: a float64 ``(n, b)`` slice of the stacked updates.

        Rows follow ``members`` (default: every member, by id); ``b`` is
        chosen so that a block holds about :data:`BLOCK_BYTES`.
        """
        chosen = self.members() if members is None else members
        files = [SafetensorsFile(self.entries[m].path, self.manifest) for m in chosen]
        n = len(files)
        block = max(1024, BLOCK_BYTES // (8 * max(n, 1)))
        for name, shape in self.manifest.items():
            if math.prod(shape) == 0:
                continue
            readers = [f.chunks(name, block) for f in files]
            for parts in zip(*readers, strict=True):
                offset = parts[0][0]
                rows = np.empty((n, parts[0][1].size), dtype=np.float64)
                for i, (_, values) in enumerate(parts):
                    rows[i] = values
                yield name, offset, rows

    def discard(self) -> None:
        """Delete the round's files (after the close, or when the round is abandoned)."""
        for entry in self.entries.values():
            entry.path.unlink(missing_ok=True)
        self.entries.clear()
