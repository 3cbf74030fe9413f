"""Both backends give the model the in-process engine gives, bit for bit (real processes).

:func:`simulate` with two worker processes, and ``fedaas simulate --backend
ray`` against a real Ray cluster started here (``ray start --head --block`` on loopback, ended
through its own process group), are compared with the same job run on
:class:`InlinePool` in this process.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fedaas.sim.simulate import simulate
from fixtures.simulation import InlinePool

pytestmark = pytest.mark.slow

PARTITIONS = "dirichlet:digits:8"


JOB = """
[job]
name = "sim-backends"
rounds = 2
seed = 3

[model]
name = "mlp"
hidden = [16]

[data]
features = 64
classes = 10

[train]
lr = 0.05
batch_size = 16

[federation]
clients_per_round = 6
min_clients = 4
"""


def _spec_file(tmp_path: Path) -> tuple[Path, str]:
    """The job as TOML, and the SHA-256 of its model computed in this process."""
    path = tmp_path / "job.toml"
    path.write_text(JOB)
    inline = simulate(
        path, PARTITIONS, backend=InlinePool(), out_dir=tmp_path / "inline", progress=False
    )
    return path, inline.model_sha256


def _simulate(args: list[str], env: dict[str, str] | None = None) -> dict:
    cli = Path(sys.executable).with_name("fedaas")
    done = subprocess.run(
        [str(cli), "simulate", *args, "--json"],
        capture_output=True,
        text=True,
        timeout=240,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_worker_processes_give_the_in_process_model(tmp_path: Path) -> None:
    path, expected = _spec_file(tmp_path)
    out = tmp_path / "local"
    result = simulate(path, PARTITIONS, workers=2, out_dir=out, progress=False)
    assert result.job.status == "completed" and len(result.members) == 8
    assert result.model_sha256 == expected
    assert (out / "metrics.json").exists() and (out / "accuracy.png").exists()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


RAY_ENV = {
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",  # every port on 127.0.0.1
    "RAY_AUTH_MODE": "disabled",
    "RAY_USAGE_STATS_ENABLED": "0",
}


@pytest.fixture
def ray_cluster(tmp_path: Path) -> Iterator[str]:
    """A one-node Ray cluster on loopback: its address; stopped by its own process group."""
    pytest.importorskip("ray")
    port = _free_port()
    env = {**os.environ, **RAY_ENV}
    ray = Path(sys.executable).with_name("ray")
    log = (tmp_path / "ray.log").open("wb")
    head = subprocess.Popen(
        [
            str(ray),
            "start",
            "--head",
            "--block",
            "--node-ip-address=127.0.0.1",
            f"--port={port}",
            "--num-cpus=2",
            "--include-dashboard=false",
            "--disable-usage-stats",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=log,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                assert head.poll() is None, (tmp_path / "ray.log").read_text()[-2000:]
                assert time.monotonic() < deadline, "the Ray head did not come up"
                time.sleep(0.5)
        yield f"127.0.0.1:{port}"
    finally:
        os.kill(head.pid, signal.SIGTERM)  # `ray start --block` stops what it started
        try:
            head.wait(timeout=30)
        except subprocess.TimeoutExpired:
            head.kill()
            head.wait()
        try:  # anything of its session (its own process group) still there
            os.killpg(head.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        log.close()


def test_a_real_ray_cluster_gives_the_same_model(tmp_path: Path, ray_cluster: str) -> None:
    path, expected = _spec_file(tmp_path)
    out = tmp_path / "ray"
    summary = _simulate(
        [
            str(path),
            "--partitions",
            PARTITIONS,
            "--backend",
            "ray",
            "--address",
            ray_cluster,
            "--out",
            str(out),
        ],
        env={**os.environ, **RAY_ENV},
    )
    assert summary["status"] == "completed"
    assert summary["model_sha256"] == expected
    began = time.monotonic()  # more GPUs than the cluster has: refused, not waited for forever
    cli = Path(sys.executable).with_name("fedaas")
    args = [str(path), "--partitions", PARTITIONS, "--out", str(tmp_path / "gpu")]
    ray_args = ["--backend", "ray", "--address", ray_cluster, "--gpus-per-member", "1"]
    refused = subprocess.run(
        [str(cli), "simulate", *args, *ray_args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **RAY_ENV},
    )
    assert refused.returncode == 2, refused.stderr[-2000:]
    assert "reserves 1 GPU(s) but the Ray cluster has 0" in " ".join(refused.stderr.split())
    assert time.monotonic() - began < 60
