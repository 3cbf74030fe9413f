"""A short federated job whose members read from every storage kind.

One coordinator process keeps its artifacts in S3 (moto); four member
processes read their partitions from a local CSV file, S3 (Parquet), Google
Cloud Storage (Parquet) and Azure Blob Storage (NPZ), each with only its own
cloud's credentials in its environment. The job must run every round with
all four, and the S3 artifact store must hold the final model.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fedaas import storage, tensors
from fedaas.data.digits import digits_federation
from fedaas.data.source import write_dataset
from fedaas.sim import emulators
from fedaas.sim.cluster import LocalCluster
from fixtures.specs import make_spec

pytestmark = [pytest.mark.emulator, pytest.mark.slow]


def test_members_on_every_storage_kind_train_one_model(
    tmp_path: Path,
    s3_emulator: emulators.Emulator,
    gcs_emulator: emulators.Emulator,
    az_emulator: emulators.Emulator,
) -> None:
    parts, _ = digits_federation(4, 0.5, 0)
    placements = [
        (None, str(tmp_path / "local"), "csv"),
        (s3_emulator, s3_emulator.make_bucket("members-s3"), "parquet"),
        (gcs_emulator, gcs_emulator.make_bucket("members-gs"), "parquet"),
        (az_emulator, az_emulator.make_bucket("members-az"), "npz"),
    ]
    artifacts = storage.join(s3_emulator.make_bucket("artifacts"), "coordinator")
    spec = make_spec(
        "clouds",
        rounds=2,
        seed=0,
        model="mlp",
        features=64,
        classes=10,
        clients=None,
        min_clients=4,
        timeout=120,
        train=None,
    )
    spec["model"]["hidden"] = [16]
    with LocalCluster(tmp_path / "cluster") as cluster:
        cluster.start_server(extra_args=["--artifacts", artifacts], env=s3_emulator.env)
        for i, ((emulator, base, fmt), (x, y)) in enumerate(zip(placements, parts, strict=True)):
            options = emulator.storage_options if emulator else {}
            url = write_dataset(base, f"member-{i}", x, y, fmt, options)
            cluster.start_client(f"m{i}", url, env=emulator.env if emulator else {})
        cluster.wait_online(4)
        job = cluster.admin.wait(cluster.admin.submit(spec).id)
        model = tmp_path / "model.safetensors"
        cluster.admin.download_model(job.id, model)
    assert job.status == "completed", job.reason
    assert [r.clients for r in job.rounds] == [4, 4]
    assert job.rounds[0].participants == ["m0", "m1", "m2", "m3"]
    stored = storage.read_bytes(
        storage.join(artifacts, "jobs", job.id, "model-000002.safetensors"),
        s3_emulator.storage_options,
    )
    assert stored == model.read_bytes()
    state, meta = tensors.decode(stored)
    assert meta["round"] == "2" and set(state) == {"0.weight", "0.bias", "2.weight", "2.bias"}


class RestartableS3:
    """A test's own S3 emulator, to stop and bring back on its port (moto keeps nothing, so it
    comes back with the objects given, there before it answers anyone)."""

    def __init__(self, first: emulators.Emulator) -> None:
        self.first = first
        self.port = int(first.endpoint.rsplit(":", 1)[1])
        self.again: list[emulators.Emulator] = []

    def back(self, objects: dict[str, Path]) -> None:
        self.again.append(emulators.start_s3(port=self.port, objects=objects))


@pytest.fixture
def own_s3() -> Iterator[RestartableS3]:
    try:
        s3 = RestartableS3(emulators.start_s3())
    except emulators.EmulatorError as exc:
        pytest.skip(f"no S3 emulator: {exc}")
    try:
        yield s3
    finally:
        for emulator in (s3.first, *s3.again):
            emulator.stop()


def _digits_spec(name: str, rounds: int, min_clients: int, timeout: float) -> dict[str, Any]:
    spec = make_spec(
        name,
        rounds=rounds,
        seed=0,
        model="mlp",
        features=64,
        classes=10,
        clients=None,
        min_clients=min_clients,
        timeout=timeout,
        train=None,
    )
    spec["model"]["hidden"] = [16]
    return spec


def test_a_member_whose_store_is_down_misses_rounds_and_stays_in_the_job(
    tmp_path: Path, own_s3: RestartableS3
) -> None:
    """A member's object store is stopped when the job starts and comes back later: the member
    misses the rounds in between (it is unreachable, not wrong) and takes part again once its
    store answers; it never declines the job over an outage."""
    (xa, ya), (xb, yb) = digits_federation(2, 0.5, 0)[0]
    s3 = own_s3.first
    # 100 rounds: the benched member is asked again within 17 rounds once its store is back
    spec = _digits_spec("store-down", rounds=100, min_clients=1, timeout=2)
    local_b = write_dataset(str(tmp_path / "b"), "b", xb, yb, "npz")
    url_b = write_dataset(s3.make_bucket("members"), "b", xb, yb, "npz", s3.storage_options)
    with LocalCluster(tmp_path / "cluster") as cluster:
        cluster.start_server()
        cluster.start_client("a", write_dataset(str(tmp_path / "local"), "a", xa, ya, "npz"))
        cluster.start_client("b", url_b, env=s3.env)
        cluster.wait_online(2)
        s3.stop()
        job_id = cluster.admin.submit(spec).id
        log = cluster.logs / "client-b.log"
        deadline = time.monotonic() + 180  # the backend's own retries give up first
        gave_up = ("staying in the job", "leaving job", "cannot take part")
        while not any(s in log.read_text() for s in gave_up):
            assert time.monotonic() < deadline, "member b never gave up on its store"
            time.sleep(0.5)
        own_s3.back({"members/b.npz": Path(local_b)})
        job = cluster.admin.wait(job_id, timeout=300)
        log_b = log.read_text()
    assert job.status == "completed", job.reason
    assert job.declined == {}, job.declined
    assert job.rounds[0].participants == ["a"]
    assert any("b" in r.participants for r in job.rounds[2:]), [r.participants for r in job.rounds]
    assert "staying in the job: the data's store is unavailable" in log_b, log_b[-2000:]
    assert "leaving job" not in log_b and "cannot take part" not in log_b


def test_a_held_out_set_whose_store_is_down_is_waited_for(
    tmp_path: Path, own_s3: RestartableS3
) -> None:
    """The coordinator's held-out set lives in S3, stopped when the job starts: the job waits
    (the operator is told what for) and runs once the store is back, instead of failing."""
    parts, (x_test, y_test) = digits_federation(2, 0.5, 0)
    s3 = own_s3.first
    spec = _digits_spec("holdout-down", rounds=2, min_clients=2, timeout=60)
    local = write_dataset(str(tmp_path / "holdout"), "test", x_test, y_test, "npz")
    bucket = s3.make_bucket("holdout")
    holdout = write_dataset(bucket, "test", x_test, y_test, "npz", s3.storage_options)
    spec["evaluation"] = {"holdout": holdout}
    with LocalCluster(tmp_path / "cluster") as cluster:
        cluster.start_server(env=s3.env)
        for i, (x, y) in enumerate(parts):
            cluster.start_client(
                f"m{i}", write_dataset(str(tmp_path / "local"), f"m{i}", x, y, "npz")
            )
        cluster.wait_online(2)
        s3.stop()
        job_id = cluster.admin.submit(spec).id
        deadline = time.monotonic() + 120
        while not (status := cluster.admin.job(job_id)).waiting_for:
            assert status.status != "failed", status.reason
            assert time.monotonic() < deadline, "the job never said what it waits for"
            time.sleep(0.5)
        (waiting,) = status.waiting_for
        assert waiting.dependency == "held-out data store", waiting
        assert "cannot reach the storage service" in waiting.error
        own_s3.back({"holdout/test.npz": Path(local)})
        job = cluster.admin.wait(job_id, timeout=300)
    assert job.status == "completed", job.reason
    assert [r.clients for r in job.rounds] == [2, 2]
    assert job.rounds[-1].accuracy is not None
