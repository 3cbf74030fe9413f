"""CPU per round of the coordinator and of each member on the demo workload.

Wall time per round moves with whatever else the machine does; CPU seconds
per round move much less, so this is the figure to compare two versions by
(run each in alternation, with ``PYTHONPATH`` pointing at the other tree's
``src``). Reads ``utime + stime`` of every process from ``/proc`` when the job
is submitted, when its first round is seen closed, and when it ends: the
rounds after the first give the per-round figures, and what the first round
cost beyond them is shown apart (imports and caches on first use, e.g.
torchmetrics for the held-out evaluation), so the job's length does not
change the per-round figure.

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
    if args.rounds < 2:
        raise SystemExit("--rounds must be at least 2 (the first is counted apart)")
    with tempfile.TemporaryDirectory() as folder:
        with demo_federation(args.members, Path(folder)) as (cluster, holdout):
            _, spec = demo_spec(EXAMPLE_SPEC, args.members, args.rounds, holdout)
            assert cluster.server is not None
            pids = [p.pid for p in cluster.clients.values()]

            def cpu() -> tuple[float, float]:
                return cpu_seconds(cluster.server.pid), sum(map(cpu_seconds, pids))

            start = cpu()
            first: tuple[float, float] | None = None
            seen = 0
            for job, fresh in cluster.admin.follow(cluster.admin.submit(spec).id):
                if first is None and fresh and not job.finished:
                    first, seen = cpu(), fresh[-1].round
            end = cpu()
    if job.status != "completed" or first is None:
        raise SystemExit(f"job {job.status}: {job.reason}")
    later = args.rounds - seen
    server, members = ((e - f) / later for e, f in zip(end, first, strict=True))
    once = [f - s - seen * r for s, f, r in zip(start, first, (server, members), strict=True)]
    wall = statistics.median(r.seconds for r in job.rounds[1:])
    print(
        f"{args.members} members, {args.rounds} rounds: coordinator "
        f"{1000 * server:.1f} ms CPU/round (+{1000 * once[0]:.0f} ms once), each member "
        f"{1000 * members / args.members:.1f} ms CPU/round, median wall {wall:.4f} s/round, "
        f"accuracy {job.rounds[-1].accuracy:.4f}"
    )


if __name__ == "__main__":
    main()
