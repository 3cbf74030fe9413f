"""The accepted updates of the open round, kept on disk until the round closes.

Robust rules (coordinate-wise median, trimmed mean, Krum) need every update
at once, and even the mean needs every member's claimed example count before
any weight is known (:class:`fedaas.algorithms.robust.ExampleCap`). So each
validated upload stays in the artifact spool as its safetensors file
(``round-<job>-<round>-m<member>.safetensors``; an upload that was already
spooled is renamed, a small one in memory is written) and only its norm and
claim are kept in memory. A spill may instead hold updates given parsed in
memory (a :class:`~fedaas.tensors.SafetensorsFile` of bytes, as validation
left it) up to ``memory_bytes`` in all (:data:`MEMORY_BYTES` for the
coordinator and ``fedaas simulate``: a file written, read back and deleted per
small update cost the coordinator about a tenth of a plain round's CPU, on its
event loop); beyond that budget they go to files as above. At the close, :mod:`fedaas.server.aggregation`
reads them back in column blocks (:meth:`RoundSpill.columns`), so
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

MEMORY_BYTES = 32 * 1024 * 1024
"""The round's updates held in memory before the rest go to files: a fixed cost, whatever
the number of members (uploads over 4 MiB arrive as spool files and are renamed, never held)."""


@dataclass(frozen=True)
class Spilled:
    """One member's accepted update: where it lies, what it claimed, its norm."""

    member_id: int
    path: Path | None
    """Its file (``None`` while it is held in memory)."""
    num_examples: int
    norm: float
    parsed: SafetensorsFile | None = None
    """The update itself, parsed, when it is held in memory."""

    def open(self, manifest: Manifest) -> SafetensorsFile:
        if self.parsed is not None:
            return self.parsed
        assert self.path is not None
        return SafetensorsFile(self.path, manifest)


@dataclass
class RoundSpill:
    """The round's accepted updates by member id (see the module docstring)."""

    spool: Path
    job_id: str
    number: int
    manifest: Manifest
    memory_bytes: int = 0
    """Updates given parsed from bytes are held in memory while they total at most this much."""
    entries: dict[int, Spilled] = field(default_factory=dict)
    held: int = 0
    """Bytes of the updates held in memory."""

    def path_for(self, member_id: int) -> Path:
        return self.spool / f"round-{self.job_id}-{self.number}-m{member_id}.safetensors"

    def keep(
        self, member_id: int, body: bytes | Path | SafetensorsFile, num_examples: int, norm: float
    ) -> Spilled:
        """Keep a validated update (one parsed in memory is held within the memory budget,
        other bytes are written, a spool file is renamed); a member's earlier update for the
        round is replaced."""
        previous = self.entries.pop(member_id, None)
        if previous is not None and previous.parsed is not None:
            self.held -= _size(previous.parsed)
        if isinstance(body, SafetensorsFile):
            if body.payload is not None and self.held + _size(body) <= self.memory_bytes:
                if previous is not None and previous.path is not None:
                    previous.path.unlink(missing_ok=True)
                self.held += _size(body)
                entry = Spilled(member_id, None, num_examples, norm, body)
                self.entries[member_id] = entry
                return entry
            body = body.payload if body.payload is not None else body.path
            assert body is not None
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
        files = [self.entries[m].open(self.manifest) for m in chosen]
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
            if entry.path is not None:
                entry.path.unlink(missing_ok=True)
        self.entries.clear()
        self.held = 0


def _size(update: SafetensorsFile) -> int:
    assert update.payload is not None
    return len(update.payload)
