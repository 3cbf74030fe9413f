"""A short federated job whose members read from every storage kind.

One coordinator process keeps its artifacts in S3 (moto); four member
processes read their partitions from a local CSV file, S3 (Parquet), Google
Cloud Storage (Parquet) and Azure Blob Storage (NPZ), each with only its own
cloud's credentials in its environment. The job must run every round with
all four, and the S3 artifact store must hold the final model.
"""

from __future__ import annotations

from pathlib import Path

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
