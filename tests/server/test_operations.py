"""The operator's view of a real coordinator: /metrics, readiness, round log lines, MLflow.

One coordinator process and two member agents (threads) run a two-round job
tracked to a local MLflow store (SQLite); a forged upload is refused. Then:
Prometheus' own text parser reads ``/metrics`` and finds the rounds and the
uploads (accepted and rejected by reason); ``/v1/ready`` is 200 and names
its checks; the coordinator's log has one line per round and never the
admin token or a member token; MLflow's own client reads the run back.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from fedaas.protocol import JobStatus
from fedaas.sim.cluster import LocalCluster
from fixtures.agents import AgentThreads, agent_threads
from fixtures.specs import make_spec

pytestmark = pytest.mark.slow

FEATURES, CLASSES = 6, 3


def _write_npz(path: Path, seed: int) -> str:
    rng = np.random.default_rng(seed)
    np.savez(
        path,
        x=rng.normal(size=(60, FEATURES)).astype(np.float32),
        y=np.arange(60) % CLASSES,
    )
    return str(path)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("operations")
    datasets = {name: _write_npz(tmp / f"{name}.npz", i) for i, name in enumerate(("ana", "bo"))}
    store = f"sqlite:///{tmp / 'mlflow.db'}"
    spec = make_spec(
        "tracked",
        rounds=2,
        clients=2,
        min_clients=2,
        features=FEATURES,
        classes=CLASSES,
        evaluation={"validation_split": 0.2},
        tracking={"mlflow": store, "experiment": "ops-test"},
    )
    with LocalCluster(tmp / "cluster") as cluster:
        cluster.start_server()
        with agent_threads(cluster, datasets, tmp / "members") as team:
            cluster.wait_online(2, timeout=60)
            job = cluster.admin.submit(spec)
            outsider = cluster.admin.enroll("mallory").token  # enrolled, never sampled
            forged = httpx.put(
                f"{cluster.url}/v1/jobs/{job.id}/rounds/1/update",
                content=b"not safetensors",
                headers={"Authorization": f"Bearer {outsider}"},
            )
            done = cluster.admin.wait(job.id, timeout=120)
            yield {
                "cluster": cluster,
                "job": done,
                "forged": forged,
                "store": store,
                "tokens": [_token(team, n) for n in datasets],
            }


def _token(team: AgentThreads, name: str) -> str:
    return team.transports[name]._http.headers["Authorization"].removeprefix("Bearer ")


def _metrics(cluster: LocalCluster, token: str | None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.get(f"{cluster.url}/metrics", headers=headers)


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def test_metrics_show_rounds_and_uploads_in_prometheus_format(run: dict[str, Any]) -> None:
    cluster, job = run["cluster"], run["job"]
    assert job.status == "completed", job.reason
    assert run["forged"].status_code in (403, 409), run["forged"].text  # not sampled / not open
    assert _metrics(cluster, None).status_code == 401
    assert _metrics(cluster, run["tokens"][0]).status_code == 403  # members don't see it
    deadline = time.monotonic() + 10
    while True:  # the observer ticks every second
        response = _metrics(cluster, cluster.admin_token)
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain")
        samples = _samples(response.text)
        if samples.get(("fedaas_rounds_completed_total", (("job", job.id),))) == 2:
            break
        assert time.monotonic() < deadline, response.text
        time.sleep(0.2)
    assert samples[("fedaas_round_duration_seconds_count", ())] == 2
    assert samples[("fedaas_uploads_total", (("outcome", "accepted"), ("reason", "")))] == 4
    rejected = {
        labels: v
        for (name, labels), v in samples.items()
        if name == "fedaas_uploads_total" and ("outcome", "rejected") in labels
    }
    why = run["forged"].json()["error"]
    assert rejected == {(("outcome", "rejected"), ("reason", why)): 1}, rejected
    assert samples[("fedaas_bytes_received_total", (("job", job.id),))] > 0
    assert samples[("fedaas_bytes_sent_total", (("job", job.id),))] > 0
    assert samples[("fedaas_members_enrolled", ())] == 3
    assert samples[("fedaas_jobs", (("status", "completed"),))] == 1
    assert samples[("fedaas_job_round", (("job", job.id),))] == 2
    assert samples[("fedaas_database_seconds_count", ())] > 0
    assert samples[("fedaas_artifact_store_seconds_count", (("operation", "save_model"),))] >= 3


def test_liveness_and_readiness(run: dict[str, Any]) -> None:
    url = run["cluster"].url
    assert httpx.get(f"{url}/v1/health").json()["status"] == "ok"
    ready = httpx.get(f"{url}/v1/ready")
    assert ready.status_code == 200, ready.text
    body = ready.json()
    assert body["status"] == "ready"
    assert body["checks"] == {
        "database": "ok",
        "artifacts": "ok",
        "supervisor": "ok",
        "accepting": "ok",
    }


def test_the_log_has_one_line_per_round_and_no_secret(run: dict[str, Any]) -> None:
    cluster, job = run["cluster"], run["job"]
    deadline = time.monotonic() + 10
    text = ""
    while time.monotonic() < deadline:
        text = (cluster.logs / "server.log").read_text()
        if f"job {job.id} completed" in text:
            break
        time.sleep(0.2)
    rounds = [line for line in text.splitlines() if f"job {job.id} round " in line]
    assert len(rounds) == 2, text
    assert "round 1/2: 2 member(s)" in rounds[0] and "accuracy=" in rounds[0]
    assert f"job {job.id} (tracked) started" in text
    assert f"job {job.id} completed after round 2/2" in text
    assert "member ana connected" in text and "member bo connected" in text
    for secret in [cluster.admin_token, *run["tokens"]]:
        assert secret not in text
    assert ".npz" not in text  # members' data locations never reach the coordinator


def test_the_job_is_read_back_with_mlflows_client(run: dict[str, Any]) -> None:
    from mlflow.tracking import MlflowClient

    job: JobStatus = run["job"]
    log = run["cluster"].logs / "server.log"
    deadline = time.monotonic() + 60
    while f"job {job.id}: MLflow run" not in log.read_text() or "ended" not in log.read_text():
        assert time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.3)  # (two processes creating MLflow's tables at once would collide)
    client = MlflowClient(tracking_uri=run["store"])
    experiment = client.get_experiment_by_name("ops-test")
    (found,) = client.search_runs([experiment.experiment_id])
    assert found.info.status == "FINISHED"
    assert found.data.tags["fedaas.job_id"] == job.id
    assert found.data.params["train.lr"] == "0.1"
    assert found.data.params["federation.min_clients"] == "2"
    history = client.get_metric_history(found.info.run_id, "accuracy")
    assert [m.step for m in sorted(history, key=lambda m: m.step)] == [1, 2]
    assert [round(m.value, 6) for m in sorted(history, key=lambda m: m.step)] == [
        round(r.accuracy, 6) for r in job.rounds if r.accuracy is not None
    ]
    artifacts = [a.path for a in client.list_artifacts(found.info.run_id)]
    assert artifacts == ["model.safetensors"]
