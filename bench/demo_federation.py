"""The demo workload's federation for benchmarks: real coordinator and member processes.

Digits split per-class Dirichlet 0.5 (seed 0) over ``members`` partitions,
one member process per partition, plus the held-out test split for the
coordinator's evaluation.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from fedaas.data.digits import digits_federation
from fedaas.data.source import write_npz
from fedaas.sim.cluster import LocalCluster


@contextmanager
def demo_federation(members: int, workdir: Path) -> Iterator[tuple[LocalCluster, Path]]:
    """A running federation with every member online: ``(cluster, held-out split path)``."""
    parts, (x_test, y_test) = digits_federation(members, 0.5, 0)
    data = workdir / "data"
    for i, (x, y) in enumerate(parts):
        write_npz(str(data / f"client_{i}.npz"), x, y)
    write_npz(str(data / "test.npz"), x_test, y_test)
    with LocalCluster(workdir / "cluster") as cluster:
        cluster.start_server()
        for i in range(members):
            cluster.start_client(f"m{i}", str(data / f"client_{i}.npz"))
        cluster.wait_online(members, timeout=600)
        yield cluster, data / "test.npz"
