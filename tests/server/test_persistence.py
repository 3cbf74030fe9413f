"""The coordinator's state survives restarts the same way on SQLite and on PostgreSQL."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine, text

from fedaas.server.rounds import ActiveJob
from fedaas.sim.cluster import LocalCluster

pytestmark = pytest.mark.slow
MakeSpec = Callable[..., dict[str, Any]]


def snapshot(cluster: LocalCluster) -> dict[str, Any]:
    admin = cluster.admin
    jobs = admin.jobs()
    return {
        "members": [(m.id, m.name, m.revoked) for m in admin.members()],
        "jobs": [j.model_dump() for j in jobs],
        "details": {j.id: admin.job(j.id).model_dump(exclude={"current"}) for j in jobs},
        "models": {
            j.id: admin.t.request("GET", f"/v1/jobs/{j.id}/model").content
            for j in jobs
            if j.status == "completed"
        },
    }


def test_state_survives_a_restart_and_a_new_job_runs(
    db_url: str | None, tmp_path: Path, member_data: list[Path], make_spec: MakeSpec
) -> None:
    extra = ["--db", db_url] if db_url else []
    with LocalCluster(tmp_path / "cluster") as cluster, httpx.Client(timeout=10) as http:
        cluster.start_server(extra_args=extra)
        cluster.start_client("org-0", str(member_data[0]))
        idle_token = cluster.admin.enroll("org-1").token  # enrolled, never online
        gone_token = cluster.admin.enroll("org-2").token
        cluster.admin.revoke("org-2")
        cluster.wait_online(1, timeout=60)

        first = cluster.admin.submit(make_spec("before-restart", rounds=2))
        done = cluster.admin.wait(first.id, timeout=120)
        assert done.status == "completed", done
        assert [r.round for r in done.rounds] == [1, 2]
        assert all(r.participants == ["org-0"] for r in done.rounds)
        # a job that waits for a second member (org-1 never comes online), cancelled while running
        cancelled = cluster.admin.submit(make_spec("cancelled", rounds=1, clients=2))
        deadline = time.monotonic() + 30
        while cluster.admin.job(cancelled.id).status != "running":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        time.sleep(0.2)  # past activation: see test_cancel_during_activation_sticks
        cluster.admin.cancel(cancelled.id)
        before = snapshot(cluster)

        cluster._halt(cluster.server)  # SIGTERM, wait
        cluster.start_server(extra_args=extra)
        after = snapshot(cluster)
        assert after == before

        def poll(token: str) -> int:
            return http.get(
                f"{cluster.url}/v1/tasks/next",
                params={"timeout": 0},
                headers={"Authorization": f"Bearer {token}"},
            ).status_code

        assert poll(gone_token) == 401  # the revocation held

        # the member agent rode through the restart; a new job runs
        second = cluster.admin.submit(make_spec("after-restart", rounds=1))
        done = cluster.admin.wait(second.id, timeout=120)
        assert done.status == "completed", done
        assert done.rounds[0].participants == ["org-0"]
        statuses = {j.id: j.status for j in cluster.admin.jobs()}
        assert statuses == {
            first.id: "completed",
            cancelled.id: "cancelled",
            second.id: "completed",
        }
        rounds = [r.model_dump() for r in cluster.admin.job(first.id).rounds]
        assert rounds == before["details"][first.id]["rounds"]
        assert "Traceback" not in (cluster.logs / "server.log").read_text()
        # (only now: a member that polls counts as online and could be sampled)
        assert poll(idle_token) == 204  # an enrolled member's token still works

    # the state really is where --db says
    sqlite_file = cluster.state / "fedaas.db"
    if db_url is None:
        assert sqlite_file.exists()
        url = f"sqlite:///{sqlite_file}"
    else:
        assert not sqlite_file.exists()
        url = db_url
    engine = create_engine(url)
    with engine.connect() as connection:
        counts = {
            table: connection.execute(text(f"SELECT COUNT(*) FROM {table}")).scalar()
            for table in ("members", "jobs", "rounds", "updates")
        }
    engine.dispose()
    assert counts == {"members": 3, "jobs": 3, "rounds": 3, "updates": 3}


def test_cancel_during_activation_sticks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, make_spec: MakeSpec
) -> None:
    """Submit, then cancel while the coordinator is still activating the job (made wide here)."""
    import threading

    from fastapi.testclient import TestClient

    from fedaas.server import runner
    from fedaas.server.app import create_app

    entered, release = threading.Event(), threading.Event()
    original = runner.activate

    def slow_activate(*args: Any) -> ActiveJob:
        entered.set()
        release.wait(10)
        return original(*args)

    monkeypatch.setattr(runner, "activate", slow_activate)
    token = "fda_" + "b" * 40
    auth = {"Authorization": f"Bearer {token}"}
    spec = make_spec("race", features=4, classes=2, clients=None, timeout=30, train=None)
    app = create_app(tmp_path, f"sqlite:///{tmp_path / 'fedaas.db'}", token)
    with TestClient(app) as client:
        job_id = client.post("/v1/jobs", json={"spec": spec}, headers=auth).json()["id"]
        assert entered.wait(10)
        cancelled = client.post(f"/v1/jobs/{job_id}/cancel", headers=auth)
        assert cancelled.json()["status"] == "cancelled"
        release.set()
        time.sleep(0.5)
        assert client.get(f"/v1/jobs/{job_id}", headers=auth).json()["status"] == "cancelled"


def test_a_source_with_a_nul_character_is_422_on_every_backend(
    db_url: str | None, tmp_path: Path, make_spec: MakeSpec
) -> None:
    from fastapi.testclient import TestClient

    from fedaas.server.app import create_app

    token = "fda_" + "c" * 40
    auth = {"Authorization": f"Bearer {token}"}
    spec = make_spec("nul", features=4, classes=2, train=None, federation=None)
    app = create_app(tmp_path, db_url or f"sqlite:///{tmp_path / 'fedaas.db'}", token)
    with TestClient(app, raise_server_exceptions=False) as client:
        response = client.post("/v1/jobs", json={"spec": spec, "source": "a\x00b"}, headers=auth)
        assert client.get("/v1/jobs", headers=auth).json() == []
        assert response.status_code == 422, (response.status_code, response.text[:200])


def test_a_database_that_cannot_be_opened_is_one_clear_error(tmp_path: Path) -> None:
    """No traceback, and the password in the URL is not shown."""
    from typer.testing import CliRunner

    from fedaas.cli import app

    url = "postgresql+psycopg://fedaas:s3cret-pw@127.0.0.1:1/fedaas"
    result = CliRunner().invoke(
        app,
        ["server", "--state", str(tmp_path / "state")],
        env={"FEDAAS_DB": url, "COLUMNS": "300"},
    )
    assert result.exit_code == 2, result.output
    assert "cannot open the database" in result.output and "Connection refused" in result.output
    assert "s3cret-pw" not in result.output and "fedaas:***@127.0.0.1:1" in result.output
    assert "Traceback" not in result.output


def test_a_database_fedaas_does_not_run_on_is_named_before_any_driver_is_tried(
    tmp_path: Path,
) -> None:
    """MySQL said "No module named 'MySQLdb'"; now: which databases the coordinator keeps its
    state in. A URL that does not parse says so."""
    from fedaas.server.db import Store, StoreError

    for url in ("mysql://u:pw-123@db/x", "oracle+cx_oracle://u:pw-123@db/x"):
        with pytest.raises(StoreError, match=r"SQLite \(sqlite:///PATH\) or PostgreSQL") as no:
            Store(url)
        assert "pw-123" not in str(no.value)
    with pytest.raises(StoreError, match="Could not parse"):
        Store("not a url")
    Store(f"sqlite:///{tmp_path / 'state.db'}")  # what it runs on still opens
