"""Where a simulated round's CPU goes: the members' code and the driver's, per member.

``bench_simulate.py`` times the real command, whose small rounds swing by a
third on a shared machine. This runs the same ``fedaas.sim.simulate`` API
with an in-process backend instead: one thread trains each chunk of members
(the workers' own code, :class:`~fedaas.sim.simulate.members.VirtualMembers`)
and then folds and aggregates it (the driver's, the coordinator's code), so
nothing waits on anything else and thread CPU time splits the round between
the two sides exactly. Printed per size (the demo workload on digits,
Dirichlet 0.5, every member every round): local SGD steps per round, then
the members' CPU and the driver's (checking, summing, the server step, the
held-out evaluation, the saved model) per round and per member.

    .venv/bin/python bench/bench_simulate_cpu.py [--sizes 10 100] [--rounds 30]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from bench_simulate import EXAMPLE, workload
from fedaas.sim.simulate import simulate
from fedaas.sim.simulate.members import VirtualMembers


class InlinePool:
    """The simulation backend as one in-process worker, its CPU time counted apart."""

    size = 2  # chunks as for two workers, the bench machine's

    def __init__(self) -> None:
        self.members = VirtualMembers()
        self.cpu = 0.0

    def _handle(self, frame: bytes) -> bytes:
        began = time.thread_time()
        answer = self.members.handle(frame)
        self.cpu += time.thread_time() - began
        return answer

    def broadcast(self, frame: bytes) -> list[bytes]:
        return [self._handle(frame)] * self.size

    def run(self, frames: Sequence[bytes], on_answer: Callable[[int, bytes], None]) -> None:
        for i, frame in enumerate(frames):
            on_answer(i, self._handle(frame))

    def close(self) -> None:
        pass


def measure(members: int, rounds: int, folder: Path) -> dict[str, Any]:
    """Median members' and driver's CPU seconds per round over ``rounds`` (the first left out)."""
    spec, partitions, steps = workload(members, rounds, folder)
    pool = InlinePool()
    samples: list[tuple[float, float]] = []
    mark = [time.thread_time(), 0.0]

    def on_round(record: Any, model: bytes) -> None:
        now = time.thread_time()
        total, members_cpu = now - mark[0], pool.cpu - mark[1]
        samples.append((members_cpu, total - members_cpu))
        mark[0], mark[1] = time.thread_time(), pool.cpu

    simulate(
        spec,
        partitions,
        backend=pool,
        out_dir=folder / f"run-{members}",
        progress=False,
        on_round=on_round,
    )
    later = samples[1:] or samples
    return {
        "steps": steps,
        "members_cpu": statistics.median(m for m, _ in later),
        "driver_cpu": statistics.median(d for _, d in later),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 100])
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args()
    if args.rounds < 2 or any(not 2 <= n <= 100 for n in args.sizes):
        raise SystemExit("rounds must be >= 2 and sizes within 2..100 (digits)")
    torch.set_num_threads(1)  # as a worker
    print(f"demo workload ({EXAMPLE.name}), {args.rounds} rounds, CPU per round (median)")
    print(
        "| members | steps/round | members ms/round | driver ms/round | members us/member | "
        "driver us/member |"
    )
    print("|---:|---:|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory(prefix="bench-simulate-cpu-") as tmp:
        for n in args.sizes:
            row = measure(n, args.rounds, Path(tmp))
            print(
                f"| {n} | {row['steps']} | {1e3 * row['members_cpu']:.1f} | "
                f"{1e3 * row['driver_cpu']:.1f} | {1e6 * row['members_cpu'] / n:.0f} | "
                f"{1e6 * row['driver_cpu'] / n:.0f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
