"""Does a round cost the coordinator more late in a long job than early on?

The demo's job (digits, MLP 64-10, FedAvg, held-out evaluation on the
coordinator) for ``--rounds`` rounds with ``--members`` member agents, each
its own ``fedaas client`` process, while an operator follows the job as
the Python API's ``Job.wait`` does (:meth:`fedaas.client.admin.AdminClient.follow`:
one long-poll per round) and the coordinator's operator view scans once a
second; ``--privacy gaussian|ou`` adds central client-level DP (accountant and
all), ``--secure`` secure aggregation. Printed: the coordinator's CPU
milliseconds per round, the members' (summed over their processes), and the
follower's (this process: the answers it receives and parses), over the
first ``--window`` rounds after round 10 and over the last ``--window``
rounds, and their ratio measured in the same run. A round's own work does
not change with its number, so a ratio above 1 is what the job's history
costs: anything that rereads every past round on each round or each tick.

    .venv/bin/python bench/bench_long_job.py [--rounds 400] [--members 10] [--window 50]
        [--privacy none|gaussian|ou] [--secure]
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path

from bench_secagg import cpu_seconds
from fedaas.data.digits import digits_federation
from fedaas.data.source import write_npz
from fedaas.sim.cluster import LocalCluster
from fedaas.sim.demo import EXAMPLE_SPEC, demo_spec


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=400)
    parser.add_argument("--members", type=int, default=10)
    parser.add_argument("--window", type=int, default=50)
    parser.add_argument("--privacy", choices=["none", "gaussian", "ou"], default="none")
    parser.add_argument("--secure", action="store_true", help="with secure aggregation")
    args = parser.parse_args()
    if args.rounds < 10 + 2 * args.window:
        raise SystemExit("--rounds must leave room for two windows after round 10")
    first = (10, 10 + args.window)
    last = (args.rounds - args.window, args.rounds)
    marks: dict[int, tuple[float, float, float]] = {}
    privacy = None
    if args.privacy != "none":  # central noise, no budget: the job runs all its rounds
        privacy = {"mechanism": args.privacy, "noise_multiplier": 0.5, "clip_norm": 1.0}
    with tempfile.TemporaryDirectory(prefix="bench-long-job-") as tmp:
        workdir = Path(tmp)
        parts, (x_test, y_test) = digits_federation(args.members, 0.5, 0)
        for i, (x, y) in enumerate(parts):
            write_npz(str(workdir / f"m{i}.npz"), x, y)
        write_npz(str(workdir / "test.npz"), x_test, y_test)
        _, spec = demo_spec(
            EXAMPLE_SPEC, args.members, args.rounds, workdir / "test.npz", privacy, args.secure
        )
        spec["federation"]["min_clients"] = math.ceil(args.members / 2)
        with LocalCluster(workdir / "cluster") as cluster:
            cluster.start_server()
            for i in range(args.members):
                cluster.start_client(f"m{i}", str(workdir / f"m{i}.npz"))
            cluster.wait_online(args.members, timeout=300)
            assert cluster.server is not None
            pid = cluster.server.pid
            members = [p.pid for p in cluster.clients.values()]
            job_id = cluster.admin.submit(spec).id
            began = time.perf_counter()
            for job, fresh in cluster.admin.follow(job_id, timeout=3600):
                for record in fresh:
                    if record.round in (*first, *last):
                        marks[record.round] = (
                            cpu_seconds(pid),
                            sum(cpu_seconds(m) for m in members),
                            time.thread_time(),
                        )
                if job.finished:
                    if job.status != "completed":
                        raise SystemExit(f"job {job.status}: {job.reason}")
                    break
            wall = time.perf_counter() - began
    missing = [n for n in (*first, *last) if n not in marks]
    if missing:
        raise SystemExit(f"rounds {missing} were not seen one by one; try more --rounds")

    def per_round(window: tuple[int, int], side: int) -> float:
        a, b = window
        return 1e3 * (marks[b][side] - marks[a][side]) / (b - a)

    mode = f"privacy {args.privacy}" + (", secure aggregation" if args.secure else "")
    print(f"{args.members} members, {args.rounds} rounds, {mode}: {wall:.1f} s")
    (a, b), (c, d) = first, last
    print(f"| side | ms/round, rounds {a}-{b} | ms/round, rounds {c}-{d} | late / early |")
    print("|---|---:|---:|---:|")
    for name, side in (("coordinator CPU", 0), ("members' CPU", 1), ("follower CPU", 2)):
        early, late = per_round(first, side), per_round(last, side)
        print(f"| {name} | {early:.2f} | {late:.2f} | x{late / early:.2f} |")


if __name__ == "__main__":
    main()
