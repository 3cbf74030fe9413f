"""``fedaas job``: submit, watch, inspect, cancel and download jobs."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from fedaas.cli.common import DEFAULT_SERVER, AdminTokenOpt, ServerOpt, admin_client, console
from fedaas.client.admin import AdminClient
from fedaas.report import write_run_folder
from fedaas.spec import SpecError, load_spec

app = typer.Typer(help="Submit and manage jobs.", no_args_is_help=True)


def format_round(r: dict[str, Any], total: int) -> str:
    acc = "   -  " if r.get("accuracy") is None else f"{r['accuracy']:.4f}"
    loss = "   -  " if r.get("loss") is None else f"{r['loss']:.4f}"
    line = (
        f"round {r['round']:>3}/{total}  accuracy {acc}  loss {loss}  "
        f"clients {r['clients']:>3}  {r['seconds']:.3f} s"
    )
    if r.get("record_epsilon") is not None:
        line += f"  record-level epsilon {r['record_epsilon']:.3f}"
    if r.get("epsilon") is not None:
        line += f"  epsilon {r['epsilon']:.3f}" + (
            "" if r.get("private", True) else " (NOT private)"
        )
    return line


def watch(admin: AdminClient, job_id: str) -> dict[str, Any]:
    """Print each round as it completes; returns the final job description."""
    job: dict[str, Any] = {}
    for current, fresh in admin.follow(job_id):
        job = current
        for r in fresh:
            console.print(format_round(r, job["rounds_total"]), highlight=False)
    status = job["status"]
    colour = "green" if status == "completed" else "red"
    console.print(
        f"job {job_id} [{colour}]{status}[/]" + (f": {job['reason']}" if job.get("reason") else "")
    )
    return job


def download_run(admin: AdminClient, job_id: str, out: Path) -> Path:
    job = admin.job(job_id)
    model_path = out / "model.safetensors"
    out.mkdir(parents=True, exist_ok=True)
    admin.download_model(job_id, model_path)
    write_run_folder(out, job, model_path.read_bytes())
    return out


@app.command("submit")
def submit(
    spec_file: Annotated[
        Path, typer.Argument(help="Job spec (TOML).", exists=True, dir_okay=False)
    ],
    server: ServerOpt = DEFAULT_SERVER,
    token: AdminTokenOpt = None,
    wait: Annotated[bool, typer.Option(help="Follow the job until it ends.")] = False,
    out: Annotated[
        Path | None, typer.Option(help="Write the run folder here when the job ends.")
    ] = None,
) -> None:
    """Validate a job spec locally, submit it, and optionally follow it."""
    load_spec(spec_file)  # a bad spec fails here, naming the key, before any network call
    source = spec_file.read_text(encoding="utf-8")
    try:
        data = tomllib.loads(source)
    except tomllib.TOMLDecodeError as exc:  # pragma: no cover - load_spec already parsed it
        raise SpecError([str(exc)]) from None
    admin = admin_client(server, token)
    job = admin.submit(data, source)
    console.print(f"submitted job [bold]{job['id']}[/] ({job['name']})")
    print(job["id"])
    if wait or out is not None:
        admin.t.give_up_after = 600.0  # ride through a coordinator restart
        job = watch(admin, job["id"])
        if out is not None:
            download_run(admin, job["id"], out)
            console.print(f"run folder: {out}")
        if job["status"] != "completed":
            raise typer.Exit(1)


@app.command("list")
def list_jobs(server: ServerOpt = DEFAULT_SERVER, token: AdminTokenOpt = None) -> None:
    """List all jobs."""
    table = Table("id", "name", "status", "round")
    for job in admin_client(server, token).jobs():
        table.add_row(job["id"], job["name"], job["status"], str(job["round"]))
    console.print(table)


@app.command("status")
def status(
    job_id: str,
    server: ServerOpt = DEFAULT_SERVER,
    token: AdminTokenOpt = None,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Follow until the job ends.")
    ] = False,
) -> None:
    """Show a job's state and per-round metrics."""
    admin = admin_client(server, token)
    if follow:
        watch(admin, job_id)
        return
    job = admin.job(job_id)
    console.print(
        f"job {job['id']} ({job['name']}): {job['status']}, round {job['round']}/{job['rounds_total']}"
    )
    if job.get("reason"):
        console.print(f"reason: {job['reason']}")
    if job.get("current"):
        console.print(f"now: round {job['current']['round']}, {job['current']['stage']}")
    for name, why in (job.get("declined") or {}).items():
        console.print(f"[yellow]member {name} declined:[/] {why}")
    for r in job["rounds"]:
        console.print(format_round(r, job["rounds_total"]), highlight=False)


@app.command("cancel")
def cancel(job_id: str, server: ServerOpt = DEFAULT_SERVER, token: AdminTokenOpt = None) -> None:
    """Cancel a queued or running job."""
    job = admin_client(server, token).cancel(job_id)
    console.print(f"job {job['id']}: {job['status']}")


@app.command("download")
def download(
    job_id: str,
    out: Annotated[Path, typer.Option(help="Run folder to write.")],
    server: ServerOpt = DEFAULT_SERVER,
    token: AdminTokenOpt = None,
) -> None:
    """Write a job's run folder: metrics.json, model.safetensors, spec, accuracy.png."""
    download_run(admin_client(server, token), job_id, out)
    console.print(f"run folder: {out}")
