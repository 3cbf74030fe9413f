"""``fedaas demo``: the headline result on one machine.

A coordinator and N member agents run as separate processes talking HTTP on
loopback, each member reading only its own partition of scikit-learn's
digits. After FedAvg, the same model and hyperparameters are trained by each
member alone (local-only) and on all data pooled (centralized), and the run
folder gets ``metrics.json`` and ``accuracy.png`` comparing the three.
"""

from __future__ import annotations

import contextlib
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from fedaas.data.dataset import ArrayDataset
from fedaas.data.digits import digits_federation
from fedaas.data.source import write_npz
from fedaas.sim import baselines
from fedaas.sim.cluster import LocalCluster
from fedaas.spec import JobSpec, load_spec, parse_spec
from fedaas.storage import install_log_redaction
from fedaas.storage import join as storage_join

EXAMPLE_SPEC = Path(__file__).resolve().parents[3] / "examples" / "digits.toml"


@dataclass
class _Places:
    """Where each member's data lives, and how the coordinator stores artifacts."""

    members: list[tuple[str, dict[str, str]]]
    server_args: list[str] = field(default_factory=list)
    server_env: dict[str, str] = field(default_factory=dict)


def _data_places(
    stack: contextlib.ExitStack,
    storage: str,
    parts: list[tuple[np.ndarray, np.ndarray]],
    data_dir: Path,
    console: Console,
) -> _Places:
    """Write each member's partition where it lives: local files, or the brief's clouds.

    ``cloud``: even-numbered members keep Parquet files in Google Cloud
    Storage, odd-numbered ones in Azure Blob Storage, and the coordinator's
    artifacts go to S3, each a real local emulator started (and stopped,
    by PID) here. Each member gets only its own cloud's credentials, through
    the environment.
    """
    if storage == "local":
        members = []
        for i, (x, y) in enumerate(parts):
            path = data_dir / f"client_{i}.npz"
            write_npz(str(path), x, y)
            members.append((str(path.resolve()), {}))
        return _Places(members)
    if storage != "cloud":
        raise ValueError(f"unknown storage {storage!r}: use local or cloud")
    from fedaas.data.source import write_dataset
    from fedaas.sim import emulators

    t0 = time.perf_counter()
    gcs = stack.enter_context(emulators.running("gs"))
    azure = stack.enter_context(emulators.running("az"))
    s3 = stack.enter_context(emulators.running("s3"))
    clouds = [(gcs, gcs.make_bucket("hospital-data")), (azure, azure.make_bucket("bank-data"))]
    s3.make_bucket("fedaas-artifacts")
    members = []
    for i, (x, y) in enumerate(parts):
        emulator, bucket = clouds[i % 2]
        url = write_dataset(
            storage_join(bucket, f"member-{i}"), "train", x, y, "parquet", emulator.storage_options
        )
        members.append((url, emulator.env))
    console.print(
        f"storage emulators up in {time.perf_counter() - t0:.1f} s: members' data in "
        f"{clouds[0][1]} and {clouds[1][1]}, coordinator artifacts in s3://fedaas-artifacts/demo"
    )
    return _Places(members, ["--artifacts", "s3://fedaas-artifacts/demo"], s3.env)


def demo_spec(
    base: Path, clients: int, rounds: int, holdout: Path, privacy: dict[str, Any] | None = None
) -> tuple[JobSpec, dict[str, Any]]:
    """The example job with the demo's size and the held-out split filled in."""
    data = load_spec(base).to_dict()
    data["job"]["rounds"] = rounds
    data["federation"]["clients_per_round"] = clients
    data["federation"]["min_clients"] = min(data["federation"].get("min_clients", clients), clients)
    data["evaluation"]["holdout"] = str(holdout)
    if privacy:
        data["privacy"] = privacy
    return parse_spec(data), data


def run_demo(
    clients: int = 10,
    rounds: int = 30,
    alpha: float = 0.5,
    out: Path = Path("runs/demo"),
    spec_path: Path = EXAMPLE_SPEC,
    seed: int = 0,
    console: Console | None = None,
    privacy: dict[str, Any] | None = None,
    storage: str = "local",
) -> dict[str, Any]:
    """Run the demo; ``storage="cloud"`` puts members' data in GCS and Azure, artifacts in S3."""
    console = console or Console()
    install_log_redaction()  # the demo hands cloud credentials around: keep them out of logs
    from fedaas.report import format_round, write_run_folder

    if out.exists():
        shutil.rmtree(out)
    data_dir = out / "data"
    parts, (x_test, y_test) = digits_federation(clients, alpha, seed)
    write_npz(str(data_dir / "test.npz"), x_test, y_test)
    spec, spec_data = demo_spec(
        spec_path, clients, rounds, (data_dir / "test.npz").resolve(), privacy
    )
    console.print(
        f"[bold]fedaas demo[/]: {clients} members, {rounds} rounds, digits split per-class "
        f"Dirichlet(alpha={alpha}, seed={seed}); sizes {[len(y) for _, y in parts]}"
    )

    with contextlib.ExitStack() as stack:
        places = _data_places(stack, storage, parts, data_dir, console)
        cluster = stack.enter_context(LocalCluster(out / "cluster"))
        t0 = time.perf_counter()
        cluster.start_server(extra_args=places.server_args, env=places.server_env)
        for i, (url, env) in enumerate(places.members):
            cluster.start_client(f"member-{i}", url, env=env)
        cluster.wait_online(clients)
        console.print(
            f"coordinator {cluster.url} and {clients} member processes up in {time.perf_counter() - t0:.1f} s"
        )
        submitted = cluster.admin.submit(spec_data, spec_path.read_text())
        t1 = time.perf_counter()
        for job, fresh in cluster.admin.follow(submitted.id):  # noqa: B007 - the last one counts
            for r in fresh:
                console.print(format_round(r, rounds), highlight=False)
        train_seconds = time.perf_counter() - t1
        if job.status != "completed":
            raise RuntimeError(f"the federated job {job.status}: {job.reason}")
        model_path = out / "model.safetensors"
        cluster.admin.download_model(job.id, model_path)
        model = model_path.read_bytes()

    console.print(
        f"federated training: {rounds} rounds in {train_seconds:.1f} s; training the references..."
    )
    datasets = [ArrayDataset(x, y) for x, y in parts]
    test = ArrayDataset(x_test, y_test)
    refs = {
        "local_only": baselines.local_only(spec, datasets, test),
        "centralized": baselines.centralized(spec, datasets, test),
    }
    write_run_folder(out, job, model, refs)
    last = job.rounds[-1].model_dump()
    final = last["accuracy"]
    summary = {"federated": final, "train_seconds": train_seconds, **refs}
    _print_table(console, final, refs)
    epsilon = last.get("epsilon")
    if epsilon is not None:
        summary["epsilon"] = epsilon
        console.print(
            f"privacy: ({epsilon:.3f}, {spec.privacy.delta:g})-DP at the client level, "
            f"{spec.privacy.mechanism} noise, {spec.privacy.placement} placement"
            + ("" if last.get("private", True) else " [red](reproducible mode: NOT private)[/]")
        )
    console.print(f"run folder: {out} (metrics.json, accuracy.png, model.safetensors)")
    return summary


def _print_table(console: Console, federated: float, refs: dict[str, Any]) -> None:
    local = refs["local_only"]
    table = Table(title="held-out accuracy on digits")
    table.add_column("training")
    table.add_column("accuracy", justify="right")
    table.add_column("vs local-only mean", justify="right")
    table.add_row("federated (FedAvg)", f"{federated:.4f}", f"{federated / local['mean']:.2f}x")
    table.add_row("local-only, mean", f"{local['mean']:.4f}", "1.00x")
    table.add_row("local-only, min / max", f"{local['min']:.4f} / {local['max']:.4f}", "")
    central = refs["centralized"]["accuracy"]
    table.add_row("centralized (pooled data)", f"{central:.4f}", f"{central / local['mean']:.2f}x")
    console.print(table)
