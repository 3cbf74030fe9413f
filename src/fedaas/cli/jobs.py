"""``fedaas job``: submit, watch, inspect, cancel and download jobs.

Submitting, following and downloading go through the Python API
(:mod:`fedaas.api`: :class:`~fedaas.api.Coordinator`, :class:`~fedaas.api.Job`),
so the command and a script behave alike. ``status`` and ``download`` also
take a member's token (``--token`` or ``$FEDAAS_TOKEN``) for the jobs that
member took part in; the coordinator answers 403 for any other job.
"""

from __future__ import annotations

import time
import tomllib
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from fedaas.api import Coordinator, Job
from fedaas.cli.common import (
    DEFAULT_SERVER,
    AdminTokenOpt,
    CaCertOpt,
    ClientCertOpt,
    ClientKeyOpt,
    JsonOpt,
    ServerOpt,
    connect,
    console,
    err,
    print_json,
)
from fedaas.client.admin import AdminClient
from fedaas.protocol import JobStatus, RoundRecord
from fedaas.report import format_round
from fedaas.server.preflight import preflight
from fedaas.spec import SpecError, loads_spec, read_spec_source

JobIdArg = Annotated[str, typer.Argument(help="The job's id (`fedaas job list` shows them).")]

app = typer.Typer(help="Submit and manage jobs.", no_args_is_help=True)

TokenOpt = Annotated[
    str | None,
    typer.Option(
        "--token",
        envvar=["FEDAAS_ADMIN_TOKEN", "FEDAAS_TOKEN"],
        help="The admin token, or a member's token for a job that member took part in "
        "(default: $FEDAAS_ADMIN_TOKEN, else $FEDAAS_TOKEN).",
        show_default=False,
    ),
]


def print_rounds(job: JobStatus, fresh: list[RoundRecord]) -> None:
    """One line per round as it closes (a :data:`fedaas.api.Progress` callback)."""
    for r in fresh:
        console.print(format_round(r, job.rounds_total), highlight=False)


def watch(admin: AdminClient, job_id: str) -> JobStatus:
    """Print each round as it completes; returns the job's final state."""
    job = Job(job_id, admin).wait(progress=print_rounds)
    colour = "green" if job.status == "completed" else "red"
    console.print(
        f"job {job_id} [{colour}]{job.status}[/]"
        + (f": {escape(job.reason)}" if job.reason else "")
    )
    return job


def download_run(admin: AdminClient, job_id: str, out: Path) -> Path:
    return Job(job_id, admin).download(out)


@app.command("submit")
def submit(
    spec_file: Annotated[
        Path, typer.Argument(help="Job spec (TOML).", exists=True, dir_okay=False)
    ],
    server: ServerOpt = DEFAULT_SERVER,
    token: AdminTokenOpt = None,
    ca_cert: CaCertOpt = None,
    client_cert: ClientCertOpt = None,
    client_key: ClientKeyOpt = None,
    wait: Annotated[bool, typer.Option(help="Follow the job until it ends.")] = False,
    out: Annotated[
        Path | None,
        typer.Option(help="Write the run folder here when the job ends.", file_okay=False),
    ] = None,
    mlflow: Annotated[
        str | None,
        typer.Option(
            "--mlflow",
            help="Track the job in MLflow at this URI (sets \\[tracking] mlflow): "
            "http(s)://, sqlite:///path/mlflow.db or file:///folder.",
            show_default=False,
        ),
    ] = None,
    strict: Annotated[
        bool,
        typer.Option(
            "--strict", help="Refuse to submit a job that cannot start (too few members)."
        ),
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Validate a job spec locally, check it against the members, submit it, optionally follow it.

    Warns (with --strict: refuses) when fewer members are enrolled or online
    than the job's min_clients, and says so when the job has no evaluation.
    """
    source = read_spec_source(spec_file)
    loads_spec(source)  # a bad spec fails here, naming the key, before any network call
    try:
        data = tomllib.loads(source)
    except tomllib.TOMLDecodeError as exc:  # pragma: no cover - loads_spec already parsed it
        raise SpecError([str(exc)]) from None
    if mlflow is not None:
        data["tracking"] = {**data.get("tracking", {}), "mlflow": mlflow}
    from fedaas.spec import parse_spec

    spec = parse_spec(data)  # with --mlflow: the URI is checked before anything is sent
    admin = connect(server, token, ca_cert, client_cert, client_key)
    found = preflight(spec, admin.members())
    for problem in found.blocking:
        err.print(f"[yellow]warning:[/] {escape(problem)}", highlight=False)
    for note in found.notes:
        err.print(f"[yellow]note:[/] {escape(note)}", highlight=False)
    if strict and found.blocking:
        err.print("[red]error:[/] not submitted (--strict): the job cannot start", highlight=False)
        raise typer.Exit(2)
    job = Coordinator(admin).submit(data, source).last
    if as_json:
        print_json(job)
    else:
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
def list_jobs(
    server: ServerOpt = DEFAULT_SERVER,
    token: AdminTokenOpt = None,
    ca_cert: CaCertOpt = None,
    client_cert: ClientCertOpt = None,
    client_key: ClientKeyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List all jobs."""
    jobs = connect(server, token, ca_cert, client_cert, client_key).jobs()
    if as_json:
        print_json(jobs)
        return
    table = Table("id", "name", "status", "round")
    for job in jobs:
        table.add_row(job.id, escape(job.name), job.status, str(job.round))
    console.print(table)


@app.command("status")
def status(
    job_id: JobIdArg,
    server: ServerOpt = DEFAULT_SERVER,
    token: TokenOpt = None,
    ca_cert: CaCertOpt = None,
    client_cert: ClientCertOpt = None,
    client_key: ClientKeyOpt = None,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Follow until the job ends.")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Show a job's state and per-round metrics (with --json: the whole JobStatus)."""
    admin = connect(server, token, ca_cert, client_cert, client_key)
    if follow:
        admin.t.give_up_after = 600.0
        job = watch(admin, job_id)
        if as_json:
            print_json(job)
        return
    job = admin.job(job_id)
    if as_json:
        print_json(job)
        return
    console.print(
        f"job {job.id} ({escape(job.name)}): {job.status}, round {job.round}/{job.rounds_total}"
    )
    if job.reason:
        console.print(f"reason: {escape(job.reason)}")
    for wait in job.waiting_for:
        since = time.strftime("%H:%M:%S", time.localtime(wait.since))
        console.print(
            f"[yellow]paused:[/] waiting for the {wait.dependency} since {since} "
            f"({escape(wait.error)}); nothing is lost, the job continues when it is back"
        )
    if job.current:
        console.print(f"now: round {job.current.round}, {job.current.stage}")
    for name, why in job.declined.items():
        console.print(f"[yellow]member {escape(name)} declined:[/] {escape(why)}")
    for r in job.rounds:
        console.print(format_round(r, job.rounds_total), highlight=False)


@app.command("cancel")
def cancel(
    job_id: JobIdArg,
    server: ServerOpt = DEFAULT_SERVER,
    token: AdminTokenOpt = None,
    ca_cert: CaCertOpt = None,
    client_cert: ClientCertOpt = None,
    client_key: ClientKeyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Cancel a queued or running job."""
    job = connect(server, token, ca_cert, client_cert, client_key).cancel(job_id)
    if as_json:
        print_json(job)
    else:
        console.print(f"job {job.id}: {job.status}")


@app.command("resume")
def resume(
    job_id: JobIdArg,
    server: ServerOpt = DEFAULT_SERVER,
    token: AdminTokenOpt = None,
    ca_cert: CaCertOpt = None,
    client_cert: ClientCertOpt = None,
    client_key: ClientKeyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Continue a failed job from its last committed round (every round still counts once)."""
    job = connect(server, token, ca_cert, client_cert, client_key).resume(job_id)
    if as_json:
        print_json(job)
    else:
        console.print(f"job {job.id}: {job.status}, continuing after round {job.round}")


@app.command("download")
def download(
    job_id: JobIdArg,
    out: Annotated[Path, typer.Option(help="Run folder to write.", file_okay=False)],
    server: ServerOpt = DEFAULT_SERVER,
    token: TokenOpt = None,
    ca_cert: CaCertOpt = None,
    client_cert: ClientCertOpt = None,
    client_key: ClientKeyOpt = None,
) -> None:
    """Write a job's run folder: metrics.json, model.safetensors, spec, accuracy.png."""
    download_run(connect(server, token, ca_cert, client_cert, client_key), job_id, out)
    console.print(f"run folder: {out}")
