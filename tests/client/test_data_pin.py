"""A member restarted on other data mid-job declines instead of counting a second partition."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fedaas.data.source import write_npz
from fedaas.sim.cluster import LocalCluster

pytestmark = pytest.mark.slow


def _data(path: Path, seed: int) -> str:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(60, 16)).astype(np.float32)
    write_npz(str(path), x, rng.integers(0, 4, 60))
    return str(path)


def test_a_member_restarted_on_other_data_declines_the_job(
    tmp_path: Path, make_spec: Callable[..., dict[str, Any]]
) -> None:
    spec = make_spec("pinned", 300, clients=None, min_clients=1, timeout=30)  # long: still running
    first, other = _data(tmp_path / "a.npz", 1), _data(tmp_path / "b.npz", 2)
    steady = _data(tmp_path / "c.npz", 3)
    with LocalCluster(tmp_path / "cluster") as cluster:
        cluster.start_server()
        cluster.start_client("hospital", first)
        cluster.start_client("steady", steady)
        cluster.wait_online(2)
        job = cluster.admin.submit(spec)
        deadline = time.monotonic() + 60
        while cluster.admin.job(job.id).round < 2:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        token = cluster._client_args["hospital"][1]
        cluster.kill_client("hospital")
        cluster.start_client("hospital", other, token=token)  # same identity, other records
        deadline = time.monotonic() + 60
        while "hospital" not in cluster.admin.job(job.id).declined:
            assert time.monotonic() < deadline, "the member never declined"
            time.sleep(0.2)
        reason = cluster.admin.job(job.id).declined["hospital"]
        final = cluster.admin.wait(job.id, timeout=180)
        log = (cluster.logs / "client-hospital.log").read_text()
    assert "joined job" in reason and "with other data" in reason, reason
    assert str(tmp_path) not in reason  # the member's paths stay on its machine
    assert final.status == "completed"
    assert "Traceback" not in log
