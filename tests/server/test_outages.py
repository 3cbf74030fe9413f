"""The coordinator rides out its dependencies' outages and loses nothing (real components).

A real coordinator process with real member processes; the faults are real
too: a PostgreSQL server that hangs (SIGSTOP) for a few seconds and then stops
for 30 s, an S3 emulator frozen (SIGSTOP) so that every call into it hangs,
members killed so that a job fails and is then resumed. Each job completes with every round counted once, and the
operator is told what the job waits for while it waits.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from fedaas import tensors
from fedaas.protocol import JobStatus
from fedaas.sim import emulators
from fedaas.sim.cluster import LocalCluster
from fixtures import postgres as pg

pytestmark = pytest.mark.slow

MakeSpec = Callable[..., dict[str, Any]]
ROUNDS = 300  # a round of this small job takes ~10 ms: enough rounds that the fault lands mid-job
FROZEN_S = 6  # the database hangs this long before it goes away


def _run(
    cluster: LocalCluster,
    spec: dict[str, Any],
    data: list[Path],
    during: Callable[[LocalCluster, str], None] | None = None,
    *,
    fault_after_round: int = 2,
) -> tuple[JobStatus, dict[str, np.ndarray]]:
    """Members up, the job submitted; ``during`` runs once the job passed a round."""
    for i, path in enumerate(data):
        cluster.start_client(f"org-{i}", str(path))
    cluster.wait_online(len(data), timeout=60)
    job = cluster.admin.submit(spec)
    if during is not None:
        deadline = time.monotonic() + 120
        while cluster.admin.job(job.id).round < fault_after_round:
            assert time.monotonic() < deadline, "the job never got going"
            time.sleep(0.1)
        during(cluster, job.id)
    final = cluster.admin.wait(job.id, timeout=300)
    out = cluster.workdir / "model.safetensors"
    cluster.admin.download_model(job.id, out)
    model, _ = tensors.load(out)
    return final, model


def _assert_every_round_once(job: JobStatus, rounds: int) -> None:
    assert job.status == "completed", (job.status, job.reason)
    assert [r.round for r in job.rounds] == list(range(1, rounds + 1))
    assert all(r.clients == 2 for r in job.rounds), [r.clients for r in job.rounds]


def _assert_same_model(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert a.keys() == b.keys()
    for name in a:  # same data, seeds and sample; only float summation order may differ
        np.testing.assert_allclose(a[name], b[name], rtol=1e-5, atol=1e-6)


def _server_log(cluster: LocalCluster) -> str:
    return (cluster.logs / "server.log").read_text()


@pytest.fixture(scope="module")
def undisturbed(
    tmp_path_factory: pytest.TempPathFactory, member_data: list[Path]
) -> Callable[[dict[str, Any]], dict[str, np.ndarray]]:
    """The model of the same job run without a fault; run once per spec (the job's name, which
    changes nothing the job computes, left out), as the outage tests share their spec."""
    models: dict[str, dict[str, np.ndarray]] = {}

    def run(spec: dict[str, Any]) -> dict[str, np.ndarray]:
        key = json.dumps({**spec, "job": {**spec["job"], "name": ""}}, sort_keys=True)
        if key not in models:
            with LocalCluster(tmp_path_factory.mktemp("undisturbed")) as cluster:
                cluster.start_server()
                job, model = _run(cluster, spec, member_data[:2])
            _assert_every_round_once(job, spec["job"]["rounds"])
            models[key] = model
        return models[key]

    return run


def test_a_database_that_hangs_then_goes_away_pauses_the_job_and_loses_nothing(
    tmp_path: Path,
    member_data: list[Path],
    make_spec: MakeSpec,
    undisturbed: Callable[[dict[str, Any]], dict[str, np.ndarray]],
) -> None:
    if not pg.installed():
        pytest.skip(f"PostgreSQL 15 is not installed ({pg.PGBIN} is missing)")
    spec = make_spec("db-outage", ROUNDS, clients=2, min_clients=2, timeout=300)
    database = pg.create_cluster()
    answers: list[httpx.Response] = []
    health_s: list[float] = []

    def outage(cluster: LocalCluster, job_id: str) -> None:
        with database.frozen():  # first it hangs: the coordinator must keep answering
            frozen = time.monotonic()
            while time.monotonic() - frozen < FROZEN_S:
                began = time.monotonic()
                health = httpx.get(f"{cluster.url}/v1/health", timeout=10)
                health_s.append(time.monotonic() - began)
                assert health.status_code == 200, health.text
                time.sleep(1)
        database.stop()
        stopped = time.monotonic()
        headers = {"Authorization": f"Bearer {cluster.admin_token}"}
        while time.monotonic() - stopped < 30:  # the operator asks while it is down
            answers.append(httpx.get(f"{cluster.url}/v1/jobs/{job_id}", headers=headers))
            time.sleep(2)
        database.start()

    try:
        url = database.create_database()
        with LocalCluster(tmp_path / "cluster") as cluster:
            cluster.start_server(extra_args=["--db", url])
            job, model = _run(cluster, spec, member_data[:2], outage)
            log = _server_log(cluster)
    finally:
        database.destroy()
    _assert_every_round_once(job, ROUNDS)
    # the observer and the API read the database off the event loop: while it hung, the
    # coordinator still answered at once (it used to hang with it within a second)
    assert len(health_s) >= FROZEN_S // 2 and max(health_s) < 2, health_s
    down = [a for a in answers if a.status_code != 200]
    assert down, "the API never noticed that the database was gone"
    for answer in down:  # JSON with a reason and a retry hint, never a plain-text 500
        assert answer.status_code == 503, answer.text
        assert answer.json()["error"] == "unavailable"
        assert "database" in answer.json()["detail"]
        assert int(answer.headers["Retry-After"]) > 0
    assert log.count("database unavailable") == 1, log[-3000:]  # one line per incident
    assert "database available again" in log
    assert "Traceback" not in log, log[-3000:]
    _assert_same_model(model, undisturbed(spec))


def test_a_hung_artifact_store_pauses_the_job_visibly(
    tmp_path: Path,
    member_data: list[Path],
    make_spec: MakeSpec,
    undisturbed: Callable[[dict[str, Any]], dict[str, np.ndarray]],
) -> None:
    spec = make_spec("store-outage", ROUNDS, clients=2, min_clients=2, timeout=300)
    waiting: list[JobStatus] = []
    ready: list[httpx.Response] = []
    try:
        s3 = emulators.start_s3()
    except emulators.EmulatorError as exc:
        pytest.skip(f"no S3 emulator: {exc}")

    def freeze(cluster: LocalCluster, job_id: str) -> None:
        os.kill(s3.pid, signal.SIGSTOP)  # every call into the store now hangs
        frozen = time.monotonic()
        try:
            while time.monotonic() - frozen < 45:
                status = cluster.admin.job(job_id)
                if status.waiting_for:
                    waiting.append(status)
                    ready.append(httpx.get(f"{cluster.url}/v1/ready"))
                time.sleep(1)
        finally:
            os.kill(s3.pid, signal.SIGCONT)

    with s3:
        s3.make_bucket("fedaas-artifacts")
        with LocalCluster(tmp_path / "cluster") as cluster:
            cluster.start_server(
                extra_args=["--artifacts", "s3://fedaas-artifacts/outage"], env=s3.env
            )
            job, model = _run(cluster, spec, member_data[:2], freeze)
            log = _server_log(cluster)
    _assert_every_round_once(job, ROUNDS)
    assert waiting, "the job's status never said what it was waiting for"
    paused = waiting[-1]
    assert paused.status == "running"
    assert [w.dependency for w in paused.waiting_for] == ["artifact store"]
    assert "did not answer" in paused.waiting_for[0].error
    assert ready and ready[-1].status_code == 503, ready[-1].text if ready else None
    assert "artifact store" in ready[-1].text
    assert log.count("artifact store unavailable") == 1, log[-3000:]
    assert "artifact store available again" in log
    _assert_same_model(model, undisturbed(spec))


def test_a_failed_job_resumes_from_its_last_committed_round(
    tmp_path: Path, member_data: list[Path], make_spec: MakeSpec
) -> None:
    # the coordinator still counts the killed process online when wait_online returns, so the
    # resumed round's deadline must cover the new process's start-up (2-4 s on 2 loaded cores)
    spec = make_spec("resume", ROUNDS, clients=2, min_clients=2, timeout=10)
    with LocalCluster(tmp_path / "cluster") as cluster:
        cluster.start_server()
        before: list[Any] = []

        def lose_a_member(cluster: LocalCluster, job_id: str) -> None:
            cluster.kill_client("org-1")
            failed = cluster.admin.wait(job_id, timeout=120)
            assert failed.status == "failed" and "quorum not met" in (failed.reason or "")
            before.extend(failed.rounds)
            cluster.restart_client("org-1")
            cluster.wait_online(2, timeout=60)
            resumed = cluster.admin.resume(job_id)
            assert resumed.status in ("queued", "running") and resumed.reason is None

        job, _ = _run(cluster, spec, member_data[:2], lose_a_member)
        again = httpx.post(
            f"{cluster.url}/v1/jobs/{job.id}/resume",
            headers={"Authorization": f"Bearer {cluster.admin_token}"},
        )
        cli = subprocess.run(  # the CLI refuses in one line too
            [sys.executable, "-m", "fedaas", "job", "resume", job.id, "--server", cluster.url],
            capture_output=True,
            text=True,
            env={**os.environ, "FEDAAS_ADMIN_TOKEN": cluster.admin_token},
            timeout=60,
        )
    _assert_every_round_once(job, ROUNDS)
    kept = {r.round: r for r in job.rounds}
    for old in before:  # rounds committed before the failure are the same records
        assert kept[old.round] == old
    assert again.status_code == 409 and again.json()["error"] == "conflict"
    assert "only a failed job can be resumed" in again.json()["detail"]
    assert cli.returncode != 0
    assert "only a failed job can be resumed" in cli.stderr + cli.stdout
    assert "Traceback" not in cli.stderr


def _mount_small_disk(path: Path, size: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        return False
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True
    )
    return done.returncode == 0


def test_a_full_state_disk_pauses_the_job_until_space_returns(
    tmp_path: Path,
    member_data: list[Path],
    make_spec: MakeSpec,
    undisturbed: Callable[[dict[str, Any]], dict[str, np.ndarray]],
) -> None:
    disk = tmp_path / "disk"
    if not _mount_small_disk(disk, "16m"):
        pytest.skip("cannot mount a small filesystem here (needs root and tmpfs)")
    spec = make_spec("disk-full", ROUNDS, clients=2, min_clients=2, timeout=300)
    filler = disk / "filler"

    def fill(cluster: LocalCluster, job_id: str) -> None:
        # the state disk fills up mid-job; unbuffered, so closing the file has nothing left
        # to flush (a buffered close raised ENOSPC outside the try once)
        with open(filler, "wb", buffering=0) as f:
            try:
                while True:
                    f.write(b"\0" * (256 * 1024))
            except OSError:
                pass
        full = time.monotonic()
        while time.monotonic() - full < 20:
            time.sleep(1)
        filler.unlink()

    try:
        with LocalCluster(tmp_path / "cluster") as cluster:
            cluster.state = disk / "state"  # SQLite and the models live on the small disk
            cluster.start_server()
            job, model = _run(cluster, spec, member_data[:2], fill)
            log = _server_log(cluster)
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)
    _assert_every_round_once(job, ROUNDS)
    assert "unavailable" in log and "available again" in log, log[-3000:]
    _assert_same_model(model, undisturbed(spec))


def test_a_stopped_artifact_store_is_waited_for(
    tmp_path: Path, member_data: list[Path], make_spec: MakeSpec
) -> None:
    """The S3 emulator killed for 30 s mid-job: connections refused, then a fresh one comes back."""
    spec = make_spec("store-stopped", ROUNDS, clients=2, min_clients=2, timeout=300)
    try:
        s3 = emulators.start_s3()
    except emulators.EmulatorError as exc:
        pytest.skip(f"no S3 emulator: {exc}")
    port = int(s3.endpoint.rsplit(":", 1)[1])
    again: list[emulators.Emulator] = []

    def stop(cluster: LocalCluster, job_id: str) -> None:
        s3.stop()
        stopped = time.monotonic()
        time.sleep(30)
        assert time.monotonic() - stopped >= 30
        # moto keeps nothing: its bucket is made anew, before it answers the coordinator
        back = emulators.start_s3(port=port, buckets=("fedaas-artifacts",))
        again.append(back)

    try:
        s3.make_bucket("fedaas-artifacts")
        with LocalCluster(tmp_path / "cluster") as cluster:
            cluster.start_server(
                extra_args=["--artifacts", "s3://fedaas-artifacts/outage"], env=s3.env
            )
            job, _ = _run(cluster, spec, member_data[:2], stop)
            log = _server_log(cluster)
    finally:
        s3.stop()
        for emulator in again:
            emulator.stop()
    _assert_every_round_once(job, ROUNDS)
    assert log.count("artifact store unavailable") == 1, log[-3000:]
    assert "artifact store available again" in log
    assert "Traceback" not in log, log[-3000:]
