"""``fedaas demo``: the one-command demonstration (``--example NAME`` picks ``examples/NAME.toml``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from fedaas.cli.common import RunFolderOpt, console, err

EXAMPLES = ("digits", "digits_images", "breast_cancer", "diabetes")


def demo(
    example: Annotated[
        str,
        typer.Option(
            "--example",
            help="The example to run: digits (MLP), digits_images (a CNN on PNG folders), "
            "breast_cancer (binary: AUROC, sensitivity), diabetes (regression: RMSE, R2).",
        ),
    ] = "digits",
    clients: Annotated[
        int | None,
        typer.Option(
            "--members",
            "--clients",
            min=2,
            max=200,
            help="Number of member processes (default: the example's: 10, 3 hospitals, 4 clinics).",
            show_default=False,
        ),
    ] = None,
    rounds: Annotated[
        int | None,
        typer.Option(
            min=1, max=10_000, help="Federated rounds (default: the example's).", show_default=False
        ),
    ] = None,
    alpha: Annotated[
        float | None,
        typer.Option(
            min=1e-3,
            help="Dirichlet skew of the partition (default: the example's; digits 0.5).",
            show_default=False,
        ),
    ] = None,
    out: RunFolderOpt = Path("runs/demo"),
    privacy: Annotated[
        str, typer.Option(help="Differential privacy: none, gaussian or ou (Ornstein-Uhlenbeck).")
    ] = "none",
    noise_multiplier: Annotated[float, typer.Option(min=0, help="Noise std / clip norm.")] = 1.0,
    clip_norm: Annotated[float, typer.Option(min=1e-6, help="L2 clip norm of each update.")] = 1.0,
    theta: Annotated[float, typer.Option(min=-0.999, max=0.999, help="OU correlation.")] = 0.5,
    unit: Annotated[
        str,
        typer.Option(
            help="client: protect each member's whole contribution (DP-FedAvg); "
            "record: each example, with DP-SGD inside every member (noise added locally)."
        ),
    ] = "client",
    placement: Annotated[
        str,
        typer.Option(
            help="Who adds the noise: central, local, or distributed (with --secure-aggregation)."
        ),
    ] = "central",
    storage: Annotated[
        str,
        typer.Option(
            help="local: members' data on disk; cloud: half in Google Cloud Storage, half in "
            "Azure Blob, coordinator artifacts in S3 (local emulators, started and stopped here)."
        ),
    ] = "local",
    epsilon_budget: Annotated[
        float | None, typer.Option(min=0, help="Stop before epsilon would exceed this.")
    ] = None,
    secure_aggregation: Annotated[
        bool,
        typer.Option(
            "--secure-aggregation",
            help="Mask the updates: the coordinator sees only their sum (SecAgg).",
        ),
    ] = False,
) -> None:
    """Federated vs local-only vs centralized training of an example, as real processes over HTTP."""
    from fedaas.sim.cluster import ClusterError
    from fedaas.sim.demo import run_demo

    if example not in EXAMPLES:
        raise typer.BadParameter(f"use one of {', '.join(EXAMPLES)}", param_hint="--example")
    if storage not in ("local", "cloud"):
        raise typer.BadParameter("use local or cloud", param_hint="--storage")
    settings: dict[str, object] | None = None
    if privacy != "none":
        settings = {
            "mechanism": privacy,
            "placement": "local" if unit == "record" else placement,
            "unit": unit,
            "noise_multiplier": noise_multiplier,
            "clip_norm": clip_norm,
        }
        if privacy == "ou":
            settings["theta"] = theta
        if epsilon_budget is not None:
            settings["epsilon_budget"] = epsilon_budget
    try:
        run_demo(
            clients=clients,
            rounds=rounds,
            alpha=alpha,
            out=out,
            console=console,
            privacy=settings,
            storage=storage,
            example=example,
            secure=secure_aggregation,
        )
    except (ClusterError, RuntimeError, ValueError, FileExistsError) as exc:  # one line
        err.print(f"[red]error:[/] {escape(str(exc))}", highlight=False)
        raise typer.Exit(2) from None
