"""A federation of member processes this machine cannot hold is refused before anything starts.

``fedaas demo`` and :func:`fedaas.run_federation` start one process per member
(about 270 MiB each): 200 of them would swap or be killed half-way on a
24 GiB machine. Both say so first, and point to ``fedaas simulate``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest


def test_the_memory_needed_is_checked_against_what_is_available() -> None:
    from fedaas.sim.federation import check_memory

    with pytest.raises(ValueError, match=r"200 member processes need about 62.8 GiB"):
        check_memory(200, available=20 * 2**30)
    check_memory(10, available=20 * 2**30)


def test_a_demo_or_federation_that_would_not_fit_starts_nothing_and_changes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fedaas.api import run_federation
    from fedaas.sim import demo, federation

    monkeypatch.setattr(federation, "MEMBER_PROCESS_BYTES", 2**50)  # no machine has this much
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.json").write_text("{}")  # an earlier demo's folder
    with pytest.raises(ValueError, match="use fewer members, or `fedaas simulate`"):
        demo.run_demo(clients=3, out=out)
    assert [p.name for p in out.iterdir()] == ["metrics.json"]
    parts = [(np.zeros((4, 64), np.float32), np.arange(4)) for _ in range(3)]
    with pytest.raises(ValueError, match="3 member processes need about"):
        run_federation(demo.EXAMPLE_SPEC, parts, out=tmp_path / "local", baselines=False)
    assert not (tmp_path / "local").exists()
