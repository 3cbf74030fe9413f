"""Privacy-utility table on the demo workload.

One coordinator and 10 member processes (digits, Dirichlet 0.5, MLP 64-64-10,
FedAvg, 30 rounds) run one job per privacy setting, back to back on the same
federation: no privacy; client-level DP-FedAvg with independent Gaussian
noise at several noise multipliers; and Ornstein-Uhlenbeck noise at theta
0.5 and 0.9 with the same per-round sigma. Prints final held-out accuracy
and epsilon (PLD accountant, delta 1e-5) per setting, writes the table to
``bench/out/privacy.md`` and accuracy per round to ``bench/out/privacy.png``.

    .venv/bin/python bench/bench_privacy.py [--rounds 30] [--clip-norm 0.5]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

from demo_federation import demo_federation
from fedaas.sim.demo import EXAMPLE_SPEC, demo_spec

OUT = Path(__file__).resolve().parent / "out"


def settings(clip: float) -> list[tuple[str, dict[str, Any] | None]]:
    rows: list[tuple[str, dict[str, Any] | None]] = [("no privacy", None)]
    for z in (0.1, 0.3, 1.0, 3.0):
        rows.append(
            (f"gaussian z={z}", {"mechanism": "gaussian", "noise_multiplier": z, "clip_norm": clip})
        )
    for theta in (0.5, 0.9):
        rows.append(
            (
                f"OU z=0.3 theta={theta}",
                {"mechanism": "ou", "noise_multiplier": 0.3, "theta": theta, "clip_norm": clip},
            )
        )
    record = {"mechanism": "gaussian", "unit": "record", "placement": "local", "clip_norm": 1.0}
    rows.append(("DP-SGD record-level z=1.0", {**record, "noise_multiplier": 1.0}))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--members", type=int, default=10)
    parser.add_argument("--clip-norm", type=float, default=0.5)
    args = parser.parse_args()
    results: list[tuple[str, list[dict[str, Any]]]] = []
    with (
        tempfile.TemporaryDirectory() as tmp,
        demo_federation(args.members, Path(tmp)) as (cluster, holdout),
    ):
        for label, privacy in settings(args.clip_norm):
            _, spec = demo_spec(EXAMPLE_SPEC, args.members, args.rounds, holdout, privacy)
            job = cluster.admin.wait(cluster.admin.submit(spec).id).model_dump()
            if job["status"] != "completed":
                raise SystemExit(f"{label}: job {job['status']}: {job.get('reason')}")
            results.append((label, job["rounds"]))
            last = job["rounds"][-1]
            value = last.get("epsilon", last.get("record_epsilon"))
            eps = "inf" if value is None else f"{value:.2f}"
            print(f"{label:<24} accuracy {last['accuracy']:.4f}  epsilon {eps}", flush=True)

    lines = [
        f"| setting (clip norm {args.clip_norm}, {args.members} members, {args.rounds} rounds) | final accuracy | epsilon (delta 1e-5, PLD) |",
        "|---|---:|---:|",
    ]
    for label, rounds in results:
        last = rounds[-1]
        shown = "-" if last.get("epsilon") is None else f"{last['epsilon']:.1f}"
        if last.get("record_epsilon") is not None:
            shown = f"{last['record_epsilon']:.1f} (per record, RDP)"
        lines.append(f"| {label} | {last['accuracy']:.3f} | {shown} |")
    table = "\n".join(lines)
    print()
    print(table)
    OUT.mkdir(exist_ok=True)
    (OUT / "privacy.md").write_text(table + "\n")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    for label, rounds in results:
        ax.plot([r["round"] for r in rounds], [r["accuracy"] for r in rounds], label=label)
    ax.set_xlabel("round")
    ax.set_ylabel("held-out accuracy")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("privacy-utility on digits (client-level DP-FedAvg)")
    fig.tight_layout()
    fig.savefig(OUT / "privacy.png")
    print(f"wrote {OUT / 'privacy.md'} and {OUT / 'privacy.png'}")


if __name__ == "__main__":
    main()
