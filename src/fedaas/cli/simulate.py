"""``fedaas simulate``: a whole federation of virtual members in one command."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from fedaas.cli.common import RunFolderOpt, console, err
from fedaas.cli.nodes import AllowCodeOpt, allow_code_packages


def simulate(
    spec: Annotated[Path, typer.Argument(help="The job spec (TOML).", exists=True, dir_okay=False)],
    partitions: Annotated[
        str,
        typer.Option(
            help="The members' data: a folder or object-store URL with one file (or folder) per "
            "member (one named test is the held-out set), or a generator: "
            "dirichlet:digits:N (Dirichlet 0.5; append :ALPHA for another) or "
            "synthetic:ALPHA,BETA:N.",
        ),
    ],
    members: Annotated[
        int | None,
        typer.Option(min=1, help="Members: N of a generator, or the first N entries of a folder."),
    ] = None,
    backend: Annotated[
        str, typer.Option(help="local (worker processes on this machine) or ray.")
    ] = "local",
    address: Annotated[
        str | None,
        typer.Option(
            help="HOST:PORT of a running Ray cluster (with --backend ray).", show_default=False
        ),
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Worker processes or Ray actors (default: one per core).",
            show_default=False,
        ),
    ] = None,
    cpus_per_member: Annotated[
        float, typer.Option(min=0.01, help="Ray: CPUs each actor reserves.")
    ] = 1.0,
    gpus_per_member: Annotated[
        float, typer.Option(min=0, help="Ray: GPUs each actor reserves (fractions allowed).")
    ] = 0.0,
    stragglers: Annotated[
        float,
        typer.Option(min=0, max=1, help="Share of each round's sampled members that straggle."),
    ] = 0.0,
    straggler_mode: Annotated[
        str,
        typer.Option(help="epochs: stragglers run fewer local epochs; drop: they send nothing."),
    ] = "epochs",
    seed: Annotated[
        int | None, typer.Option(min=0, help="Replaces the spec's job seed.", show_default=False)
    ] = None,
    out: RunFolderOpt = Path("runs/simulate"),
    no_progress: Annotated[bool, typer.Option("--no-progress", help="No progress bar.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
    allow_code: AllowCodeOpt = None,
) -> None:
    """Simulate a federation: the service's coordinator and member code, virtual members."""
    from fedaas.report import format_round
    from fedaas.sim.simulate import NotSimulated, PartitionError, Stragglers
    from fedaas.sim.simulate import simulate as run
    from fedaas.sim.simulate.ray_pool import RayUnavailable

    if backend not in ("local", "ray"):
        raise typer.BadParameter("use local or ray", param_hint="--backend")
    if straggler_mode not in ("epochs", "drop"):
        raise typer.BadParameter("use epochs or drop", param_hint="--straggler-mode")
    if address is not None and backend != "ray":
        raise typer.BadParameter("--address needs --backend ray", param_hint="--address")
    if backend != "ray" and (cpus_per_member, gpus_per_member) != (1.0, 0.0):
        raise typer.BadParameter(
            "what each Ray actor reserves: it needs --backend ray",
            param_hint="--cpus-per-member / --gpus-per-member",
        )
    late = Stragglers(stragglers, drop=straggler_mode == "drop") if stragglers > 0 else None
    try:
        result = run(
            spec,
            partitions,
            members=members,
            backend=backend,  # type: ignore[arg-type]
            address=address,
            workers=workers,
            cpus_per_member=cpus_per_member,
            gpus_per_member=gpus_per_member,
            out_dir=out,
            progress=not no_progress and not as_json,
            stragglers=late,
            seed=seed,
            allow_code=tuple(allow_code_packages(allow_code)),
            console=console,
        )
    except (PartitionError, NotSimulated, FileExistsError, RayUnavailable) as exc:
        err.print(f"[red]error:[/] {escape(str(exc))}", highlight=False)
        raise typer.Exit(2) from None
    job = result.job
    summary = {
        "status": job.status,
        "reason": job.reason,
        "rounds": job.round,
        "members": len(result.members),
        "accuracy": result.accuracy,
        "model_sha256": result.model_sha256,
        "setup_seconds": round(result.setup_seconds, 3),
        "total_seconds": round(result.total_seconds, 3),
        "run_folder": str(result.out_dir),
    }
    if as_json:
        print(json.dumps(summary))
    else:
        if no_progress:
            for record in job.rounds:
                console.print(format_round(record, job.rounds_total), highlight=False)
        console.print(
            f"{job.status}: {job.round}/{job.rounds_total} rounds over {len(result.members)} "
            f"members in {result.total_seconds:.1f} s; model sha256 {result.model_sha256[:16]}...; "
            f"run folder {result.out_dir}",
            highlight=False,
        )
        if job.reason:
            console.print(f"reason: {escape(job.reason)}", highlight=False)
    if job.status != "completed":
        raise typer.Exit(1)
