"""Access control against a real coordinator: every route, every kind of token.

Rules checked here:
- every route in the OpenAPI document has a role (public, admin, member, any);
- a missing, unknown, malformed or revoked token is 401 with
  ``WWW-Authenticate: Bearer`` on every protected route, and changes nothing;
- a member token is 403 on every admin route; the admin token is 403 on
  member routes; no member route lets a member name another member;
- a member never sees another member's update (not its bytes, not its
  metrics, not its receipt), and cannot replace it;
- uploads over the cap derived from the model are 413, and unauthenticated
  or unsampled uploads are refused before the body is read;
- revoking is immediate and survives a coordinator restart;
- no token appears in the coordinator's log or database, and there is no
  access log.

One coordinator serves the tests that leave it untouched; a job is opened with
``alpha`` and ``beta`` sampled (``gamma`` is enrolled but never polls). A test
that changes the federation (an update, a revocation, a restart) gets a
coordinator of its own, so the tests pass in any order. The tests act as
members by hand over HTTP.
"""

from __future__ import annotations

import json
import os
import socket
import stat
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import typer
from typer.testing import CliRunner

from fedaas.cli import members as members_cli
from fedaas.server.auth import load_admin_token, token_hash
from fixtures.federation import Federation, StartFederation
from fixtures.specs import make_spec

pytestmark = pytest.mark.slow

FEATURES, CLASSES = 16, 4
SPEC = make_spec(
    "access",
    rounds=2,
    seed=5,
    features=FEATURES,
    classes=CLASSES,
    clients=2,
    timeout=300,
    train=None,
)

# Every route of the API and who may call it. A new route must be added here
# (and get its 401/403 checks for free).
ROUTES: dict[tuple[str, str], str] = {
    ("GET", "/v1/health"): "public",
    ("GET", "/v1/ready"): "public",
    ("GET", "/metrics"): "admin",
    ("POST", "/v1/members"): "admin",
    ("GET", "/v1/members"): "admin",
    ("DELETE", "/v1/members/{name}"): "admin",
    ("POST", "/v1/members/{name}/token"): "admin",
    ("POST", "/v1/jobs"): "admin",
    ("GET", "/v1/jobs"): "admin",
    ("GET", "/v1/jobs/{job_id}"): "any",  # a member: only a job it takes or took part in
    ("POST", "/v1/jobs/{job_id}/cancel"): "admin",
    ("POST", "/v1/jobs/{job_id}/resume"): "admin",
    ("GET", "/v1/jobs/{job_id}/model"): "any",
    ("GET", "/v1/tasks/next"): "member",
    ("PUT", "/v1/jobs/{job_id}/rounds/{number}/update"): "member",
    ("POST", "/v1/jobs/{job_id}/rounds/{number}/evaluation"): "member",
    ("POST", "/v1/jobs/{job_id}/decline"): "member",
    ("PUT", "/v1/members/me/identity"): "member",  # secure aggregation: the signing key
    ("DELETE", "/v1/members/{name}/identity"): "admin",
    ("POST", "/v1/jobs/{job_id}/rounds/{number}/secagg/keys"): "member",
    ("POST", "/v1/jobs/{job_id}/rounds/{number}/secagg/shares"): "member",
    ("GET", "/v1/jobs/{job_id}/rounds/{number}/secagg/unmask"): "member",
    ("POST", "/v1/jobs/{job_id}/rounds/{number}/secagg/unmask"): "member",
}
PROTECTED = [route for route, role in ROUTES.items() if role != "public"]
ADMIN_ROUTES = [route for route, role in ROUTES.items() if role == "admin"]
MEMBER_ROUTES = [route for route, role in ROUTES.items() if role == "member"]


def call(
    fed: Federation, route: tuple[str, str], token: str | None, **kwargs: Any
) -> httpx.Response:
    """Call ``route`` with a plausible, valid request (only the token may be wrong)."""
    method, template = route
    path = template.format(job_id=fed.job_id, number=1, name="beta")
    if method == "PUT":
        kwargs.setdefault("content", fed.good_body())
    elif path == "/v1/members" and method == "POST":
        kwargs.setdefault("json", {"name": "mallory"})
    elif path == "/v1/jobs" and method == "POST":
        kwargs.setdefault("json", {"spec": SPEC})
    elif path.endswith("/evaluation"):
        kwargs.setdefault("json", {"num_examples": 1, "loss": 0.1, "accuracy": 0.5})
    elif path.endswith("/decline"):
        kwargs.setdefault("json", {"reason": "not today"})
    if path == "/v1/tasks/next":
        kwargs.setdefault("params", {"timeout": 0})
    return fed.request(method, path, token, **kwargs)


def assert_error(response: httpx.Response, status: int, code: str, *details: str) -> str:
    assert response.status_code == status, (response.request.url, response.text)
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error", "detail"} and body["error"] == code, body
    for part in details:
        assert part in body["detail"], body
    return body["detail"]


def assert_untouched(fed: Federation, reported: tuple[str, ...] = ()) -> None:
    """Round 1 still open, nothing stored, no member added, revoked or declined, one job."""
    job = fed.job()
    assert job["status"] == "running" and job["round"] == 0 and job["rounds"] == []
    current = job["current"]
    assert (current["round"], current["stage"], current["reported"]) == (
        1,
        "training",
        len(reported),
    )
    assert job["declined"] == {}
    assert [j.id for j in fed.cluster.admin.jobs()] == [fed.job_id]
    names = fed.member_names()
    assert "mallory" not in names and names["beta"] is False
    for member in ("alpha", "beta"):
        task = fed.request("GET", "/v1/tasks/next", fed.tokens[member], params={"timeout": 0})
        if member in reported:
            assert task.status_code == 204
        else:
            assert task.status_code == 200 and task.json()["round"] == 1


@contextmanager
def access_federation(start_federation: StartFederation) -> Iterator[Federation]:
    """Round 1 open for alpha and beta, plus a member enrolled and revoked before it connected."""
    with start_federation(SPEC) as fed:
        fed.tokens["revoked"] = fed.cluster.admin.enroll("revoked").token
        fed.cluster.admin.revoke("revoked")
        yield fed


@pytest.fixture(scope="module")
def fed(start_federation: StartFederation) -> Iterator[Federation]:
    """Shared by the tests that leave the federation untouched."""
    with access_federation(start_federation) as fed:
        yield fed


@pytest.fixture(scope="module")
def reported_fed(start_federation: StartFederation) -> Iterator[Federation]:
    """Shared by the tests that leave it untouched after alpha's update for round 1."""
    with access_federation(start_federation) as fed:
        accepted = fed.upload(fed.good_body())
        assert accepted.status_code == 200, accepted.text
        yield fed


@pytest.fixture
def own_fed(start_federation: StartFederation) -> Iterator[Federation]:
    """A federation of its own, for a test that changes its state."""
    with access_federation(start_federation) as fed:
        yield fed


def test_every_route_has_a_role(fed: Federation) -> None:
    doc = fed.http.get(fed.cluster.url + "/openapi.json").json()
    routes = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops}
    unclassified = routes - set(ROUTES)
    assert not unclassified, f"add these routes to ROUTES in {__file__}: {sorted(unclassified)}"
    assert set(ROUTES) <= routes, sorted(set(ROUTES) - routes)


def test_no_member_route_lets_a_member_name_another_member(fed: Federation) -> None:
    """A member is who its token says: no member route takes a member id or name."""
    doc = fed.http.get(fed.cluster.url + "/openapi.json").json()
    for method, path in [*MEMBER_ROUTES, ("GET", "/v1/jobs/{job_id}/model")]:
        params = doc["paths"][path][method.lower()].get("parameters", [])
        names = {p["name"].lower() for p in params}
        assert not {n for n in names if "member" in n or n in ("name", "client", "as")}, names


BAD_AUTH = {
    "missing": lambda fed: {},
    "unknown": lambda fed: {"Authorization": "Bearer fdm_" + "x" * 43},
    "revoked": lambda fed: {"Authorization": f"Bearer {fed.tokens['revoked']}"},
    "empty": lambda fed: {"Authorization": "Bearer"},
    "basic": lambda fed: {"Authorization": "Basic YWRtaW46YWRtaW4="},
    "admin-token-as-basic": lambda fed: {"Authorization": f"Basic {fed.cluster.admin_token}"},
    "truncated-admin": lambda fed: {"Authorization": f"Bearer {fed.cluster.admin_token[:-1]}"},
    "token-in-query": lambda fed: {},  # ?token= and ?access_token= are not a way in
}


@pytest.mark.parametrize("kind", list(BAD_AUTH))
def test_bad_tokens_are_401_on_every_protected_route(fed: Federation, kind: str) -> None:
    headers = BAD_AUTH[kind](fed)
    params = {}
    if kind == "token-in-query":
        params = {"token": fed.cluster.admin_token, "access_token": fed.tokens["alpha"]}
    for route in PROTECTED:
        extra: dict[str, Any] = {"headers": headers}
        if params:
            extra["params"] = params
        response = call(fed, route, None, **extra)
        assert_error(response, 401, "unauthorized")
        assert response.headers["WWW-Authenticate"] == "Bearer", route
        for secret in (fed.cluster.admin_token, *fed.tokens.values()):
            assert secret not in response.text
    assert_untouched(fed)


@pytest.mark.parametrize("route", ADMIN_ROUTES, ids=[f"{m} {p}" for m, p in ADMIN_ROUTES])
def test_a_member_is_403_on_every_admin_route(fed: Federation, route: tuple[str, str]) -> None:
    for member in ("alpha", "gamma"):
        response = call(fed, route, fed.tokens[member])
        assert_error(response, 403, "forbidden", "operator")
    assert_untouched(fed)


@pytest.mark.parametrize("route", MEMBER_ROUTES, ids=[f"{m} {p}" for m, p in MEMBER_ROUTES])
def test_the_admin_is_403_on_member_routes(fed: Federation, route: tuple[str, str]) -> None:
    response = call(fed, route, fed.cluster.admin_token)
    assert_error(response, 403, "forbidden", "enrolled members")
    assert_untouched(fed)


def test_a_member_never_sees_or_replaces_another_members_update(own_fed: Federation) -> None:
    fed = own_fed
    alpha, beta = fed.tokens["alpha"], fed.tokens["beta"]
    path = f"/v1/jobs/{fed.job_id}/rounds/1/update"
    secret_metric = 0.1234567
    body = fed.good_body(metrics=json.dumps({"secret_metric": secret_metric}))
    accepted = fed.request(
        "PUT", path, alpha, content=body, headers={"Idempotency-Key": "alpha-r1"}
    )
    assert accepted.status_code == 200, accepted.text

    # beta's own views: its task, and the global model, which does not hold alpha's update yet
    task = fed.request("GET", "/v1/tasks/next", beta, params={"timeout": 0})
    assert task.status_code == 200
    assert "secret_metric" not in task.text and "alpha" not in task.text
    for params in ({}, {"round": 0}):
        model = fed.request("GET", f"/v1/jobs/{fed.job_id}/model", beta, params=params)
        assert model.status_code == 200 and model.content == fed.base_bytes
    early = fed.request("GET", f"/v1/jobs/{fed.job_id}/model", beta, params={"round": 1})
    assert_error(early, 404, "not_found")
    # a member may read a job it takes part in, without the other members (server/access.py)
    view = fed.request("GET", f"/v1/jobs/{fed.job_id}", beta)
    assert view.status_code == 200 and "alpha" not in view.text, view.text
    outsider = fed.request("GET", f"/v1/jobs/{fed.job_id}", fed.tokens["gamma"])
    assert_error(outsider, 403, "not_a_participant")

    # alpha's Idempotency-Key is not a way to get alpha's receipt: beta's request is beta's
    replay = fed.request(
        "PUT", path, beta, content=b"not an update", headers={"Idempotency-Key": "alpha-r1"}
    )
    assert_error(replay, 400, "invalid_update")
    assert "num_examples" not in replay.text
    # nobody can overwrite alpha's update, not even alpha
    again = fed.request("PUT", path, alpha, content=fed.good_body())
    assert_error(again, 409, "duplicate")
    # a member that is not sampled cannot upload into the round
    assert_error(fed.request("PUT", path, fed.tokens["gamma"], content=body), 403, "not_sampled")
    assert all("secret_metric" not in text for text in fed.seen_bodies)
    assert_untouched(fed, reported=("alpha",))


def _raw_request(fed: Federation, head: str, first_bytes: int = 1024) -> tuple[float, bytes]:
    """Send headers and the first bytes of a large body; the answer, and how long it took."""
    host, port = fed.cluster.url.removeprefix("http://").rsplit(":", 1)
    started = time.monotonic()
    with socket.create_connection((host, int(port)), timeout=3) as s:
        s.sendall(head.encode() + b"\x00" * first_bytes)
        try:
            answer = s.recv(4096)
        except TimeoutError:
            answer = b""
    return time.monotonic() - started, answer


def test_uploads_are_refused_before_their_body_is_read(reported_fed: Federation) -> None:
    fed = reported_fed
    """No token, not sampled, or over the cap: answered at once, the 50 MB body never sent."""
    path = f"/v1/jobs/{fed.job_id}/rounds/1/update"
    cases = {
        "401": None,
        "403": fed.tokens["gamma"],
        "413": fed.tokens["beta"],
    }
    for status, token in cases.items():
        auth = f"Authorization: Bearer {token}\r\n" if token else ""
        head = (
            f"PUT {path} HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: application/octet-stream\r\n"
            f"Content-Length: {50 * 1024 * 1024}\r\nConnection: close\r\n\r\n"
        )
        seconds, answer = _raw_request(fed, head)
        assert answer.startswith(f"HTTP/1.1 {status}".encode()), (status, answer[:200])
        assert seconds < 2.5
    assert_untouched(fed, reported=("alpha",))


def test_an_update_over_the_models_cap_is_413(reported_fed: Federation) -> None:
    fed = reported_fed
    path = f"/v1/jobs/{fed.job_id}/rounds/1/update"
    beta = fed.tokens["beta"]
    body = fed.good_body()
    padded = body + b" " * (fed.limit - len(body) + 1)
    assert_error(fed.request("PUT", path, beta, content=padded), 413, "too_large", str(fed.limit))

    def chunks() -> Iterator[bytes]:
        for _ in range(fed.limit // 4096 + 2):
            yield b"\x00" * 4096

    streamed = fed.request("PUT", path, beta, content=chunks())
    assert "Content-Length" not in streamed.request.headers
    assert_error(streamed, 413, "too_large", str(fed.limit))
    spool = fed.cluster.state / "artifacts" / "spool"  # the refused bodies left no file behind
    assert list(spool.iterdir()) == []  # (alpha's accepted update is small: held in memory)
    assert_untouched(fed, reported=("alpha",))


def test_json_bodies_are_capped_before_anything_reads_them(fed: Federation) -> None:
    head = (
        "POST /v1/members HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {200 * 1024 * 1024}\r\nConnection: close\r\n\r\n"
    )
    seconds, answer = _raw_request(fed, head)
    assert answer.startswith((b"HTTP/1.1 413", b"HTTP/1.1 401")), answer[:200]


def test_body_limit_middleware_on_the_real_app(tmp_path: Path) -> None:
    """What BodyLimit does once wired (checked in-process on create_app's app)."""
    from fastapi.testclient import TestClient

    from fedaas.server.app import create_app
    from fedaas.server.limits import BodyLimit

    token = "fda_" + "a" * 40
    app = create_app(tmp_path, f"sqlite:///{tmp_path / 'fedaas.db'}", token)
    app.add_middleware(BodyLimit, max_bytes=64 * 1024)
    auth = {"Authorization": f"Bearer {token}"}
    with TestClient(app) as client:
        ok = client.post("/v1/members", json={"name": "alpha"}, headers=auth)
        assert ok.status_code == 201
        big = {"spec": {"job": {"name": "x" * 100_000}}}
        assert_error(client.post("/v1/jobs", json=big, headers=auth), 413, "too_large")
        # without a token nothing is read at all: 401 comes first
        assert_error(client.post("/v1/jobs", json=big), 401, "unauthorized")

        def chunks() -> Iterator[bytes]:
            yield b'{"spec": {"pad": "'
            for _ in range(40):
                yield b"x" * 4096
            yield b'"}}'

        streamed = client.post(
            "/v1/jobs", content=chunks(), headers=auth | {"Content-Type": "application/json"}
        )
        assert_error(streamed, 413, "too_large", "65536")
        bad = client.post("/v1/members", content=b"{}", headers=auth | {"Content-Length": "x1"})
        assert bad.status_code == 400
        # uploads keep their own, model-derived cap: the middleware lets them through
        upload = client.put(
            "/v1/jobs/job-x/rounds/1/update", content=b"\x00" * 100_000, headers=auth
        )
        assert_error(upload, 403, "forbidden")
        assert [m["name"] for m in client.get("/v1/members", headers=auth).json()] == ["alpha"]


def test_revoking_a_sampled_member_does_not_stall_the_round(own_fed: Federation) -> None:
    fed = own_fed
    reported = fed.upload(fed.good_body())  # alpha has reported; beta, sampled too, has not
    assert reported.status_code == 200, reported.text
    fed.cluster.admin.revoke("beta")
    response = fed.request("GET", "/v1/tasks/next", fed.tokens["beta"], params={"timeout": 0})
    assert_error(response, 401, "unauthorized")
    job = fed.cluster.admin.job(fed.job_id, after_round=0, timeout=5)
    assert job.round == 1, "alpha has reported and beta is revoked: the round should close"


def cli(*args: str):  # type: ignore[no-untyped-def]
    app = typer.Typer()
    app.callback()(lambda: None)
    app.command("members")(members_cli.members)
    app.command("revoke")(members_cli.revoke)
    return CliRunner().invoke(app, list(args), env={"COLUMNS": "200"})


def test_revoking_is_immediate_and_survives_a_restart(own_fed: Federation) -> None:
    fed = own_fed
    cluster = fed.cluster
    token = cluster.admin.enroll("delta").token
    fed.tokens["delta"] = token
    assert fed.request("GET", "/v1/tasks/next", token, params={"timeout": 0}).status_code == 204
    admin = ("--server", cluster.url, "--token", cluster.admin_token)

    listed = cli("members", *admin)
    assert listed.exit_code == 0, listed.output
    row = next(line for line in listed.stdout.splitlines() if " delta " in line)
    assert "active" in row and "yes" in row, listed.stdout

    revoked = cli("revoke", "delta", *admin)
    assert revoked.exit_code == 0 and "member delta revoked" in revoked.stdout, revoked.output
    # the very next request is refused, whatever it is
    for route in (("GET", "/v1/tasks/next"), ("GET", "/v1/jobs/{job_id}/model")):
        assert_error(call(fed, route, token), 401, "unauthorized", "unknown or revoked token")
    listed = cli("members", *admin)
    row = next(line for line in listed.stdout.splitlines() if " delta " in line)
    assert "revoked" in row and "yes" not in row, listed.stdout
    unknown = cli("revoke", "nobody", *admin)
    assert unknown.exit_code != 0 and "no member named 'nobody'" in str(unknown.exception)

    cluster._halt(cluster.server)
    cluster.start_server()
    for name in ("delta", "revoked"):
        response = fed.request("GET", "/v1/tasks/next", fed.tokens[name], params={"timeout": 0})
        assert_error(response, 401, "unauthorized")
    alpha = fed.request("GET", "/v1/tasks/next", fed.tokens["alpha"], params={"timeout": 0})
    assert alpha.status_code in (200, 204)
    names = fed.member_names()
    assert names["delta"] is True and names["revoked"] is True and names["alpha"] is False
    # a revoked name stays taken: the operator enrolls the organization under a new name
    again = fed.request("POST", "/v1/members", cluster.admin_token, json={"name": "delta"})
    assert_error(again, 409, "exists")


def leave_traces(fed: Federation) -> None:
    """What the tests above do with tokens: 401s, an update, enrolling, revoking, a restart."""
    for kind in BAD_AUTH:
        for route in PROTECTED:
            call(fed, route, None, headers=BAD_AUTH[kind](fed))
    assert fed.upload(fed.good_body()).status_code == 200
    fed.tokens["delta"] = fed.cluster.admin.enroll("delta").token
    assert call(fed, ("GET", "/v1/tasks/next"), fed.tokens["delta"]).status_code == 204
    fed.cluster.admin.revoke("delta")
    assert call(fed, ("GET", "/v1/tasks/next"), fed.tokens["delta"]).status_code == 401
    fed.cluster._halt(fed.cluster.server)
    fed.cluster.start_server()


def test_no_secret_in_logs_or_database(own_fed: Federation) -> None:
    """401s, enrollments, revocations, an update and a restart leave no token behind."""
    fed = own_fed
    leave_traces(fed)
    cluster = fed.cluster
    secrets_ = [cluster.admin_token, *fed.tokens.values()]
    logs = "".join(p.read_text(errors="replace") for p in cluster.logs.glob("*.log"))
    assert "fedaas coordinator on" in logs  # the log is there, and
    for secret in secrets_:
        assert secret not in logs
        assert secret[4:20] not in logs  # not even a piece of it
    # no access log: requests are not logged line by line
    assert "/v1/tasks/next" not in logs and "HTTP/1.1" not in logs, logs[-2000:]

    database = (cluster.state / "fedaas.db").read_bytes()
    for path in cluster.state.glob("fedaas.db*"):
        database += path.read_bytes()
    for secret in secrets_:
        assert secret.encode() not in database
    for name in ("alpha", "beta", "delta"):
        assert token_hash(fed.tokens[name]).encode() in database
    assert stat.S_IMODE(cluster.state.stat().st_mode) == 0o700
    assert all(secret not in text for text in fed.seen_bodies for secret in secrets_)


def test_a_generated_admin_token_is_private(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("FEDAAS_ADMIN_TOKEN", raising=False)
    token, source = load_admin_token(tmp_path)
    path = tmp_path / "admin.token"
    assert source == str(path) and path.read_text().strip() == token
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(token) >= 40 and token.startswith("fda_")
    assert load_admin_token(tmp_path)[0] == token
    monkeypatch.setenv("FEDAAS_ADMIN_TOKEN", "short")
    with pytest.raises(ValueError, match="at least 16"):
        load_admin_token(tmp_path)
    assert os.environ["FEDAAS_ADMIN_TOKEN"] == "short"


def test_a_poll_during_shutdown_is_told_to_back_off(tmp_path: Path) -> None:
    """A closing coordinator answers polls 503 (members back off), not 204 (they poll again)."""
    from fastapi.testclient import TestClient

    from fedaas.server.app import create_app

    token = "fda_" + "b" * 40
    app = create_app(tmp_path, f"sqlite:///{tmp_path / 'fedaas.db'}", token)
    with TestClient(app) as client:
        member = client.post(
            "/v1/members", json={"name": "alpha"}, headers={"Authorization": f"Bearer {token}"}
        ).json()["token"]
        headers = {"Authorization": f"Bearer {member}"}
        assert client.get("/v1/tasks/next?timeout=0", headers=headers).status_code == 204
        app.state.coordinator.closing()
        started = time.monotonic()
        answer = client.get("/v1/tasks/next?timeout=30", headers=headers)
        assert time.monotonic() - started < 5
        assert_error(answer, 503, "shutting_down")
