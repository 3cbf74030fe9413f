"""``fedaas simulate`` at 10, 50, 100 and 1000 virtual members, side by side.

The demo workload (``examples/digits.toml`` as ``fedaas demo`` runs it: MLP
64-64-10, local SGD lr 0.05, batch 32, one epoch, every member sampled every
round, evaluation on the held-out split only) over scikit-learn's
digits split per-class Dirichlet(0.5) for 10, 50 and 100 members, and over
the FedProx paper's Synthetic(1,1) for 1000 (digits has too few examples for
1000 members; the same MLP with 60 inputs). Each size runs the real command
(``fedaas simulate SPEC --partitions ... --json``) as a child process, whose
process tree (the command and its worker processes) is sampled with psutil
every 50 ms for its summed resident memory (RSS; shared pages counted once per
process, as ``ps`` shows them). Printed per size: local SGD steps per round
(sum over members of ceil(examples / batch) x epochs), the median round time
and the time per step and per member, the whole command's wall time, peak memory, and each
as a ratio to the 10-member run. Targets (issue 13): 1000 members within 2x
the 10-member run's memory; round time growing no faster than the steps.

    .venv/bin/python bench/bench_simulate.py              # 10 rounds per size
    .venv/bin/python bench/bench_simulate.py --quick      # 3 rounds per size
    .venv/bin/python bench/bench_simulate.py --sizes 10 1000 --workers 2
    .venv/bin/python bench/bench_simulate.py --sizes 10 50 100 --repeat 5   # a noisy machine
    .venv/bin/python bench/bench_simulate.py --sizes 10 100 --hidden 512 512  # a bigger model
"""

from __future__ import annotations

import argparse
import json
import math
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil

from fedaas.data.digits import digits_federation
from fedaas.data.synthetic import device_size

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "digits.toml"
FEDAAS = Path(sys.executable).with_name("fedaas")
SEED = 0


def _set(toml: str, key: str, value: int) -> str:
    """``key = ...`` replaced in the example spec (each key appears once there)."""
    new, count = re.subn(rf"(?m)^{key} = .*$", f"{key} = {value}", toml)
    if count != 1:
        raise SystemExit(f"{EXAMPLE} has {count} '{key} =' lines; expected one")
    return new


def workload(
    members: int, rounds: int, folder: Path, hidden: list[int] | None = None
) -> tuple[Path, str, int]:
    """``(spec file, --partitions, local SGD steps per round)`` for ``members``; ``hidden``:
    the MLP's hidden layers instead of the demo's."""
    toml = EXAMPLE.read_text()
    if hidden:
        toml, count = re.subn(r"(?m)^hidden = .*$", f"hidden = {list(hidden)}", toml)
        if count != 1:
            raise SystemExit(f"{EXAMPLE} has {count} 'hidden =' lines; expected one")
    toml = _set(toml, "rounds", rounds)
    toml = _set(toml, "seed", SEED)
    toml = _set(toml, "clients_per_round", members)
    toml = _set(toml, "min_clients", members)
    # as `fedaas demo` runs it: members train on all their data, the coordinator evaluates
    # on the generator's held-out split
    toml = re.sub(r"(?m)^validation_split = .*$", "validation_split = 0", toml)
    batch = int(re.search(r"(?m)^batch_size = (\d+)", toml).group(1))  # type: ignore[union-attr]
    epochs = int(re.search(r"(?m)^epochs = (\d+)", toml).group(1))  # type: ignore[union-attr]
    if members <= 100:
        parts, _ = digits_federation(members, 0.5, SEED)
        sizes = [y.size for _, y in parts]
        partitions = f"dirichlet:digits:{members}:0.5"
    else:
        toml = _set(toml, "features", 60)
        sizes = [int(0.9 * device_size(SEED, k)) for k in range(members)]
        partitions = f"synthetic:1,1:{members}"
    spec = folder / f"spec-{members}.toml"
    spec.write_text(toml)
    return spec, partitions, sum(epochs * math.ceil(n / batch) for n in sizes)


def _tree_rss(proc: psutil.Process) -> int:
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except psutil.Error:  # exited between listing and reading
            pass
    return total


def measure(argv: list[str]) -> tuple[float, int, str]:
    """Run ``argv``; ``(wall seconds, peak summed RSS of its process tree, stdout)``."""
    began = time.perf_counter()
    child = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = 0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        proc = psutil.Process(child.pid)
        while not done.is_set():
            try:
                peak = max(peak, _tree_rss(proc))
            except psutil.Error:
                return
            done.wait(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, err = child.communicate()
    wall = time.perf_counter() - began
    done.set()
    sampler.join()
    if child.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({child.returncode}):\n{err[-3000:]}")
    return wall, peak, out


def run_size(members: int, args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    spec, partitions, steps = workload(members, args.rounds, folder, args.hidden)
    run = folder / f"run-{members}"
    argv = [str(FEDAAS), "simulate", str(spec), "--partitions", partitions, "--out", str(run)]
    argv += ["--json", "--no-progress"]
    if args.workers:
        argv += ["--workers", str(args.workers)]
    wall, peak, out = measure(argv)
    summary = json.loads(out.strip().splitlines()[-1])
    rounds = json.loads((run / "metrics.json").read_text())["rounds"]
    seconds = [r["seconds"] for r in rounds]
    return {
        "members": members,
        "data": partitions,
        "steps": steps,
        "round_median": statistics.median(seconds),
        "wall": wall,
        "setup": summary.get("setup_seconds"),
        "peak": peak,
        "accuracy": summary.get("accuracy"),
    }


def combined(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One size's runs as one row: medians of the round median and command time, the
    highest peak memory, and the lowest and highest round median."""
    medians = [r["round_median"] for r in runs]
    return {
        **runs[0],
        "round_median": statistics.median(medians),
        "round_range": (min(medians), max(medians)),
        "wall": statistics.median(r["wall"] for r in runs),
        "peak": max(r["peak"] for r in runs),
    }


def table(rows: list[dict[str, Any]]) -> str:
    base = rows[0]
    lines = [
        f"| members | data | SGD steps/round | round median (s) | ms/step | ms/member | command (s) | "
        f"peak RSS (MiB) | steps vs {base['members']} | round time vs {base['members']} | "
        f"memory vs {base['members']} | accuracy |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        low, high = r["round_range"]
        spread = f" ({low:.3f}-{high:.3f})" if high > low else ""
        lines.append(
            f"| {r['members']} | {r['data']} | {r['steps']} | {r['round_median']:.3f}{spread} | "
            f"{1000 * r['round_median'] / r['steps']:.2f} | "
            f"{1000 * r['round_median'] / r['members']:.2f} | {r['wall']:.1f} | "
            f"{r['peak'] / 2**20:.0f} | {r['steps'] / base['steps']:.1f}x | "
            f"{r['round_median'] / base['round_median']:.1f}x | "
            f"{r['peak'] / base['peak']:.2f}x | {r['accuracy']:.3f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 50, 100, 1000])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--workers", type=int, default=None, help="default: one per core")
    parser.add_argument("--quick", action="store_true", help="3 rounds per size")
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="run every size this many times, sizes interleaved; each row is then the median "
        "run (its round median; peak memory: the highest), with the range of round medians",
    )
    parser.add_argument(
        "--hidden",
        type=int,
        nargs="+",
        default=None,
        help="the MLP's hidden layers (default: the demo's 64); a larger model costs more per "
        "step, and more per member too (its update encoded, sent, checked and summed)",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = parser.parse_args()
    if args.quick:
        args.rounds = 3
    if args.rounds < 1 or args.repeat < 1 or any(n < 2 for n in args.sizes):
        raise SystemExit("rounds and repeat must be >= 1 and sizes >= 2")
    runs: dict[int, list[dict[str, Any]]] = {n: [] for n in args.sizes}
    with tempfile.TemporaryDirectory(prefix="bench-simulate-") as tmp:
        for repeat in range(args.repeat):  # sizes interleaved: a noisy spell hits them alike
            for members in args.sizes:
                row = run_size(members, args, Path(tmp))
                runs[members].append(row)
                print(
                    f"{members:>5} members (run {repeat + 1}/{args.repeat}): round median "
                    f"{row['round_median']:.3f} s, {row['steps']} steps, command "
                    f"{row['wall']:.1f} s, peak {row['peak'] / 2**20:.0f} MiB",
                    flush=True,
                )
    rows = [combined(runs[n]) for n in args.sizes]
    print()
    print(table(rows))
    base = rows[0]
    print()
    for row in rows[1:]:
        time_ratio = row["round_median"] / base["round_median"]
        steps_ratio = row["steps"] / base["steps"]
        print(
            f"{row['members']} vs {base['members']} members: memory "
            f"{row['peak'] / base['peak']:.2f}x (target <= 2); round time "
            f"{time_ratio:.2f}x for {steps_ratio:.2f}x the steps (target: no faster: "
            f"{'met' if time_ratio <= steps_ratio else 'not met'})"
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
