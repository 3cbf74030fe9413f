"""fedaas from Python: submit a job and follow it, load a run's model, run a federation locally.

The public surface, re-exported by the package on first use (``import
fedaas`` stays light)::

    import fedaas

    coordinator = fedaas.connect("https://coordinator:8080", token="fda_...")
    job = coordinator.submit("examples/digits.toml")      # a path, TOML text's dict or JobSpec
    final = job.wait(progress=lambda status, rounds: print(status.round))
    job.download("runs/digits")                            # the run folder
    model = fedaas.load_model("runs/digits")               # a torch.nn.Module

    run = fedaas.run_federation("examples/digits.toml", ["a.npz", "b.npz", "c.npz"],
                                holdout="test.npz", out="runs/local")

The token is the operator's (``$FEDAAS_ADMIN_TOKEN``) or, for reading and
downloading the jobs it took part in, a member's (``$FEDAAS_TOKEN``). The
``fedaas job`` commands go through this module; it sits at the top of the
house beside :mod:`fedaas.cli` and is built on :class:`~fedaas.client.admin.AdminClient`
(the typed HTTP client), :mod:`fedaas.report` (run folders) and
:mod:`fedaas.sim.federation` (a coordinator and member processes on this machine).
"""

from __future__ import annotations

import json
import os
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from fedaas.client.admin import AdminClient
from fedaas.client.transport import TlsOptions, Transport
from fedaas.protocol import Enrolled, JobStatus, JobSummary, MemberInfo, RoundRecord
from fedaas.spec import JobSpec, SpecError, parse_spec, read_spec_source

if TYPE_CHECKING:  # torch, the local federation and the simulator load on first use
    import numpy as np
    from torch import nn

    from fedaas.sim.federation import LocalRun, Partitions
    from fedaas.sim.simulate import simulate as simulate  # virtual members (fedaas simulate)

__all__ = [
    "Coordinator",
    "Job",
    "LocalRun",
    "Progress",
    "connect",
    "load_model",
    "load_run_spec",
    "run_federation",
]

Progress = Callable[[JobStatus, list[RoundRecord]], None]
"""Called as a job advances: its state and the rounds closed since the last call."""
SpecLike = JobSpec | Mapping[str, Any] | str | Path
"""A job spec: validated, a mapping (parsed TOML or JSON), or the path of a TOML file."""


def read_spec(spec: SpecLike) -> tuple[dict[str, Any], str | None]:
    """``(mapping, TOML source or None)`` of a spec, validated (:class:`SpecError` naming the key)."""
    if isinstance(spec, JobSpec):
        return spec.to_dict(), None
    if isinstance(spec, Mapping):
        data = dict(spec)
        parse_spec(data)
        return data, None
    source = read_spec_source(spec)
    try:
        data = tomllib.loads(source)
    except tomllib.TOMLDecodeError as exc:
        raise SpecError([f"not valid TOML: {exc}"]) from None
    parse_spec(data)
    return data, source


@dataclass
class Job:
    """A job on a coordinator, by id; every method asks the coordinator afresh."""

    id: str
    admin: AdminClient
    last: JobStatus | None = None
    """The job's state when this client last saw it (``None`` until then)."""

    def status(self) -> JobStatus:
        """The job's state, its spec and every closed round's metrics."""
        self.last = self.admin.job(self.id)
        return self.last

    def wait(self, timeout: float | None = None, progress: Progress | None = None) -> JobStatus:
        """Block until the job ends; its final state.

        ``progress(status, new_rounds)`` is called after each long-poll (new
        rounds may be empty). With ``timeout`` (seconds), raise
        :class:`TimeoutError` if the job has not ended by then.
        """
        for status, fresh in self.admin.follow(self.id, timeout):
            self.last = status
            if progress is not None:
                progress(status, fresh)
        assert self.last is not None  # follow yields at least once
        return self.last

    def cancel(self) -> JobStatus:
        """Cancel the job (queued or running)."""
        return self.admin.cancel(self.id)

    def download_model(self, path: str | Path) -> int:
        """Write the job's latest model (safetensors) to ``path``; returns its round."""
        return self.admin.download_model(self.id, Path(path))

    def download(self, path: str | Path) -> Path:
        """Write the job's run folder: ``metrics.json``, ``model.safetensors``, spec, plot."""
        from fedaas.report import write_run_folder
        from fedaas.spec_train import job_metrics

        out = Path(path)
        job = self.status()
        out.mkdir(parents=True, exist_ok=True)
        model_path = out / "model.safetensors"
        self.admin.download_model(self.id, model_path)
        metric = (job_metrics(job.spec) or ("loss",))[0]  # what the plot shows: the first
        return write_run_folder(out, job, model_path.read_bytes(), metric=metric)


class Coordinator:
    """A connection to a coordinator (a context manager: closes its connections on exit)."""

    def __init__(self, admin: AdminClient) -> None:
        self.admin = admin

    @property
    def url(self) -> str:
        return self.admin.t.server

    def submit(self, spec: SpecLike, source: str | None = None) -> Job:
        """Validate ``spec`` here (a bad key fails before any request) and submit it.

        ``source``: the TOML text to keep with the job (read from the file
        when ``spec`` is a path).
        """
        data, text = read_spec(spec)
        job = self.admin.submit(data, source or text)
        return Job(job.id, self.admin, job)

    def job(self, job_id: str) -> Job:
        return Job(job_id, self.admin)

    def jobs(self) -> list[JobSummary]:
        return self.admin.jobs()

    def members(self) -> list[MemberInfo]:
        return self.admin.members()

    def enroll(self, name: str) -> Enrolled:
        """Enroll a member; its token is in the answer (shown this once)."""
        return self.admin.enroll(name)

    def close(self) -> None:
        self.admin.t.close()

    def __enter__(self) -> Coordinator:
        return self

    def __exit__(self, *exc: object | TracebackType) -> None:
        self.close()


def connect(
    url: str,
    token: str | None = None,
    *,
    ca_cert: str | Path | None = None,
    client_cert: str | Path | None = None,
    client_key: str | Path | None = None,
    give_up_after: float | None = 30.0,
) -> Coordinator:
    """Connect to the coordinator at ``url``.

    ``token``: default ``$FEDAAS_ADMIN_TOKEN``, else ``$FEDAAS_TOKEN`` (a
    member's). TLS: the CA that signed the coordinator's certificate and,
    for mutual TLS, this side's certificate and key (default: the
    ``$FEDAAS_CA_CERT`` family, else the system trust store).
    ``give_up_after``: seconds of failing to reach it before an error.
    """
    token = token or os.environ.get("FEDAAS_ADMIN_TOKEN") or os.environ.get("FEDAAS_TOKEN")
    if not token:
        raise ValueError("no token: pass token= or set FEDAAS_ADMIN_TOKEN (or FEDAAS_TOKEN)")
    if ca_cert is None and client_cert is None and client_key is None:
        tls = TlsOptions.from_env()
    else:
        tls = TlsOptions(
            *(None if p is None else Path(p) for p in (ca_cert, client_cert, client_key))
        )
    return Coordinator(AdminClient(Transport(url, token, give_up_after=give_up_after, tls=tls)))


def load_run_spec(run_dir: str | Path) -> JobSpec:
    """The job spec of a run folder (``spec.json``, else ``job.toml``)."""
    folder = Path(run_dir)
    if (folder / "spec.json").exists():
        return parse_spec(json.loads((folder / "spec.json").read_text(encoding="utf-8")))
    if (folder / "job.toml").exists():
        return parse_spec(read_spec(folder / "job.toml")[0])
    raise SpecError([f"{folder}: no spec.json or job.toml (not a run folder)"])


def load_model(run_dir: str | Path, *, allowed_code: Sequence[str] = ()) -> nn.Module:
    """The trained ``torch.nn.Module`` of a run folder, in evaluation mode.

    Reads the folder's spec and ``model.safetensors`` (a downloaded run, the
    demo's, or a member's ``finished-<job>`` folder) and builds the module
    through the model registry: a built-in, or code in a package named in
    ``allowed_code`` (nothing else is imported). The weights must match the
    module exactly (names and shapes).
    """
    from fedaas import tensors
    from fedaas.models import build_model, get_state, set_state

    folder = Path(run_dir)
    spec = load_run_spec(folder)
    module = build_model(spec.model, spec.data, task=spec.train.task, allowed_code=allowed_code)
    manifest = tensors.manifest_of(get_state(module))
    state, _ = tensors.decode((folder / "model.safetensors").read_bytes(), manifest)
    set_state(module, state)
    return module.eval()


def run_federation(
    spec: SpecLike,
    partitions: Partitions,
    *,
    holdout: str | Path | tuple[np.ndarray, np.ndarray] | None = None,
    out: str | Path = Path("runs/local"),
    rounds: int | None = None,
    baselines: bool = True,
    progress: Progress | None = None,
) -> LocalRun:
    """Run a whole federation on this machine: a coordinator and one member process per partition.

    ``partitions``: the members' data, one entry each: paths or URLs
    (any format a member reads), a mapping name -> path, or ``(x, y)``
    arrays (written to ``out/data``). ``holdout``: held-out data the
    coordinator evaluates each round on (a path or arrays; default: the
    spec's). With ``baselines`` (needs a holdout), the same model and
    training code also run on each member's data alone (local-only) and
    on all of it pooled (centralized), evaluated with the same metrics.
    Writes the run folder ``out`` (``metrics.json``, ``model.safetensors``,
    spec, plot) and returns what it measured.
    """
    from fedaas.sim.federation import federate

    data, source = read_spec(spec)
    return federate(
        data,
        partitions,
        holdout=holdout,
        out=Path(out),
        rounds=rounds,
        baselines=baselines,
        progress=progress,
        source=source,
    )


def __getattr__(name: str) -> Any:
    """``LocalRun`` and ``simulate`` load on first use (they pull in torch): the CLI starts fast."""
    if name == "LocalRun":
        from fedaas.sim.federation import LocalRun

        return LocalRun
    if name == "simulate":
        from fedaas.sim.simulate import simulate

        return simulate
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
