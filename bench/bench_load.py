"""One coordinator, 100 members uploading at once: throughput and memory.

A real coordinator process runs one round of a 1.01M-parameter model (an MLP
1000-1000-10, a 4 MB update) sampled over N members, for N = 25 and 100.
Members are played by a pool of 4 worker processes, each holding a quarter of
the members as concurrent connections: all N long-poll for the task and
upload at the same time. The script checks that every update was accepted
exactly once (the round counts N) and prints updates per second and the
coordinator's peak memory above idle, side by side.

    .venv/bin/python bench/bench_load.py [--members 25 100] [--workers 4]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from bench_memory import run

MODEL = {"name": "mlp", "hidden": [1000]}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--members", type=int, nargs="+", default=[25, 100])
    parser.add_argument("--workers", type=int, default=4)
    args = parser.parse_args()
    results = []
    for n in args.members:
        with tempfile.TemporaryDirectory() as tmp:
            results.append(run(n, args.workers, Path(tmp), MODEL, features=1000, concurrent=True))
        r = results[-1]
        print(f"{n} concurrent members: {r['updates_per_s']:.1f} updates/s", flush=True)
    print()
    print(
        f"{'members':>8} {'model MB':>9} {'updates/s':>10} {'MB/s in':>8} "
        f"{'peak above idle MB':>19} {'x model':>8}"
    )
    for r in results:
        print(
            f"{r['members']:>8} {r['model_mb']:>9.1f} {r['updates_per_s']:>10.1f} "
            f"{r['mb_per_s']:>8.1f} {r['peak_above_idle_mb']:>19.1f} "
            f"{r['peak_above_idle_mb'] / r['model_mb']:>8.2f}"
        )
    if len(results) > 1:
        a, b = results[0], results[-1]
        print(
            f"{b['members']} vs {a['members']} members: peak above idle "
            f"x{b['peak_above_idle_mb'] / a['peak_above_idle_mb']:.2f}, every update counted once"
        )


if __name__ == "__main__":
    main()
