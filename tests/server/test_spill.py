"""The round's spill: updates held in memory within a budget, in files beyond it, read alike."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fedaas import tensors
from fedaas.server.spill import RoundSpill

MANIFEST: tensors.Manifest = {"w": (3, 4), "b": (4,)}


def _update(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    arrays = {name: rng.normal(size=shape).astype(np.float32) for name, shape in MANIFEST.items()}
    return tensors.encode(arrays, {"num_examples": str(10 + seed)})


def _parsed(body: bytes) -> tensors.SafetensorsFile:
    return tensors.SafetensorsFile(body, MANIFEST)


def _keep_all(spill: RoundSpill, bodies: dict[int, bytes]) -> None:
    for member, body in bodies.items():
        update = _parsed(body)  # as validation leaves it
        spill.keep(member, update, 1, update.finite_norm())


def _blocks(spill: RoundSpill) -> list[tuple[str, int, np.ndarray]]:
    return list(spill.columns())


def test_within_the_budget_nothing_is_written_and_blocks_are_the_same(tmp_path: Path) -> None:
    bodies = {m: _update(m) for m in (3, 1, 2)}
    on_disk = RoundSpill(tmp_path / "a", "job", 1, MANIFEST)
    in_memory = RoundSpill(tmp_path / "b", "job", 1, MANIFEST, memory_bytes=1 << 20)
    for spill in (on_disk, in_memory):
        spill.spool.mkdir()
        _keep_all(spill, bodies)
    assert len(list(on_disk.spool.iterdir())) == 3  # the service's default: a file each
    assert list(in_memory.spool.iterdir()) == []
    assert in_memory.held == sum(map(len, bodies.values()))
    for (n1, o1, r1), (n2, o2, r2) in zip(_blocks(on_disk), _blocks(in_memory), strict=True):
        assert (n1, o1) == (n2, o2) and np.array_equal(r1, r2)
    in_memory.discard()
    assert in_memory.held == 0 and in_memory.entries == {}


def test_beyond_the_budget_updates_go_to_files(tmp_path: Path) -> None:
    bodies = {m: _update(m) for m in range(1, 6)}
    size = len(bodies[1])
    spill = RoundSpill(tmp_path, "job", 2, MANIFEST, memory_bytes=2 * size)
    _keep_all(spill, bodies)
    assert spill.held == 2 * size
    held = [m for m, e in spill.entries.items() if e.parsed is not None]
    assert held == [1, 2]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        f"round-job-2-m{m}.safetensors" for m in (3, 4, 5)
    ]
    rows = np.concatenate([r for name, _, r in _blocks(spill) if name == "b"], axis=1)
    for i, member in enumerate(spill.members()):
        expected, _ = tensors.decode(bodies[member])
        assert np.array_equal(rows[i], expected["b"])
    spill.discard()
    assert list(tmp_path.iterdir()) == [] and spill.held == 0


def test_a_member_kept_twice_counts_once(tmp_path: Path) -> None:
    spill = RoundSpill(tmp_path, "job", 1, MANIFEST, memory_bytes=1 << 20)
    spill.keep(1, _parsed(_update(1)), 1, 1.0)
    spill.keep(1, _parsed(_update(2)), 1, 2.0)
    assert spill.held == len(_update(2)) and spill.entries[1].norm == 2.0
    small = RoundSpill(tmp_path, "job", 1, MANIFEST, memory_bytes=0)
    small.keep(1, _parsed(_update(1)), 1, 1.0)  # a file
    small.memory_bytes = 1 << 20
    small.keep(1, _parsed(_update(2)), 1, 2.0)  # now held: the file goes
    held = small.entries[1].parsed
    assert list(tmp_path.iterdir()) == [] and held is not None and held.payload == _update(2)


def test_raw_bytes_go_to_a_file_whatever_the_budget(tmp_path: Path) -> None:
    """Only a parsed update is held: the coordinator's inbox hands bytes, which are written."""
    spill = RoundSpill(tmp_path, "job", 1, MANIFEST, memory_bytes=1 << 20)
    spill.keep(1, _update(1), 1, 1.0)
    assert spill.held == 0 and [p.name for p in tmp_path.iterdir()] == [
        "round-job-1-m1.safetensors"
    ]
    assert np.array_equal(_blocks(spill)[0][2][0], tensors.decode(_update(1))[0]["w"].reshape(-1))
