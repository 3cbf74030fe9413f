"""Run folders (``metrics.json``, the final model, the job spec, ``accuracy.png``) and round lines.

What an operator keeps of a job and reads while it runs: both the CLI and
the demo print :func:`format_round`, and both write run folders here.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from fedaas.protocol import JobStatus, RoundRecord

ROUND_KEYS = ("round", "accuracy", "loss", "clients", "seconds", "bytes_up", "bytes_down")


def fresh_run_folder(out: Path, marker: str) -> None:
    """Make ``out`` an empty folder for a new run, marked by the subfolder ``marker`` meanwhile.

    What ``out`` holds already is replaced only when it is an earlier run's
    folder (its ``metrics.json``, or the ``marker`` of a run that was
    interrupted); a file, or a folder of anything else, is refused with
    :class:`FileExistsError` and left as it is: a mistyped ``--out`` never
    deletes someone's files.
    """
    if check_run_folder(out, marker):
        shutil.rmtree(out)
    (out / marker).mkdir(parents=True)


def check_run_folder(out: Path, marker: str) -> bool:
    """Whether ``out`` holds an earlier run (which a new run would replace); changes nothing.

    :class:`FileExistsError` when ``out`` is a file or a folder of anything
    else (see :func:`fresh_run_folder`).
    """
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out} is a file, not a run folder")
    if not (out.exists() and any(out.iterdir())):
        return False
    if not ((out / "metrics.json").is_file() or (out / marker).is_dir()):
        raise FileExistsError(
            f"{out} is not empty and not an earlier run's folder: "
            "choose another --out, or empty it first"
        )
    return True


def format_round(r: RoundRecord, total: int) -> str:
    """One line per round: accuracy, loss, members, seconds and epsilon when there is one.

    A reproducible private run says "(NOT private)" after its epsilon (client
    or record level); a client-level run that claims no amplification by
    subsampling (``q = 1``, or member-side noise) says so.
    """
    extra = r.model_extra or {}
    acc = "   -  " if r.accuracy is None else f"{r.accuracy:.4f}"
    loss = "   -  " if r.loss is None else f"{r.loss:.4f}"
    clients = "  -" if r.clients is None else f"{r.clients:>3}"  # hidden under client-level DP
    line = (
        f"round {r.round:>3}/{total}  accuracy {acc}  loss {loss}  "
        f"clients {clients}  {r.seconds:.3f} s"
    )
    flag = "" if extra.get("private", True) else " (NOT private)"
    if extra.get("record_epsilon") is not None:
        line += f"  record-level epsilon {extra['record_epsilon']:.3f}{flag}"
    if extra.get("epsilon") is not None:
        line += f"  epsilon {extra['epsilon']:.3f}{flag}"
        if extra.get("amplification") is False:
            line += " (no amplification by sampling claimed)"
    return line


def metrics_document(job: JobStatus, baselines: dict[str, Any] | None = None) -> dict[str, Any]:
    """The ``metrics.json`` content: one record per round (required keys first)."""
    rounds = []
    for record in job.rounds:
        values = record.model_dump()
        ordered = {key: values.get(key) for key in ROUND_KEYS}
        ordered.update({k: v for k, v in values.items() if k not in ordered})
        rounds.append(ordered)
    doc: dict[str, Any] = {
        "job": job.model_dump(include={"id", "name", "status", "reason", "round", "rounds_total"}),
        "rounds": rounds,
    }
    if baselines is not None:
        doc["baselines"] = baselines
    return doc


def plot_accuracy(
    path: Path,
    rounds: list[dict[str, Any]],
    baselines: dict[str, Any] | None,
    title: str,
    metric: str = "accuracy",
) -> None:
    """Federated ``metric`` per round, with the local-only band and centralized line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = [r["round"] for r in rounds if r.get(metric) is not None]
    ys = [r[metric] for r in rounds if r.get(metric) is not None]
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    ax.plot(xs, ys, marker="o", markersize=3, color="tab:blue", label="federated (FedAvg)")
    if baselines:
        local = baselines.get("local_only")
        if local:
            ax.axhspan(
                local["min"],
                local["max"],
                color="tab:orange",
                alpha=0.18,
                label="local-only (min-max)",
            )
            ax.axhline(
                local["mean"],
                color="tab:orange",
                linestyle="--",
                label=f"local-only mean {local['mean']:.3f}",
            )
        central = baselines.get("centralized")
        if central and central.get(metric) is not None:
            ax.axhline(
                central[metric],
                color="tab:green",
                linestyle=":",
                label=f"centralized {central[metric]:.3f}",
            )
    ax.set_xlabel("round")
    ax.set_ylabel(f"{metric} (held-out)")
    if metric not in ("loss", "rmse", "mae", "r2"):  # rates: the whole 0..1 scale
        ax.set_ylim(0, 1.02)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_run_folder(
    out: Path,
    job: JobStatus,
    model: bytes | None,
    baselines: dict[str, Any] | None = None,
    metric: str = "accuracy",
) -> Path:
    """Write the run folder of DESIGN.md for a job description from the API.

    ``metric``: what the plot shows per round (``accuracy.png``), e.g. ``auroc`` or ``rmse``.
    """
    out.mkdir(parents=True, exist_ok=True)
    doc = metrics_document(job, baselines)
    (out / "metrics.json").write_text(json.dumps(doc, indent=2) + "\n")
    if job.source:
        (out / "job.toml").write_text(job.source)
    (out / "spec.json").write_text(json.dumps(job.spec.to_dict(), indent=2) + "\n")
    if model is not None:
        (out / "model.safetensors").write_bytes(model)
    plot_accuracy(
        out / "accuracy.png",
        doc["rounds"],
        baselines,
        f"{job.name}: {metric} per round",
        metric,
    )
    return out
