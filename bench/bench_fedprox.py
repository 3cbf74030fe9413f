"""FedProx's qualitative result on Synthetic(1,1), through ``fedaas simulate``'s engine.

Li et al. (MLSys 2020, arXiv:1812.06127), Figure 1: on Synthetic(1,1) with
30 devices, 10 sampled per round, 20 local epochs of SGD (lr 0.01, batch 10)
on multinomial logistic regression, FedProx with mu = 1 trains smoothly where
FedAvg oscillates, and with 90% stragglers FedAvg (which drops them) stalls
or diverges while FedProx (which keeps their partial work) keeps converging.
Stragglers run a uniform 1..E-1 epochs (:mod:`fedaas.algorithms.stragglers`).

The federation is one Synthetic(1,1) draw (``--data-seed``, 0), as the
authors' repository ships one generated data set; the seeds vary everything
else (the model's initialization, who is sampled, who straggles, the
members' shuffles). Four settings per seed: FedAvg and FedProx mu=1 at 0%
stragglers; FedAvg dropping and FedProx mu=1 keeping 90% stragglers. Every run is a real
``fedaas.sim.simulate.simulate`` job (the coordinator's and members' code of
the service). Its held-out set is set to all devices' pooled *training* data,
so each round's ``loss`` is the paper's training loss (the global model's
mean loss over every device's training examples); the test accuracy on the
devices' 10% test splits is computed from each round's model. Each run's
curves go to ``OUT/<setting>-seed<S>.json`` (kept, so an interrupted bench
resumes); then the table is printed and the curves plotted (mean over seeds,
min-max band) to ``--png``.

    .venv/bin/python bench/bench_fedprox.py                       # 3 seeds x 200 rounds
    .venv/bin/python bench/bench_fedprox.py --seeds 0 --rounds 20 # a short look
    .venv/bin/python bench/bench_fedprox.py --plot-only           # table + PNG from OUT
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from fedaas import tensors
from fedaas.data.source import write_npz
from fedaas.data.synthetic import synthetic_federation
from fedaas.sim.simulate import Stragglers, simulate
from fedaas.spec import parse_spec

SETTINGS: dict[str, dict[str, Any]] = {
    "fedavg-0": {"label": "FedAvg, 0% stragglers", "mu": 0.0, "share": 0.0, "drop": True},
    "fedprox-0": {"label": "FedProx mu=1, 0% stragglers", "mu": 1.0, "share": 0.0, "drop": False},
    "fedavg-90": {"label": "FedAvg, 90% stragglers dropped", "mu": 0.0, "share": 0.9, "drop": True},
    "fedprox-90": {
        "label": "FedProx mu=1, 90% stragglers kept",
        "mu": 1.0,
        "share": 0.9,
        "drop": False,
    },
}


def job_spec(mu: float, rounds: int, seed: int, holdout: Path, epochs: int) -> dict[str, Any]:
    """The paper's protocol as a fedaas job spec."""
    return {
        "job": {"name": "fedprox-synthetic", "rounds": rounds, "seed": seed},
        "model": {"name": "logreg"},
        "data": {"features": 60, "classes": 10},
        "train": {"optimizer": "sgd", "lr": 0.01, "batch_size": 10, "epochs": epochs, "mu": mu},
        "federation": {"clients_per_round": 10, "min_clients": 1},
        "strategy": {"name": "fedavg"},
        "evaluation": {"holdout": str(holdout)},
    }


def _logreg(model_bytes: bytes) -> tuple[np.ndarray, np.ndarray]:
    """The ``(weight, bias)`` of a ``logreg`` model's safetensors bytes."""
    state, _ = tensors.decode(model_bytes)
    (w,) = [v for k, v in state.items() if k.endswith("weight")]
    (b,) = [v for k, v in state.items() if k.endswith("bias")]
    return w, b


def test_metrics(model_bytes: bytes, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """``(accuracy, mean cross-entropy)`` of the logistic-regression model on ``(x, y)``."""
    w, b = _logreg(model_bytes)
    logits = x.astype(np.float64) @ w.T.astype(np.float64) + b
    logits -= logits.max(axis=1, keepdims=True)
    logp = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    return float((logits.argmax(axis=1) == y).mean()), float(-logp[np.arange(y.size), y].mean())


def run_one(key: str, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    """One simulated job; its per-round training loss and test accuracy."""
    setting = SETTINGS[key]
    data = args.out / "data" / f"synthetic-1-1-seed{args.data_seed}"
    data.mkdir(parents=True, exist_ok=True)
    parts, (x_test, y_test) = synthetic_federation(1.0, 1.0, args.devices, args.data_seed)
    pooled = data / "train_pooled.npz"
    if not pooled.exists():
        write_npz(
            str(pooled),
            np.concatenate([x for x, _ in parts]),
            np.concatenate([y for _, y in parts]),
        )
    spec = parse_spec(job_spec(setting["mu"], args.rounds, seed, pooled, args.epochs))
    test_acc: list[float] = []
    test_loss: list[float] = []

    def on_round(record: Any, model: bytes) -> None:
        accuracy, loss = test_metrics(model, x_test, y_test)
        test_acc.append(accuracy)
        test_loss.append(loss)

    stragglers = Stragglers(setting["share"], setting["drop"]) if setting["share"] else None
    began = time.perf_counter()
    result = simulate(
        spec,
        parts,  # written as member-<k>.npz, as the synthetic:1,1:N generator would
        out_dir=args.out / "runs" / f"{key}-seed{seed}",
        progress=False,
        stragglers=stragglers,
        workers=args.workers,
        on_round=on_round,
    )
    return {
        "setting": key,
        "seed": seed,
        "data_seed": args.data_seed,
        "rounds": len(result.job.rounds),
        "train_loss": [r.loss for r in result.job.rounds],
        "test_accuracy": test_acc,
        "test_loss": test_loss,
        "clients": [r.clients for r in result.job.rounds],
        "seconds": time.perf_counter() - began,
        "status": result.job.status,
    }


def summarize(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per setting, over seeds: final and best loss, loss increases, final test accuracy."""
    rows = []
    for key, setting in SETTINGS.items():
        mine = [r for r in runs if r["setting"] == key]
        if not mine:
            continue
        loss = [np.asarray(r["train_loss"], dtype=float) for r in mine]
        final = [lo[-1] for lo in loss]
        jumps = [int((np.diff(lo) > 0.05 * lo[1:]).sum()) for lo in loss]  # rises by > 5 %
        worst = [float(np.max(lo[len(lo) // 2 :]) - np.min(lo[len(lo) // 2 :])) for lo in loss]
        acc = [r["test_accuracy"][-1] for r in mine]
        rows.append(
            {
                "key": key,
                "label": setting["label"],
                "seeds": len(mine),
                "rounds": min(r["rounds"] for r in mine),
                "final_loss": (float(np.mean(final)), float(np.std(final))),
                "rises": float(np.mean(jumps)),
                "late_range": float(np.mean(worst)),
                "final_acc": (float(np.mean(acc)), float(np.std(acc))),
                "diverged": sum(not np.isfinite(f) or f > 10 for f in final),
            }
        )
    return rows


def print_table(rows: list[dict[str, Any]]) -> None:
    print(
        "| setting | seeds x rounds | final training loss | rounds the loss rose >5% | "
        "loss range, 2nd half | final test accuracy |"
    )
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['label']} | {r['seeds']} x {r['rounds']} | "
            f"{r['final_loss'][0]:.3f} ± {r['final_loss'][1]:.3f} | {r['rises']:.1f} | "
            f"{r['late_range']:.3f} | {r['final_acc'][0]:.3f} ± {r['final_acc'][1]:.3f} |"
        )


def plot(runs: list[dict[str, Any]], png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(9, 6), sharex=True)
    colors = {"fedavg": "tab:red", "fedprox": "tab:blue"}
    for col, share in enumerate(("0", "90")):
        for algo in ("fedavg", "fedprox"):
            mine = [r for r in runs if r["setting"] == f"{algo}-{share}"]
            if not mine:
                continue
            n = min(r["rounds"] for r in mine)
            label = SETTINGS[f"{algo}-{share}"]["label"].split(",")[0]
            for row, metric in enumerate(("train_loss", "test_accuracy")):
                values = np.array([r[metric][:n] for r in mine], dtype=float)
                rounds = np.arange(1, n + 1)
                ax = axes[row, col]
                ax.plot(rounds, np.nanmean(values, axis=0), color=colors[algo], label=label, lw=1)
                ax.fill_between(
                    rounds,
                    np.nanmin(values, axis=0),
                    np.nanmax(values, axis=0),
                    color=colors[algo],
                    alpha=0.2,
                    lw=0,
                )
        axes[0, col].set_title(f"Synthetic(1,1), {share}% stragglers")
        axes[0, col].set_ylabel("training loss")
        axes[1, col].set_ylabel("test accuracy")
        axes[1, col].set_xlabel("round")
        if axes[0, col].lines:
            axes[0, col].legend(fontsize=8)
    seeds = len({r["seed"] for r in runs})
    fig.suptitle(f"FedAvg vs FedProx (mu=1), mean and min-max over {seeds} seed(s)", fontsize=10)
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=70)
    print(f"plot: {png}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--devices", type=int, default=30)
    parser.add_argument(
        "--data-seed", type=int, default=0, help="seed of the Synthetic(1,1) data (fixed)"
    )
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("bench/out/fedprox"))
    parser.add_argument("--png", type=Path, default=Path("docs/fedprox_synthetic.png"))
    parser.add_argument("--plot-only", action="store_true", help="table and plot from --out")
    parser.add_argument("--force", action="store_true", help="rerun runs already in --out")
    args = parser.parse_args()
    results = args.out / "results"
    results.mkdir(parents=True, exist_ok=True)
    if not args.plot_only:
        for seed in args.seeds:
            for key in args.settings:
                path = results / f"{key}-seed{seed}.json"
                if path.exists() and not args.force:
                    previous = json.loads(path.read_text())
                    if previous["rounds"] >= args.rounds:
                        continue
                run = run_one(key, seed, args)
                path.write_text(json.dumps(run))
                print(
                    f"{key:<11} seed {seed}: {run['rounds']} rounds in {run['seconds']:.0f} s, "
                    f"loss {run['train_loss'][-1]:.3f}, test acc {run['test_accuracy'][-1]:.3f}",
                    flush=True,
                )
    runs = [json.loads(p.read_text()) for p in sorted(results.glob("*.json"))]
    runs = [r for r in runs if r["seed"] in args.seeds or args.plot_only]
    if not runs:
        raise SystemExit(f"no results in {results}")
    print_table(summarize(runs))
    plot(runs, args.png)


if __name__ == "__main__":
    main()
