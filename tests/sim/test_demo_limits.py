"""``fedaas demo`` refuses, before it starts anything, a federation this machine cannot hold."""

from __future__ import annotations

from pathlib import Path

import pytest


def test_a_demo_that_would_not_fit_in_memory_is_refused_before_anything_starts(
    tmp_path: Path, monkeypatch
) -> None:
    """200 member processes take about 60 GiB: the demo says so instead of swapping (or being
    killed) half-way, and the earlier run's folder is left as it was."""
    from fedaas.sim import demo

    with pytest.raises(ValueError, match=r"200 member processes need about 62.8 GiB"):
        demo.check_memory(200, available=20 * 2**30)
    demo.check_memory(10, available=20 * 2**30)
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.json").write_text("{}")  # an earlier demo's folder
    monkeypatch.setattr(demo, "MEMBER_PROCESS_BYTES", 2**50)  # no machine has this much
    with pytest.raises(ValueError, match="use fewer --members, or `fedaas simulate`"):
        demo.run_demo(clients=3, out=out)
    assert [p.name for p in out.iterdir()] == ["metrics.json"]
