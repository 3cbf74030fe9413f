"""Seconds per round and coordinator peak memory on the demo workload.

Runs the demo's job (digits, MLP 64-64-10, FedAvg, held-out evaluation on the
coordinator) with a real coordinator process and N real member processes on
loopback, for N = 10 and N = 50, and prints the median and p90 round time
and the coordinator's peak resident memory (VmHWM) for each, side by side.

    .venv/bin/python bench/bench_rounds.py [--rounds 30] [--members 10 50]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from bench_memory import rss_mb
from demo_federation import demo_federation
from fedaas.sim.demo import EXAMPLE_SPEC, demo_spec


def run(members: int, rounds: int, workdir: Path) -> dict[str, float]:
    with demo_federation(members, workdir) as (cluster, holdout):
        _, spec = demo_spec(EXAMPLE_SPEC, members, rounds, holdout)
        assert cluster.server is not None
        t0 = time.perf_counter()
        job = cluster.admin.wait(cluster.admin.submit(spec).id).model_dump()
        wall = time.perf_counter() - t0
        peak = rss_mb(cluster.server.pid, "VmHWM")
    if job["status"] != "completed":
        raise SystemExit(f"job {job['status']}: {job.get('reason')}")
    # round 1 includes every member's first model build and torch warm-up
    seconds = [r["seconds"] for r in job["rounds"][1:]]
    print("rounds:", " ".join(f"{s:.3f}" for s in seconds))
    return {
        "members": members,
        "median_s": statistics.median(seconds),
        "p90_s": statistics.quantiles(seconds, n=10)[-1],
        "first_round_s": job["rounds"][0]["seconds"],
        "job_wall_s": wall,
        "final_accuracy": job["rounds"][-1]["accuracy"],
        "server_peak_rss_mb": peak,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--members", type=int, nargs="+", default=[10, 50])
    args = parser.parse_args()
    results = []
    for n in args.members:
        with tempfile.TemporaryDirectory() as tmp:
            results.append(run(n, args.rounds, Path(tmp)))
            r = results[-1]
            print(f"{n} members: median round {r['median_s']:.4f} s", flush=True)
    print()
    print(
        f"{'members':>8} {'median s/round':>15} {'p90 s/round':>12} {'round 1 s':>10} {'accuracy':>9} {'coord. peak RSS MB':>19}"
    )
    for r in results:
        print(
            f"{r['members']:>8} {r['median_s']:>15.4f} {r['p90_s']:>12.4f} {r['first_round_s']:>10.2f} "
            f"{r['final_accuracy']:>9.4f} {r['server_peak_rss_mb']:>19.1f}"
        )
    if len(results) > 1:
        base = results[0]
        for r in results[1:]:
            print(
                f"{r['members']} vs {base['members']} members: round time x{r['median_s'] / base['median_s']:.2f}, "
                f"coordinator peak memory x{r['server_peak_rss_mb'] / base['server_peak_rss_mb']:.2f}"
            )


if __name__ == "__main__":
    main()
