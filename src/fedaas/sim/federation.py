"""A whole federation on one machine, on the user's own partitions: what ``fedaas demo`` runs.

A coordinator and one member agent per partition run as separate processes
talking HTTP on loopback (:class:`~fedaas.sim.cluster.LocalCluster`), each
member reading only its own data. The job runs to its end; then, with
baselines, the same model and training code run on each member's data alone
(local-only) and on all of it pooled (centralized) (:mod:`fedaas.sim.baselines`),
all evaluated on the same held-out data with the job's metrics. The run
folder gets ``metrics.json`` (rounds and references), ``model.safetensors``,
the spec and the plot.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fedaas.data.dataset import Dataset
from fedaas.data.source import open_dataset, write_npz
from fedaas.protocol import JobStatus, RoundRecord
from fedaas.sim import baselines as refs
from fedaas.sim.cluster import LocalCluster
from fedaas.spec import JobSpec, parse_spec

Partitions = (
    Sequence[str | Path] | Mapping[str, str | Path] | Sequence[tuple[np.ndarray, np.ndarray]]
)
"""Members' data: paths or URLs, name -> path or URL, or ``(x, y)`` arrays (one per member)."""
Progress = Callable[[JobStatus, list[RoundRecord]], None]


@dataclass
class Place:
    """Where one member's data lives, and the environment its process needs to read it."""

    name: str
    url: str
    env: dict[str, str] = field(default_factory=dict)


@dataclass
class LocalRun:
    """What a local federation measured; ``out`` holds its run folder."""

    job: JobStatus
    model: bytes
    out: Path
    train_seconds: float
    metric: str
    """The headline metric (the job's first): what ``federated`` and the references lead with."""
    references: dict[str, Any] | None = None
    """``local_only`` (mean, min, max, per member, by metric) and ``centralized`` (by metric)."""

    @property
    def final(self) -> dict[str, Any]:
        """The last round's record: held-out loss and every metric of the job."""
        return self.job.rounds[-1].model_dump() if self.job.rounds else {}

    @property
    def federated(self) -> float | None:
        """The federated model's headline metric on the held-out data."""
        value = self.final.get(self.metric)
        return None if value is None else float(value)


def places_of(partitions: Partitions, data_dir: Path) -> list[Place]:
    """One :class:`Place` per member; arrays are written to ``data_dir/<name>.npz``."""
    if isinstance(partitions, Mapping):
        return [Place(str(name), _url(url)) for name, url in partitions.items()]
    found = []
    for i, part in enumerate(partitions):
        name = f"member-{i}"
        if isinstance(part, tuple):
            path = data_dir / f"{name}.npz"
            write_npz(str(path), np.asarray(part[0]), np.asarray(part[1]))
            part = path
        found.append(Place(name, _url(part)))
    if not found:
        raise ValueError("a federation needs at least one member's partition")
    return found


def _url(value: str | Path) -> str:
    text = str(value)
    return text if "://" in text else str(Path(text).expanduser().resolve())


MEMBER_PROCESS_BYTES = 320 * 2**20
"""Memory one member process takes (measured: 250 MiB unique, 270 MiB proportional, after a
digits job), with a margin; the coordinator counts as one more."""


def check_memory(members: int, available: int | None = None) -> None:
    """Refuse (``ValueError``) a federation whose member processes would not fit in memory
    now (before anything is written or started: ``fedaas demo``, :func:`federate`)."""
    import psutil

    need = (members + 1) * MEMBER_PROCESS_BYTES
    have = psutil.virtual_memory().available if available is None else available
    if need > have:
        raise ValueError(
            f"{members} member processes need about {need / 2**30:.1f} GiB and this machine "
            f"has {have / 2**30:.1f} GiB available: use fewer members, or `fedaas simulate` "
            "(virtual members, memory flat in their number)"
        )


def run_cluster(
    spec_data: dict[str, Any],
    places: list[Place],
    workdir: Path,
    *,
    source: str | None = None,
    progress: Progress | None = None,
    server_args: list[str] | None = None,
    server_env: dict[str, str] | None = None,
    on_start: Callable[[LocalCluster, float], None] | None = None,
) -> tuple[JobStatus, bytes, float]:
    """Start a coordinator and the members, run the job to its end: ``(job, model, seconds)``.

    Raises :class:`RuntimeError` when the job does not complete.
    """
    with LocalCluster(workdir) as cluster:
        t0 = time.perf_counter()
        cluster.start_server(extra_args=server_args, env=server_env)
        for place in places:
            cluster.start_client(place.name, place.url, env=place.env)
        cluster.wait_online(len(places), timeout=300)  # a busy machine starts torch slowly
        if on_start is not None:
            on_start(cluster, time.perf_counter() - t0)
        submitted = cluster.admin.submit(spec_data, source)
        t1 = time.perf_counter()
        job: JobStatus | None = None
        for job, fresh in cluster.admin.follow(submitted.id):
            if progress is not None:
                progress(job, fresh)
        seconds = time.perf_counter() - t1
        assert job is not None
        if job.status != "completed":
            raise RuntimeError(f"the federated job {job.status}: {job.reason}")
        model_path = workdir / "model.safetensors"
        cluster.admin.download_model(job.id, model_path)
        return job, model_path.read_bytes(), seconds


def references(spec: JobSpec, parts: list[Dataset], test: Dataset) -> dict[str, dict[str, Any]]:
    """Local-only and centralized training on the same data, code and metrics."""
    return {
        "local_only": refs.local_only(spec, parts, test),
        "centralized": refs.centralized(spec, parts, test),
    }


def federate(
    spec_data: dict[str, Any],
    partitions: Partitions,
    *,
    holdout: str | Path | tuple[np.ndarray, np.ndarray] | None = None,
    out: Path = Path("runs/local"),
    rounds: int | None = None,
    baselines: bool = True,
    progress: Progress | None = None,
    source: str | None = None,
) -> LocalRun:
    """Run the job on ``partitions`` with one member process each; see the module docstring.

    ``holdout`` (a path or URL, or arrays written to ``out/data/holdout.npz``)
    becomes ``[evaluation] holdout``; ``rounds`` overrides ``[job] rounds``.
    """
    from fedaas.report import write_run_folder

    check_memory(len(partitions))
    data_dir = out / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    spec_data = {key: dict(value) for key, value in spec_data.items()}
    if rounds is not None:
        spec_data["job"]["rounds"] = rounds
    if isinstance(holdout, tuple):
        write_npz(str(data_dir / "holdout.npz"), np.asarray(holdout[0]), np.asarray(holdout[1]))
        holdout = data_dir / "holdout.npz"
    if holdout is not None:
        spec_data.setdefault("evaluation", {})["holdout"] = _url(holdout)
    spec = parse_spec(spec_data)
    places = places_of(partitions, data_dir)
    if baselines and spec.evaluation.holdout is None:
        raise ValueError("baselines need held-out data: pass holdout= or set [evaluation] holdout")
    kept = source if rounds is None and holdout is None else None  # the TOML says what ran
    job, model, seconds = run_cluster(
        spec_data, places, out / "cluster", source=kept, progress=progress
    )
    found = None
    if baselines and spec.evaluation.holdout is not None:
        parts = [open_dataset(p.url, spec.data) for p in places]
        test = open_dataset(spec.evaluation.holdout, spec.data)
        found = references(spec, parts, test)
    metric = refs.headline(spec)
    write_run_folder(out, job, model, found, metric=metric)
    return LocalRun(job, model, out, seconds, metric, found)
