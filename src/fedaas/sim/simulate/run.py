"""``simulate``: a whole federation on this machine (or a Ray cluster), from a spec and partitions.

Resolves the partitions (:mod:`fedaas.sim.simulate.partitions`), starts the
backend (:class:`~fedaas.sim.simulate.pool.LocalPool`: worker processes, one
per core by default; or :class:`~fedaas.sim.simulate.ray_pool.RayPool`), runs
the coordinator's round loop in-process (:class:`~fedaas.sim.simulate.engine.RoundLoop`)
and writes the same run folder as a service job (:func:`fedaas.report.write_run_folder`:
``metrics.json``, ``accuracy.png``, ``model.safetensors``, the spec).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from rich.console import Console

from fedaas import tensors
from fedaas.protocol import JobStatus, RoundRecord
from fedaas.report import check_run_folder, fresh_run_folder, write_run_folder
from fedaas.server.errors import JobFailed
from fedaas.server.privacy import BudgetReached
from fedaas.sim.simulate.engine import Pool, RoundLoop, Stragglers
from fedaas.sim.simulate.partitions import Generated, plan_partitions, write_partitions
from fedaas.sim.simulate.progress import RoundProgress
from fedaas.spec import JobSpec, loads_spec, parse_spec, read_spec_source

WORK = ".sim"
"""The run folder's scratch space (spool, current model, members' state); removed at the end."""


class NotSimulated(ValueError):
    """The spec asks for something the simulation does not do (one line for the command line)."""


@dataclass
class SimulationResult:
    """The simulated job as the service would report it, and its final model."""

    job: JobStatus
    model: dict[str, np.ndarray]
    model_sha256: str
    out_dir: Path
    members: list[str]
    round_seconds: list[float] = field(default_factory=list)
    setup_seconds: float = 0.0
    total_seconds: float = 0.0

    @property
    def accuracy(self) -> float | None:
        """The held-out accuracy after the last round (``None`` without a held-out set)."""
        return self.job.rounds[-1].accuracy if self.job.rounds else None


def _check_backend(
    backend: str | Pool, address: str | None, cpus_per_member: float, gpus_per_member: float
) -> None:
    """Options that do not fit the backend: :class:`ValueError` before anything starts."""
    if not isinstance(backend, str):  # a ready pool (anything with Pool's methods)
        return
    if backend not in ("local", "ray"):
        raise ValueError(f"unknown backend {backend!r}: use local or ray")
    if backend == "local" and address is not None:
        raise ValueError("address is for backend='ray'")
    if backend == "local" and (cpus_per_member, gpus_per_member) != (1.0, 0.0):
        raise ValueError(
            "cpus and gpus per member are what each Ray actor reserves: use backend='ray'"
        )


def _pool(
    backend: str | Pool,
    workers: int | None,
    address: str | None,
    cpus_per_member: float,
    gpus_per_member: float,
    log_path: Path | None = None,
) -> Pool:
    """The backend's workers (``log_path``: the local workers' log); options already checked
    (:func:`_check_backend`)."""
    if not isinstance(backend, str):
        return backend
    if backend == "local":
        from fedaas.sim.simulate.pool import LocalPool

        return LocalPool(workers, log_path)
    from fedaas.sim.simulate.ray_pool import RayPool

    return RayPool(workers, address, cpus_per_member, gpus_per_member)


def simulate(
    spec: JobSpec | str | Path,
    partitions: Any,
    *,
    members: int | None = None,
    backend: Literal["local", "ray"] | Pool = "local",
    address: str | None = None,
    workers: int | None = None,
    cpus_per_member: float = 1.0,
    gpus_per_member: float = 0.0,
    out_dir: str | Path = Path("runs/simulate"),
    progress: bool = True,
    stragglers: Stragglers | None = None,
    seed: int | None = None,
    allow_code: tuple[str, ...] = (),
    console: Console | None = None,
    on_round: Callable[[RoundRecord, bytes], None] | None = None,
) -> SimulationResult:
    """Run the job ``spec`` over virtual members holding ``partitions``; see the module docstring.

    ``seed`` replaces the spec's job seed; ``on_round(record, model)`` is
    called after each round with its record and its ``model.safetensors`` bytes. The same spec, partitions and seed
    give the same ``model.safetensors``, bit for bit, whatever ``workers`` and
    ``backend``.
    """
    began = time.perf_counter()
    console = console or Console(stderr=True)
    source = None
    if not isinstance(spec, JobSpec):
        source = read_spec_source(spec)
        spec = loads_spec(source)
    if seed is not None:
        data = spec.to_dict()
        data["job"]["seed"] = seed
        spec = parse_spec(data)
    secure = getattr(spec, "secure_aggregation", None)
    if secure is not None and getattr(secure, "enabled", False):
        raise NotSimulated(
            "secure aggregation is not simulated: it changes what the coordinator sees, not the "
            "model; drop [secure_aggregation] to simulate the job"
        )
    out = Path(out_dir)
    # what can be refused is refused before an earlier run's folder is replaced
    check_run_folder(out, WORK)
    plan = plan_partitions(partitions, members=members, seed=spec.job.seed)
    count = len(plan.parts) if isinstance(plan, Generated) else len(plan.members)
    if spec.federation.min_clients > count:
        raise NotSimulated(
            f"federation.min_clients is {spec.federation.min_clients} but {count} member(s) are "
            "simulated: no round could reach its quorum (lower min_clients or simulate more "
            "members)"
        )
    _check_backend(backend, address, cpus_per_member, gpus_per_member)
    ready = None  # Ray (or a given pool) is reached first; local workers log to the folder
    if backend != "local":
        ready = _pool(backend, workers, address, cpus_per_member, gpus_per_member)
    try:
        fresh_run_folder(out, WORK)
        parts = write_partitions(plan, out / "data")
        pool = (
            ready
            if ready is not None
            else _pool(
                backend, workers, address, cpus_per_member, gpus_per_member, out / "workers.log"
            )
        )
    except BaseException:
        if ready is not None and isinstance(backend, str):  # ours: a given pool stays open
            ready.close()
        raise
    names = [name for name, _ in parts.members]
    digest = hashlib.sha256(json.dumps([spec.to_dict(), names], sort_keys=True).encode())
    job_id = "sim-" + digest.hexdigest()[:12]
    rounds: list[RoundRecord] = []
    status, reason = "completed", None
    created = time.time()
    threads = torch.get_num_threads()
    # the workers have the cores; the driver's own torch work (the held-out evaluation) is
    # small, and its idle OpenMP threads would spin on the workers' cores after each use
    torch.set_num_threads(1)
    try:
        loop = RoundLoop(
            spec,
            job_id,
            parts.members,
            pool,
            out / WORK,
            holdout=parts.holdout,
            allow_code=allow_code,
            stragglers=stragglers,
        )
        setup = time.perf_counter() - began
        kind = backend if isinstance(backend, str) else type(backend).__name__
        title = f"{spec.job.name}: {len(names)} members, {pool.size} {kind} worker(s)"
        with RoundProgress(spec.job.rounds, console, enabled=progress, title=title) as bar:
            for number in range(1, spec.job.rounds + 1):
                try:
                    record = loop.run_round(number)
                except BudgetReached as exc:
                    reason = str(exc)
                    break
                except JobFailed as exc:
                    status, reason = "failed", str(exc)
                    break
                rounds.append(record)
                bar.advance(record)
                if on_round is not None:
                    on_round(record, loop.model_bytes)
        model_bytes = loop.model_path.read_bytes()
    finally:
        torch.set_num_threads(threads)
        pool.close()
    job = JobStatus(
        id=job_id,
        name=spec.job.name,
        status=status,  # type: ignore[arg-type]
        reason=reason,
        round=len(rounds),
        rounds_total=spec.job.rounds,
        created_at=created,
        started_at=created,
        finished_at=time.time(),
        declined={loop.names([m])[0]: why for m, why in sorted(loop.job.declined.items())},
        spec=spec,
        source=source,
        rounds=rounds,
    )
    write_run_folder(out, job, model_bytes)
    shutil.rmtree(out / WORK, ignore_errors=True)
    model, _ = tensors.decode(model_bytes)
    return SimulationResult(
        job=job,
        model=model,
        model_sha256=hashlib.sha256(model_bytes).hexdigest(),
        out_dir=out,
        members=names,
        round_seconds=[r.seconds for r in rounds],
        setup_seconds=setup,
        total_seconds=time.perf_counter() - began,
    )
