"""The Python API (``fedaas.connect``, ``Job``, ``fedaas.load_model``, ``fedaas.run_federation``).

Fast: ``import fedaas`` stays light; a run folder's model comes back as the module it was
(and only through the registry: code the caller did not allow is refused, weights that do
not fit are refused); a bad spec fails before any request. Slow (real processes): submit,
follow, download and load a job's model against a live coordinator; a whole federation on
this machine with the caller's own arrays, with local-only and centralized references.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import fedaas
from fedaas import tensors
from fedaas.api import load_model
from fedaas.client.transport import ApiClientError
from fedaas.models import build_model, get_state
from fedaas.models.registry import ModelError
from fedaas.protocol import JobStatus, RoundRecord
from fedaas.sim.cluster import LocalCluster
from fedaas.spec import SpecError, parse_spec
from fixtures.agents import StartAgents
from fixtures.specs import make_spec

FEATURES, CLASSES = 6, 3


def _run_folder(folder: Path, spec: dict[str, Any], *, as_toml: bool = False) -> torch.nn.Module:
    parsed = parse_spec(spec)
    module = build_model(parsed.model, parsed.data, seed=3, task=parsed.train.task)
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(tensors.encode(get_state(module)))
    if as_toml:
        lines = []
        for section, values in spec.items():
            lines.append(f"[{section}]")
            lines += [f"{k} = {json.dumps(v)}" for k, v in values.items()]
        (folder / "job.toml").write_text("\n".join(lines) + "\n")
    else:
        (folder / "spec.json").write_text(json.dumps(spec))
    return module


def test_import_fedaas_stays_light() -> None:
    code = (
        "import sys, fedaas; "
        "assert 'torch' not in sys.modules and 'fedaas.api' not in sys.modules, 'heavy'; "
        "fedaas.connect; assert 'fedaas.api' in sys.modules"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("as_toml", [False, True], ids=["spec.json", "job.toml"])
@pytest.mark.parametrize("task", ["classification", "binary", "regression"])
def test_load_model_gives_back_the_trained_module(tmp_path: Path, task: str, as_toml: bool) -> None:
    data = {"features": FEATURES} | ({} if task == "regression" else {"classes": CLASSES - 1})
    spec = make_spec(
        "api", features=FEATURES, model="mlp", data=data, train={"task": task, "lr": 0.1}
    )
    spec["model"]["hidden"] = [5]
    trained = _run_folder(tmp_path / "run", spec, as_toml=as_toml)
    loaded = fedaas.load_model(tmp_path / "run")
    x = torch.randn(4, FEATURES)
    assert not loaded.training
    assert torch.equal(loaded(x), trained.eval()(x))


def test_load_model_runs_only_code_the_caller_allowed(tmp_path: Path) -> None:
    spec = make_spec("api", model="plugin_model:tiny")
    spec["model"]["options"] = {"width": 3}
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "spec.json").write_text(json.dumps(spec))
    sys.modules.pop("plugin_model", None)
    with pytest.raises(ModelError, match="has not allowed"):
        load_model(tmp_path / "run")
    assert "plugin_model" not in sys.modules  # refused before anything was imported


def test_load_model_refuses_weights_of_another_model(tmp_path: Path) -> None:
    _run_folder(tmp_path / "run", make_spec("api", features=FEATURES, classes=CLASSES))
    spec = make_spec("api", features=FEATURES + 1, classes=CLASSES)
    (tmp_path / "run" / "spec.json").write_text(json.dumps(spec))
    with pytest.raises(tensors.TensorError):
        load_model(tmp_path / "run")
    with pytest.raises(SpecError, match="not a run folder"):
        load_model(tmp_path)


def test_a_bad_spec_fails_before_any_request(tmp_path: Path) -> None:
    nowhere = fedaas.connect("http://127.0.0.1:9", token="fda_x", give_up_after=0.1)
    bad = make_spec("api") | {"train": {"lr": -1}}
    with pytest.raises(SpecError, match="train.lr"):
        nowhere.submit(bad)
    (tmp_path / "job.toml").write_text("[job]\nname = 'x'\n")
    with pytest.raises(SpecError, match="required key is missing"):
        nowhere.submit(tmp_path / "job.toml")
    with pytest.raises(ValueError, match="no token"):
        fedaas.connect("http://127.0.0.1:9", token="")


def _npz(path: Path, seed: int, n: int = 48) -> str:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, FEATURES)).astype(np.float32)
    np.savez(path, x=x, y=(x[:, 0] > 0).astype(np.int64) + (x[:, 1] > 1))
    return str(path)


@pytest.mark.slow
def test_submit_follow_download_and_load_a_job(tmp_path: Path, start_agents: StartAgents) -> None:
    data = {name: _npz(tmp_path / f"{name}.npz", i) for i, name in enumerate(("a", "b"))}
    spec = make_spec("api-job", rounds=3, clients=2, features=FEATURES, classes=CLASSES)
    spec["evaluation"] = {"holdout": _npz(tmp_path / "test.npz", 9), "metrics": ["accuracy", "f1"]}
    seen: list[tuple[JobStatus, list[RoundRecord]]] = []
    with LocalCluster(tmp_path / "cluster") as cluster:
        cluster.start_server()
        with start_agents(cluster, data, poll_s=1.0):
            cluster.wait_online(2)
            with fedaas.connect(cluster.url, token=cluster.admin_token) as coordinator:
                job = coordinator.submit(spec)
                assert job.last is not None and job.last.status in ("queued", "running")
                final = job.wait(timeout=120, progress=lambda s, r: seen.append((s, r)))
                assert final.status == "completed" and job.status().round == 3
                assert [r.round for _, fresh in seen for r in fresh] == [1, 2, 3]
                for status, fresh in seen:  # each poll fetched only its new rounds
                    assert not fresh or status.rounds[-len(fresh) :] == fresh
                    assert [r.round for r in status.rounds] == list(range(1, status.round + 1))
                assert final.rounds == job.status().rounds  # the last one read whole
                assert {"accuracy", "f1"} <= set(final.rounds[-1].model_dump())
                admin = cluster.admin
                assert [r.round for r in admin.job(job.id, rounds_after=2).rounds] == [3]
                for bad in (-1, 2**63):  # 2**63: past a database integer, a 422 not a 500
                    with pytest.raises(ApiClientError, match="rounds_after") as refused:
                        admin.t.get_json(f"/v1/jobs/{job.id}", params={"rounds_after": bad})
                    assert refused.value.status == 422
                run = job.download(tmp_path / "run")
                served = tmp_path / "served.safetensors"
                assert job.download_model(served) == 3
                assert [j.id for j in coordinator.jobs()] == [job.id]
    assert (run / "model.safetensors").read_bytes() == served.read_bytes()
    assert json.loads((run / "metrics.json").read_text())["job"]["round"] == 3
    module = fedaas.load_model(run)
    assert module(torch.zeros(2, FEATURES)).shape == (2, CLASSES)


@pytest.mark.slow
def test_run_federation_on_the_callers_own_arrays(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)

    def part(n: int, shift: float) -> tuple[np.ndarray, np.ndarray]:
        x = rng.normal(shift, 1.0, size=(n, FEATURES)).astype(np.float32)
        return x, (x[:, 0] > shift).astype(np.int64) + (x[:, 1] > shift + 1)

    spec = make_spec("api-local", rounds=2, clients=2, features=FEATURES, classes=CLASSES)
    run = fedaas.run_federation(
        spec, [part(40, -1.0), part(40, 1.0)], holdout=part(60, 0.0), out=tmp_path / "local"
    )
    assert run.job.status == "completed" and len(run.job.rounds) == 2
    assert run.metric == "accuracy" and run.federated is not None and 0 <= run.federated <= 1
    assert run.references is not None
    local = run.references["local_only"]
    assert len(local["per_member"]) == 2 and local["min"] <= local["mean"] <= local["max"]
    assert set(run.references["centralized"]) >= {"accuracy", "loss"}
    doc = json.loads((tmp_path / "local" / "metrics.json").read_text())
    assert doc["baselines"]["centralized"] == run.references["centralized"]
    assert (tmp_path / "local" / "model.safetensors").read_bytes() == run.model
