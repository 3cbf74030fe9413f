"""``fedaas demo``: an example's headline result on one machine.

A coordinator and N member agents run as separate processes talking HTTP on
loopback, each member reading only its own partition of an example's data
(:mod:`fedaas.data.examples`: ``digits``, ``digits_images``,
``breast_cancer``, ``diabetes``) and the job of ``examples/<NAME>.toml``.
After the federated job, the same model, code and metrics train on each
member's data alone (local-only) and on all data pooled (centralized)
(:mod:`fedaas.sim.baselines`), and the run folder gets ``metrics.json`` and
a plot comparing the three on the example's headline metric.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from fedaas.data.examples import ExampleData, example_data
from fedaas.data.source import open_dataset, write_dataset
from fedaas.sim import baselines
from fedaas.sim.federation import Place, check_memory, references, run_cluster
from fedaas.spec import JobSpec, load_spec, parse_spec
from fedaas.storage import install_log_redaction
from fedaas.storage import join as storage_join

EXAMPLES_DIR = Path(__file__).resolve().parents[3] / "examples"
EXAMPLE_SPEC = EXAMPLES_DIR / "digits.toml"
RUNNING = ".demo"
"""Marks the run folder while a demo runs: an interrupted demo's folder is replaced too."""


def example_spec(name: str) -> Path:
    """``examples/<name>.toml`` (:class:`ValueError` naming the examples when there is none)."""
    path = EXAMPLES_DIR / f"{name}.toml"
    if not path.exists():
        known = sorted(p.stem for p in EXAMPLES_DIR.glob("*.toml"))
        raise ValueError(f"unknown example {name!r}: use one of {', '.join(known)}")
    return path


@dataclass
class _Places:
    """Where each member's data lives, and how the coordinator stores artifacts."""

    members: list[Place]
    server_args: list[str] = field(default_factory=list)
    server_env: dict[str, str] = field(default_factory=dict)


def _data_places(
    stack: contextlib.ExitStack,
    storage: str,
    found: ExampleData,
    data_dir: Path,
    console: Console,
) -> _Places:
    """Write each member's partition where it lives: local files, or the brief's clouds.

    ``cloud``: even-numbered members keep their data (Parquet, or image
    folders) in Google Cloud Storage, odd-numbered ones in Azure Blob
    Storage, and the coordinator's artifacts go to S3, each a real local
    emulator started (and stopped, by PID) here. Each member gets only its
    own cloud's credentials, through the environment.
    """
    names = list(found.names) or [f"member-{i}" for i in range(len(found.parts))]
    if storage == "local":
        members = []
        for name, (x, y) in zip(names, found.parts, strict=True):
            url = write_dataset(str(data_dir.resolve()), name, x, y, found.format)
            members.append(Place(name, url))
        return _Places(members)
    if storage != "cloud":
        raise ValueError(f"unknown storage {storage!r}: use local or cloud")
    from fedaas.sim import emulators

    t0 = time.perf_counter()
    gcs = stack.enter_context(emulators.running("gs"))
    azure = stack.enter_context(emulators.running("az"))
    s3 = stack.enter_context(emulators.running("s3"))
    clouds = [(gcs, gcs.make_bucket("hospital-data")), (azure, azure.make_bucket("bank-data"))]
    s3.make_bucket("fedaas-artifacts")
    fmt = "parquet" if found.format == "npz" else found.format
    members = []
    for i, (name, (x, y)) in enumerate(zip(names, found.parts, strict=True)):
        emulator, bucket = clouds[i % 2]
        where = storage_join(bucket, name)
        url = write_dataset(where, "train", x, y, fmt, emulator.storage_options)
        members.append(Place(name, url, emulator.env))
    console.print(
        f"storage emulators up in {time.perf_counter() - t0:.1f} s: members' data in "
        f"{clouds[0][1]} and {clouds[1][1]}, coordinator artifacts in s3://fedaas-artifacts/demo"
    )
    return _Places(members, ["--artifacts", "s3://fedaas-artifacts/demo"], s3.env)


def demo_spec(
    base: Path,
    clients: int,
    rounds: int | None,
    holdout: str | Path,
    privacy: dict[str, Any] | None = None,
    secure: bool = False,
) -> tuple[JobSpec, dict[str, Any]]:
    """The example job with the demo's size and its held-out split filled in.

    The coordinator evaluates on ``holdout``; the members keep no validation
    split (they train on all their data, as the local-only and centralized
    references do).
    """
    data = load_spec(base).to_dict()
    if rounds is not None:
        data["job"]["rounds"] = rounds
    data["federation"]["clients_per_round"] = clients
    data["federation"]["min_clients"] = min(data["federation"].get("min_clients", clients), clients)
    evaluation = {**data.get("evaluation", {}), "holdout": str(holdout), "validation_split": 0}
    data["evaluation"] = evaluation
    if privacy:
        data["privacy"] = privacy
    if secure:  # SecAgg: the coordinator sees only the sum of each round's updates
        data["secure_aggregation"] = {"enabled": True}
    return parse_spec(data), data


def run_demo(
    clients: int | None = None,
    rounds: int | None = None,
    alpha: float | None = None,
    out: Path = Path("runs/demo"),
    spec_path: Path | None = None,
    seed: int | None = None,
    console: Console | None = None,
    privacy: dict[str, Any] | None = None,
    storage: str = "local",
    example: str = "digits",
    secure: bool = False,
) -> dict[str, Any]:
    """Run an example; ``storage="cloud"`` puts members' data in GCS and Azure, artifacts in S3.

    ``clients``, ``alpha`` and ``seed`` default to the example's own;
    ``rounds`` to its spec's. Returns the headline metric's federated,
    local-only and centralized values (and every metric of each).
    """
    console = console or Console()
    install_log_redaction()  # the demo hands cloud credentials around: keep them out of logs
    from fedaas.report import format_round, fresh_run_folder, write_run_folder

    spec_path = spec_path or example_spec(example)
    found = example_data(example, clients, alpha, seed)
    clients = len(found.parts)
    check_memory(clients)
    fresh_run_folder(out, RUNNING)  # an earlier demo's folder is replaced, nothing else
    data_dir = out / "data"
    data_dir.mkdir()
    test_url = write_dataset(str(data_dir.resolve()), "test", *found.test, found.format)
    spec, spec_data = demo_spec(spec_path, clients, rounds, test_url, privacy, secure)
    rounds = spec.job.rounds
    console.print(
        f"[bold]fedaas demo[/] ({example}): {clients} members, {rounds} rounds, {found.note}; "
        f"sizes {[len(y) for _, y in found.parts]}"
    )

    def started(cluster: Any, seconds: float) -> None:
        console.print(
            f"coordinator {cluster.url} and {clients} member processes up in {seconds:.1f} s"
        )

    metric = baselines.headline(spec)

    def show(job: Any, fresh: list[Any]) -> None:
        for r in fresh:
            value = (r.model_extra or {}).get(metric)  # the example's own metric, when not accuracy
            tail = f"  {metric} {value:.4f}" if isinstance(value, float) else ""
            console.print(format_round(r, rounds) + tail, highlight=False)

    with contextlib.ExitStack() as stack:
        places = _data_places(stack, storage, found, data_dir, console)
        job, model, train_seconds = run_cluster(
            spec_data,
            places.members,
            out / "cluster",
            progress=show,
            server_args=places.server_args,
            server_env=places.server_env,
            on_start=started,
        )
    (out / "model.safetensors").write_bytes(model)
    console.print(
        f"federated training: {rounds} rounds in {train_seconds:.1f} s; training the references..."
    )
    parts = [open_dataset(url, spec.data) for url in _local_copies(found, data_dir, storage)]
    refs = references(spec, parts, open_dataset(test_url, spec.data))
    write_run_folder(out, job, model, refs, metric=metric)
    (out / RUNNING).rmdir()
    last = job.rounds[-1].model_dump()
    summary = {
        "example": example,
        "metric": metric,
        "federated": last[metric],
        "final": last,
        "train_seconds": train_seconds,
        **refs,
    }
    _print_table(console, example, metric, last, refs)
    epsilon = last.get("epsilon")
    if epsilon is not None:
        summary["epsilon"] = epsilon
        console.print(
            f"privacy: ({epsilon:.3f}, {spec.privacy.delta:g})-DP at the client level, "
            f"{spec.privacy.mechanism} noise, {spec.privacy.placement} placement"
            + ("" if last.get("private", True) else " [red](reproducible mode: NOT private)[/]")
        )
    console.print(f"run folder: {out} (metrics.json, {metric} per round in accuracy.png, model)")
    return summary


def _local_copies(found: ExampleData, data_dir: Path, storage: str) -> list[str]:
    """The members' partitions as local files, for the references (the same rows)."""
    if storage == "local":
        names = list(found.names) or [f"member-{i}" for i in range(len(found.parts))]
        suffix = "" if found.format == "images" else f".{found.format}"
        return [str((data_dir / f"{name}{suffix}").resolve()) for name in names]
    urls = []
    for i, (x, y) in enumerate(found.parts):
        urls.append(
            write_dataset(str((data_dir / "refs").resolve()), f"member-{i}", x, y, found.format)
        )
    return urls


def _print_table(
    console: Console, example: str, metric: str, final: dict[str, Any], refs: dict[str, Any]
) -> None:
    """Federated vs local-only vs centralized, a row per metric (the headline one first), so
    that it fits an 80-column terminal whatever the metrics' names."""
    local = refs["local_only"]["metrics"]
    central = refs["centralized"]
    others = [m for m in central if m not in (metric, "loss") and m in final and m in local]
    names = [metric, *others, "loss"] if metric != "loss" else [metric, *others]
    table = Table(title=f"held-out {metric} on {example} (and the job's other metrics)")
    table.add_column("metric")
    headings = ("federated\n(FedAvg)", "local-only\nmean", "local-only\nmin / max")
    for heading in (*headings, "centralized\n(pooled data)"):
        table.add_column(heading, justify="right")
    for n in names:
        table.add_row(
            n,
            _fmt(final.get(n)),
            _fmt(local[n]["mean"]),
            f"{local[n]['min']:.4f} / {local[n]['max']:.4f}",
            _fmt(central.get(n)),
        )
    console.print(table)
    better = "lower" if metric in baselines.LOWER_IS_BETTER else "higher"
    console.print(
        f"{metric} ({better} is better): federated {_fmt(final.get(metric))}, local-only mean "
        f"{_fmt(local[metric]['mean'])}, centralized {_fmt(central.get(metric))}",
        highlight=False,
    )


def _fmt(value: Any) -> str:
    return "-" if value is None else f"{float(value):.4f}"
