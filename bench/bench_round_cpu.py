"""CPU per round of the coordinator and of each member on the demo workload.

Wall time per round moves with whatever else the machine does; CPU seconds
per round move much less, so this is the figure to compare two versions by
(run each in alternation, with ``PYTHONPATH`` pointing at the other tree's
``src``). Reads ``utime + stime`` of every process from ``/proc`` before and
after a 30-round job with 10 members.

    .venv/bin/python bench/bench_round_cpu.py [--members 10] [--rounds 30]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
from pathlib import Path

from demo_federation import demo_federation
from fedaas.sim.demo import EXAMPLE_SPEC, demo_spec


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        with demo_federation(args.members, Path(folder)) as (cluster, holdout):
            _, spec = demo_spec(EXAMPLE_SPEC, args.members, args.rounds, holdout)
            assert cluster.server is not None
            pids = [p.pid for p in cluster.clients.values()]
            server0, members0 = cpu_seconds(cluster.server.pid), sum(map(cpu_seconds, pids))
            job = cluster.admin.wait(cluster.admin.submit(spec).id)
            server1, members1 = cpu_seconds(cluster.server.pid), sum(map(cpu_seconds, pids))
    if job.status != "completed":
        raise SystemExit(f"job {job.status}: {job.reason}")
    wall = statistics.median(r.seconds for r in job.rounds[1:])
    per_member = 1000 * (members1 - members0) / args.rounds / args.members
    print(
        f"{args.members} members, {args.rounds} rounds: coordinator "
        f"{1000 * (server1 - server0) / args.rounds:.1f} ms CPU/round, each member "
        f"{per_member:.1f} ms CPU/round, median wall {wall:.4f} s/round, "
        f"accuracy {job.rounds[-1].accuracy:.4f}"
    )


if __name__ == "__main__":
    main()
