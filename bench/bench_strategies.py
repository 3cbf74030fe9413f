"""Server optimizers side by side on the demo workload.

One coordinator and 10 member processes (digits, Dirichlet 0.5, MLP 64-64-10,
local SGD lr 0.05, 30 rounds) run one job per strategy, back to back on the
same federation: FedAvg, FedAvgM and the adaptive FedAdagrad, FedAdam and
FedYogi of Reddi et al. (ICLR 2021) at a few server learning rates. Prints
held-out accuracy after 10 rounds and at the end, and the ratio to FedAvg's.

    .venv/bin/python bench/bench_strategies.py [--rounds 30] [--members 10]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

from demo_federation import demo_federation
from fedaas.sim.demo import EXAMPLE_SPEC, demo_spec

STRATEGIES: list[dict[str, Any]] = [
    {"name": "fedavg"},
    {"name": "fedavgm", "server_lr": 1.0},
    {"name": "fedavgm", "server_lr": 0.3},
    {"name": "fedadagrad", "server_lr": 0.01},
    {"name": "fedadam", "server_lr": 0.01},
    {"name": "fedadam", "server_lr": 0.003},
    {"name": "fedyogi", "server_lr": 0.01},
]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--members", type=int, default=10)
    args = parser.parse_args()
    rows = []
    with (
        tempfile.TemporaryDirectory() as tmp,
        demo_federation(args.members, Path(tmp)) as (cluster, holdout),
    ):
        for strategy in STRATEGIES:
            _, spec = demo_spec(EXAMPLE_SPEC, args.members, args.rounds, holdout)
            spec["strategy"] = strategy
            job = cluster.admin.wait(cluster.admin.submit(spec).id).model_dump()
            if job["status"] != "completed":
                raise SystemExit(f"{strategy}: job {job['status']}: {job.get('reason')}")
            accuracy = [r["accuracy"] for r in job["rounds"]]
            label = strategy["name"] + (
                f" lr={strategy['server_lr']:g}" if "server_lr" in strategy else ""
            )
            rows.append((label, accuracy[min(9, len(accuracy) - 1)], accuracy[-1]))
            print(f"{label:<20} round 10 {rows[-1][1]:.4f}  final {rows[-1][2]:.4f}", flush=True)
    base = rows[0][2]
    print()
    print(f"{'strategy':<20} {'acc. round 10':>14} {'final accuracy':>15} {'vs fedavg':>10}")
    for label, early, final in rows:
        print(f"{label:<20} {early:>14.4f} {final:>15.4f} {final / base:>9.2f}x")


if __name__ == "__main__":
    main()
