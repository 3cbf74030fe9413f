"""``fedaas job``: submit, watch, inspect, cancel and download jobs."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from fedaas.cli.common import DEFAULT_SERVER, AdminTokenOpt, ServerOpt, admin_client, console
from fedaas.client.admin import AdminClient
from fedaas.protocol import JobStatus
from fedaas.report import format_round, write_run_folder
from fedaas.spec import SpecError, load_spec

app = typer.Typer(help="Submit and manage jobs.", no_args_is_help=True)


def watch(admin: AdminClient, job_id: str) -> JobStatus:
    """Print each round as it completes; returns the job's final state."""
    job: JobStatus | None = None
    for job, fresh in admin.follow(job_id):
        for r in fresh:
            console.print(format_round(r, job.rounds_total), highlight=False)
    assert job is not None
    colour = "green" if job.status == "completed" else "red"
    console.print(
        f"job {job_id} [{colour}]{job.status}[/]"
        + (f": {escape(job.reason)}" if job.reason else "")
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
    console.print(f"submitted job [bold]{job.id}[/] ({escape(job.name)})")
    print(job.id)
    if wait or out is not None:
        admin.t.give_up_after = 600.0  # ride through a coordinator restart
        job = watch(admin, job.id)
        if out is not None:
            download_run(admin, job.id, out)
            console.print(f"run folder: {out}")
        if job.status != "completed":
            raise typer.Exit(1)


@app.command("list")
def list_jobs(server: ServerOpt = DEFAULT_SERVER, token: AdminTokenOpt = None) -> None:
    """List all jobs."""
    table = Table("id", "name", "status", "round")
    for job in admin_client(server, token).jobs():
        table.add_row(job.id, escape(job.name), job.status, str(job.round))
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
        f"job {job.id} ({escape(job.name)}): {job.status}, round {job.round}/{job.rounds_total}"
    )
    if job.reason:
        console.print(f"reason: {escape(job.reason)}")
    if job.current:
        console.print(f"now: round {job.current.round}, {job.current.stage}")
    for name, why in job.declined.items():
        console.print(f"[yellow]member {escape(name)} declined:[/] {escape(why)}")
    for r in job.rounds:
        console.print(format_round(r, job.rounds_total), highlight=False)


@app.command("cancel")
def cancel(job_id: str, server: ServerOpt = DEFAULT_SERVER, token: AdminTokenOpt = None) -> None:
    """Cancel a queued or running job."""
    job = admin_client(server, token).cancel(job_id)
    console.print(f"job {job.id}: {job.status}")


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
