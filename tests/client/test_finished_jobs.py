"""The model back to every member (issue 11, item 5), with a real coordinator and real agents.

- after a job completes, every member that trained for it holds the final model in its state
  folder, bit-identical to the coordinator's own file, with the job's spec; a member that
  declined holds nothing;
- ``fedaas job download`` with a member's token writes the run folder of a job it took part
  in, and answers a clear 403 for a job it declined or never joined (the same rule as
  ``GET /v1/jobs/{id}`` and ``GET /v1/jobs/{id}/model``);
- what a member sees of a job leaves out the other members (participants, declines);
- ``fedaas.load_model`` rebuilds the module from a member's kept folder.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import fedaas
from fedaas.cli import app as fedaas_app
from fedaas.client.transport import ApiClientError, Transport
from fedaas.sim.cluster import LocalCluster
from fixtures.agents import StartAgents
from fixtures.specs import make_spec

pytestmark = pytest.mark.slow

FEATURES, CLASSES = 4, 3


def _npz(path: Path, features: int, seed: int) -> str:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(60, features)).astype(np.float32)
    np.savez(path, x=x, y=np.arange(60) % CLASSES)
    return str(path)


def _wait_for(path: Path, seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert path.exists(), f"{path} did not appear within {seconds:g} s"


def test_every_member_keeps_the_final_model_and_only_members_may_download_it(
    tmp_path: Path, cluster: LocalCluster, start_agents: StartAgents
) -> None:
    data = {
        "alpha": _npz(tmp_path / "a.npz", FEATURES, 1),
        "beta": _npz(tmp_path / "b.npz", FEATURES, 2),
        "gamma": _npz(tmp_path / "g.npz", FEATURES + 1, 3),  # wrong schema: declines the job
    }
    spec = make_spec(
        "kept", rounds=2, clients=None, min_clients=2, features=FEATURES, classes=CLASSES
    )
    with start_agents(cluster, data, poll_s=3.0) as team:
        cluster.wait_online(3)
        job = cluster.admin.wait(cluster.admin.submit(spec).id, timeout=90)
        assert job.status == "completed" and set(job.declined) == {"gamma"}, job
        served = (
            cluster.state / "artifacts" / "jobs" / job.id / f"model-{job.round:06d}.safetensors"
        )
        for name in ("alpha", "beta"):  # each kept it, as the coordinator has it
            folder = team.agents[name].state_dir / f"finished-{job.id}"
            _wait_for(folder / "model.safetensors", 10.0)  # noticed within ~1 s of the end
            assert (folder / "model.safetensors").read_bytes() == served.read_bytes()
            assert json.loads((folder / "spec.json").read_text()) == job.spec.to_dict()
            kept = json.loads((folder / "job.json").read_text())
            assert kept["status"] == "completed" and kept["round"] == 2
            assert [r["round"] for r in kept["rounds"]] == [1, 2]  # the whole record
            assert all(r["participants"] == [] for r in kept["rounds"])
        assert not list(team.agents["gamma"].state_dir.glob("finished-*"))
        tokens = {n: _token(t) for n, t in team.transports.items()}
    outsider = cluster.admin.enroll("delta").token  # enrolled after the job: never took part

    module = fedaas.load_model(team.agents["alpha"].state_dir / f"finished-{job.id}")
    assert isinstance(module, torch.nn.Module)
    assert module(torch.zeros(1, FEATURES)).shape == (1, CLASSES)

    runner = CliRunner()
    cli = ["job", "download", job.id, "--server", cluster.url]
    out = tmp_path / "alpha-run"
    result = runner.invoke(fedaas_app, [*cli, "--out", str(out), "--token", tokens["alpha"]])
    assert result.exit_code == 0, result.output
    assert (out / "model.safetensors").read_bytes() == served.read_bytes()
    assert json.loads((out / "metrics.json").read_text())["job"]["status"] == "completed"
    for who, token in (("gamma", tokens["gamma"]), ("delta", outsider)):
        denied = runner.invoke(fedaas_app, [*cli, "--out", str(tmp_path / who), "--token", token])
        assert isinstance(denied.exception, ApiClientError), denied.output
        assert (denied.exception.status, denied.exception.code) == (403, "not_a_participant")
        assert not (tmp_path / who / "model.safetensors").exists()
        for path in (
            f"/v1/jobs/{job.id}",
            f"/v1/jobs/{job.id}?rounds_after=1",  # asking for part of the record changes nothing
            f"/v1/jobs/{job.id}/model",
        ):
            answer = _get(cluster, path, token)
            assert answer.status_code == 403, answer.text
            assert answer.json()["error"] == "not_a_participant"
    shell = subprocess.run(  # the command itself: one line, exit status 2, nothing written
        [sys.executable, "-m", "fedaas", *cli, "--out", str(tmp_path / "g2")],
        env={**os.environ, "FEDAAS_TOKEN": tokens["gamma"], "FEDAAS_ADMIN_TOKEN": ""},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert shell.returncode == 2, shell.stderr
    assert "declined job" in shell.stderr and "403 not_a_participant" in shell.stderr
    assert "Traceback" not in shell.stderr and not (tmp_path / "g2").exists()
    seen = _get(cluster, f"/v1/jobs/{job.id}", tokens["alpha"]).json()
    assert seen["declined"] == {} and all(r["participants"] == [] for r in seen["rounds"])
    assert not [k for r in seen["rounds"] for k in r if k.startswith(("members.", "federated_"))]
    assert any(k.startswith("members.") for k in job.rounds[-1].model_dump())  # the operator's
    assert _get(cluster, "/v1/jobs/nope", tokens["alpha"]).status_code == 404


def _token(transport: Transport) -> str:
    return str(transport._http.headers["Authorization"]).removeprefix("Bearer ")


def _get(cluster: LocalCluster, path: str, token: str) -> httpx.Response:
    return httpx.get(cluster.url + path, headers={"Authorization": f"Bearer {token}"}, timeout=10)
