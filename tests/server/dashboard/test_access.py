"""The dashboard is behind the admin token, refuses forged forms, and streams a job live.

In-process (FastAPI's test client over a real coordinator app and SQLite):
pages redirect to the login page until the admin token is given; a member's
token is not enough; the session cookie is HttpOnly and SameSite=Strict; a
form without its CSRF token changes nothing; an unauthenticated form body is
capped small; a job's page streams its state as server-sent events; the jobs
list reads no round of any job; a job that does not exist is a 404 page (not
the API's JSON) that says so, with the id escaped.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from fedaas.server.app import create_app
from fixtures.specs import make_spec

ADMIN = "fda_" + "a" * 40


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    app = create_app(tmp_path, f"sqlite:///{tmp_path / 'db.sqlite'}", ADMIN)
    with TestClient(app, base_url="http://127.0.0.1") as client:
        yield client


def _login(client: TestClient, token: str = ADMIN) -> None:
    answer = client.post("/ui/login", data={"token": token}, follow_redirects=False)
    assert answer.status_code == 303, answer.text


def test_pages_need_the_admin_token(client: TestClient) -> None:
    for path in ("/ui/jobs", "/ui/members", "/ui/submit", "/ui/jobs/job-1/events"):
        answer = client.get(path, follow_redirects=False)
        assert answer.status_code == 303 and answer.headers["location"] == "/ui/login", path
    member = client.post(
        "/v1/members", json={"name": "ana"}, headers={"Authorization": f"Bearer {ADMIN}"}
    ).json()["token"]
    for token in ("wrong", member):
        refused = client.post("/ui/login", data={"token": token}, follow_redirects=False)
        assert refused.status_code == 401 and "not this coordinator" in refused.text
    assert client.post("/ui/login", content=b"token=" + b"x" * 8000).status_code == 413
    answer = client.post("/ui/login", data={"token": ADMIN}, follow_redirects=False)
    cookie = answer.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie and "path=/ui" in cookie
    assert ADMIN not in answer.headers["set-cookie"]
    assert client.get("/ui/jobs").status_code == 200


def test_a_form_without_its_csrf_token_changes_nothing(client: TestClient) -> None:
    _login(client)
    headers = {"Authorization": f"Bearer {ADMIN}"}
    job = client.post("/v1/jobs", json={"spec": make_spec("queued")}, headers=headers).json()
    forged = client.post(f"/ui/jobs/{job['id']}/cancel", data={}, follow_redirects=False)
    assert forged.status_code == 303 and forged.headers["location"] == "/ui/login"
    assert client.get(f"/v1/jobs/{job['id']}", headers=headers).json()["status"] != "cancelled"
    page = client.get(f"/ui/jobs/{job['id']}").text
    csrf = page.split('name="csrf" value="')[1].split('"')[0]
    done = client.post(f"/ui/jobs/{job['id']}/cancel", data={"csrf": csrf})
    assert done.status_code == 200
    assert client.get(f"/v1/jobs/{job['id']}", headers=headers).json()["status"] == "cancelled"


def test_a_jobs_page_streams_its_state(client: TestClient) -> None:
    _login(client)
    headers = {"Authorization": f"Bearer {ADMIN}"}
    job = client.post("/v1/jobs", json={"spec": make_spec("streamed")}, headers=headers).json()
    client.post(f"/v1/jobs/{job['id']}/cancel", headers=headers)
    with client.stream("GET", f"/ui/jobs/{job['id']}/events") as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in stream.iter_lines() if line]
    assert lines[0] == "event: job"
    view = json.loads(lines[1].removeprefix("data: "))
    assert view["id"] == job["id"] and view["status"] == "cancelled"
    assert view["reason"] == "cancelled by the operator"


def test_a_job_that_does_not_exist_is_a_page_that_says_so(client: TestClient) -> None:
    _login(client)
    answer = client.get("/ui/jobs/job-nope")
    assert answer.status_code == 404
    assert answer.headers["content-type"].startswith("text/html")
    assert "no job &#39;job-nope&#39;" in answer.text and 'href="/ui/jobs"' in answer.text
    hostile = client.get("/ui/jobs/<img src=x onerror=alert(1)>")
    assert hostile.status_code == 404 and "text/html" in hostile.headers["content-type"]
    assert "<img" not in hostile.text and "&lt;img src=x" in hostile.text  # escaped


def test_the_api_docs_page_works_offline(client: TestClient) -> None:
    """``/docs`` loads Swagger UI from the package, not from a CDN (blank offline otherwise)."""
    page = client.get("/docs")
    assert page.status_code == 200
    assets = [part for part in page.text.split('"') if part.endswith((".js", ".css", ".svg"))]
    assert assets and all(a.startswith("/ui/static/") for a in assets), assets
    assert "cdn" not in page.text.lower() and "fastapi.tiangolo.com" not in page.text
    for asset in assets:
        assert client.get(asset).status_code == 200, asset


def _job_of_40_rounds(
    client: TestClient, name: str, metrics: dict[str, Any], cancelled: bool = False
) -> tuple[dict, Any]:
    """A submitted job with 40 closed rounds written straight to the store; the job and the
    store. The rounds go in once the job is cancelled (``cancelled``) or running (waiting
    for members that never come): a job activated after them would look for their models."""
    headers = {"Authorization": f"Bearer {ADMIN}"}
    job = client.post("/v1/jobs", json={"spec": make_spec(name)}, headers=headers).json()
    if cancelled:
        client.post(f"/v1/jobs/{job['id']}/cancel", headers=headers)
    deadline = time.monotonic() + 10
    while client.get(f"/v1/jobs/{job['id']}", headers=headers).json()["status"] == "queued":
        assert time.monotonic() < deadline, "the job never started"
        time.sleep(0.02)
    store = client.app.state.coordinator.store  # type: ignore[attr-defined]
    for number in range(1, 41):
        store.close_round(job["id"], number, metrics, [], [])
    return job, store


def _count_round_reads(store: Any, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The number of rounds of each read of rounds from now on (``store.rounds`` and
    ``store.job_view`` both read them through ``store._rounds``)."""
    read: list[int] = []
    rounds = store._rounds

    def counted(session: Any, job_id: str, after: int) -> list[dict[str, Any]]:
        read.append(len(found := rounds(session, job_id, after)))
        return found

    monkeypatch.setattr(store, "_rounds", counted)
    return read


def test_the_jobs_list_reads_no_rounds_however_long_the_jobs(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The list refreshes every 5 s while a job runs; it shows no round, so it must not read
    every past round of every job each time (its job's page does, for the charts)."""
    _login(client)
    job, store = _job_of_40_rounds(client, "long", {"seconds": 0.1, "clients": 2}, True)
    read = _count_round_reads(store, monkeypatch)
    listing = client.get("/ui/jobs").text
    assert job["id"] in listing and "40/" in listing
    assert sum(read) == 0
    assert client.get(f"/ui/jobs/{job['id']}").status_code == 200
    assert sum(read) == 40  # the job's own page: every round, for its charts and table


def test_a_jobs_stream_reads_its_rounds_once_then_only_the_newest(client: TestClient) -> None:
    """A long job's page stays open for hours: after the first read, each refresh reads the
    last known round again (its federated evaluation lands after it closes) and the new ones,
    not the whole history, and still ends up with every round as the API shows it."""
    from fedaas.server.dashboard import views

    job, store = _job_of_40_rounds(client, "watched", {"seconds": 0.1, "accuracy": 0.5})
    coordinator = client.app.state.coordinator  # type: ignore[attr-defined]
    read: list[tuple[int, int]] = []  # (rounds_after, rounds read): the stream's own reads

    def describe(job_id: str, rounds_after: int = 0) -> Any:
        job = coordinator.describe(job_id, rounds_after)
        read.append((rounds_after, len(job.rounds)))
        return job

    known = views.refreshed(describe, job["id"], None)
    store.close_round(job["id"], 41, {"seconds": 0.1, "accuracy": 0.6}, [], [])
    known = views.refreshed(describe, job["id"], known)
    store.add_round_metrics(job["id"], 41, {"federated_accuracy": 0.7})
    known = views.refreshed(describe, job["id"], known)
    assert read == [(0, 40), (39, 2), (40, 1)]
    assert known.rounds == coordinator.describe(job["id"]).rounds
    assert known.rounds[-1].model_dump()["federated_accuracy"] == 0.7


def test_a_jobs_stream_sends_rounds_and_late_evaluations_as_they_come(
    client: TestClient,
) -> None:
    _login(client)
    headers = {"Authorization": f"Bearer {ADMIN}"}
    job, store = _job_of_40_rounds(client, "live", {"seconds": 0.1, "accuracy": 0.5})
    sent = []
    with client.stream("GET", f"/ui/jobs/{job['id']}/events") as stream:
        for line in stream.iter_lines():
            if not line.startswith("data: "):
                continue
            sent.append(view := json.loads(line.removeprefix("data: ")))
            if len(sent) == 1:  # a round closes, then its evaluation adds to it
                store.close_round(job["id"], 41, {"seconds": 0.1, "accuracy": 0.6}, [], [])
            elif view["x"][-1] == 41 and "federated_accuracy" not in view["series"]:
                store.add_round_metrics(job["id"], 41, {"federated_accuracy": 0.7})
            elif "federated_accuracy" in view["series"]:
                client.post(f"/v1/jobs/{job['id']}/cancel", headers=headers)
    last = sent[-1]
    assert last["status"] == "cancelled" and last["x"] == list(range(1, 42))
    assert last["series"]["accuracy"][-2:] == [0.5, 0.6]
    assert last["series"]["federated_accuracy"][-1] == 0.7
