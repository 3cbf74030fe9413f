"""Bad requests against a real coordinator: each gets a clear JSON error, nothing changes.

One coordinator process serves the whole module. A job is opened with two
sampled members (``alpha`` and ``beta``) and one enrolled member that is not
sampled (``gamma``); the tests act as members by hand over HTTP. After every
rejected request the round must still be open and untouched: no update
stored, nothing left in the spool, the job still at round 0. The tests that
close round 1 (the one good update, ``beta`` declines, and the round closes
with exactly that update applied) each get a federation of their own, so any
order of the tests passes.
"""

from __future__ import annotations

import json
import struct
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import numpy as np
import pytest
import safetensors.numpy

from fedaas import tensors
from fedaas.protocol import decode_bundle
from fixtures.federation import Federation, StartFederation
from fixtures.specs import make_spec

pytestmark = pytest.mark.slow

FEATURES, CLASSES = 64, 10
SPEC = make_spec(
    "api-errors",
    rounds=5,
    seed=3,
    features=FEATURES,
    classes=CLASSES,
    clients=2,
    timeout=300,
    train=None,
)


def good_body(fed: Federation, **meta: str) -> bytes:
    return tensors.encode(fed.delta, {"num_examples": "10", "metrics": "{}"} | meta)


def assert_error(response: httpx.Response, status: int, code: str, *details: str) -> str:
    """The answer is ``status`` with JSON ``{"error": code, "detail": ...}``."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error", "detail"}, body
    assert body["error"] == code, body
    assert isinstance(body["detail"], str) and body["detail"], body
    for part in details:
        assert part in body["detail"], body
    return body["detail"]


def assert_round_untouched(fed: Federation) -> None:
    """Round 1 is still open for ``alpha`` and nothing was stored."""
    job = fed.job()
    assert job["status"] == "running", job
    assert job["round"] == 0 and job["rounds"] == []
    current = job["current"]
    assert (current["round"], current["stage"], current["reported"]) == (1, "training", 0)
    assert fed.stored_updates() == 0
    assert list((fed.cluster.state / "artifacts" / "spool").iterdir()) == []
    task = fed.request("GET", "/v1/tasks/next", fed.tokens["alpha"], params={"timeout": 0})
    assert task.status_code == 200 and task.json()["round"] == 1
    model = fed.request("GET", f"/v1/jobs/{fed.job_id}/model", fed.tokens["alpha"])
    assert model.headers["ETag"] == fed.base_etag


@pytest.fixture(scope="module")
def fed(start_federation: StartFederation) -> Iterator[Federation]:
    """Round 1 open for alpha and beta (gamma never polls); its tests leave it untouched."""
    with start_federation(SPEC) as fed:
        assert fed.manifest == {"0.weight": (10, 64), "0.bias": (10,)}
        yield fed


@pytest.fixture
def own_fed(start_federation: StartFederation) -> Iterator[Federation]:
    """The same starting point, for one test that closes round 1."""
    with start_federation(SPEC) as fed:
        yield fed


# tokens and roles --------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "detail"),
    [
        ({}, "missing bearer token"),
        ({"Authorization": "Bearer fdm_not-a-real-token"}, "unknown or revoked token"),
        ({"Authorization": "Bearer"}, "expected 'Authorization: Bearer <token>'"),
        ({"Authorization": "Basic YWRtaW46YWRtaW4="}, "expected 'Authorization: Bearer <token>'"),
    ],
    ids=["missing", "unknown", "empty", "basic"],
)
def test_bad_token_is_401(fed: Federation, headers: dict[str, str], detail: str) -> None:
    for method, path in [
        ("GET", "/v1/members"),
        ("GET", "/v1/tasks/next?timeout=0"),
        ("GET", f"/v1/jobs/{fed.job_id}/model"),
        ("PUT", f"/v1/jobs/{fed.job_id}/rounds/1/update"),
    ]:
        content = good_body(fed) if method == "PUT" else None
        response = fed.request(method, path, None, headers=headers, content=content)
        assert_error(response, 401, "unauthorized", detail)
        assert response.headers["WWW-Authenticate"] == "Bearer"
    assert_round_untouched(fed)


def test_revoked_token_is_401(fed: Federation) -> None:
    token = fed.cluster.admin.enroll("delta").token
    assert fed.request("GET", "/v1/tasks/next", token, params={"timeout": 0}).status_code == 204
    fed.cluster.admin.revoke("delta")
    response = fed.request("GET", "/v1/tasks/next", token, params={"timeout": 0})
    assert_error(response, 401, "unauthorized", "unknown or revoked token")
    response = fed.request("PUT", f"/v1/jobs/{fed.job_id}/rounds/1/update", token, content=b"x")
    assert_error(response, 401, "unauthorized")
    assert_round_untouched(fed)


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", "/v1/members", None),
        ("POST", "/v1/members", {"name": "mallory"}),
        ("POST", "/v1/jobs", {"spec": SPEC}),
        ("GET", "/v1/jobs", None),
        ("POST", "/v1/jobs/{job}/cancel", None),
        ("DELETE", "/v1/members/beta", None),
    ],
)
def test_member_token_on_admin_endpoint_is_403(
    fed: Federation, method: str, path: str, body: Any
) -> None:
    response = fed.request(method, path.format(job=fed.job_id), fed.tokens["alpha"], json=body)
    assert_error(response, 403, "forbidden", "this endpoint is for the coordinator's operator")
    assert [m.name for m in fed.cluster.admin.members()][:3] == ["alpha", "beta", "gamma"]
    assert len(fed.cluster.admin.jobs()) == 1
    assert_round_untouched(fed)


def test_admin_token_on_member_endpoint_is_403(fed: Federation) -> None:
    admin = fed.cluster.admin_token
    calls = [
        ("GET", "/v1/tasks/next?timeout=0", {}),
        ("PUT", f"/v1/jobs/{fed.job_id}/rounds/1/update", {"content": good_body(fed)}),
        ("POST", f"/v1/jobs/{fed.job_id}/decline", {"json": {"reason": "no"}}),
        ("POST", f"/v1/jobs/{fed.job_id}/rounds/1/evaluation", {"json": {}}),
    ]
    for method, path, kwargs in calls:
        response = fed.request(method, path, admin, **kwargs)
        assert_error(response, 403, "forbidden", "this endpoint is for enrolled members")
    assert fed.job()["declined"] == {}
    assert_round_untouched(fed)


# job submission -----------------------------------------------------------------


def _spec_with(section: str, key: str, value: Any) -> dict[str, Any]:
    spec = json.loads(json.dumps(SPEC))
    spec.setdefault(section, {})[key] = value
    return spec


@pytest.mark.parametrize(
    ("body", "code", "detail"),
    [
        (
            {"spec": _spec_with("train", "lr_rate", 0.1)},
            "invalid_spec",
            "train.lr_rate: unknown key",
        ),
        ({"spec": SPEC | {"privcy": {}}}, "invalid_spec", "privcy: unknown key"),
        (
            {"spec": _spec_with("train", "lr", -1)},
            "invalid_spec",
            "train.lr: Input should be greater than 0",
        ),
        ({"spec": _spec_with("train", "optimizer", "rmsprop")}, "invalid_spec", "train.optimizer:"),
        (
            {"spec": _spec_with("federation", "min_clients", 3)},
            "invalid_spec",
            "min_clients (3) exceeds",
        ),
        ({"spec": _spec_with("model", "name", "resnet")}, "invalid_spec", "unknown model 'resnet'"),
        (
            {"spec": _spec_with("model", "name", "no_such_pkg.models:net")},
            "invalid_spec",
            "model 'no_such_pkg.models:net' is code this node's operator has not allowed",
        ),
        ({"spec": {"job": SPEC["job"]}}, "invalid_spec", "model: required key is missing"),
        ({"spek": SPEC}, "invalid", "spek"),
        ({}, "invalid", "spec"),
    ],
    ids=[
        "unknown-key",
        "unknown-section",
        "negative-lr",
        "optimizer",
        "min-clients",
        "model-name",
        "missing-plugin",
        "missing-section",
        "typo-in-request",
        "no-spec",
    ],
)
def test_bad_job_submission_is_422(fed: Federation, body: Any, code: str, detail: str) -> None:
    response = fed.request("POST", "/v1/jobs", fed.cluster.admin_token, json=body)
    assert_error(response, 422, code, detail)
    assert [j.id for j in fed.cluster.admin.jobs()] == [fed.job_id]
    assert_round_untouched(fed)


def test_non_json_submission_is_422(fed: Federation) -> None:
    response = fed.request(
        "POST",
        "/v1/jobs",
        fed.cluster.admin_token,
        content=b"[job]\nname = 'x'",
        headers={"Content-Type": "application/json"},
    )
    assert_error(response, 422, "invalid")
    assert len(fed.cluster.admin.jobs()) == 1


# uploads that go to the wrong place -----------------------------------------------


def test_upload_to_a_job_that_does_not_exist_is_404(fed: Federation) -> None:
    response = fed.upload(good_body(fed), job_id="job-000000000000")
    assert_error(response, 404, "not_found", "no job 'job-000000000000'")
    assert_round_untouched(fed)


def test_model_of_a_job_that_does_not_exist_is_404(fed: Federation) -> None:
    response = fed.request("GET", "/v1/jobs/job-nope/model", fed.tokens["alpha"])
    assert_error(response, 404, "not_found", "no job 'job-nope'")
    response = fed.request("GET", "/v1/jobs/job-nope", fed.cluster.admin_token)
    assert_error(response, 404, "not_found", "no job 'job-nope'")


@pytest.mark.parametrize("number", [0, 2, 99])
def test_upload_for_a_round_that_is_not_open_is_409(fed: Federation, number: int) -> None:
    response = fed.upload(good_body(fed), number=number)
    assert_error(response, 409, "round_closed", f"round {number} of job {fed.job_id} is not open")
    assert_round_untouched(fed)


def test_upload_from_a_member_not_sampled_is_403(fed: Federation) -> None:
    response = fed.upload(good_body(fed), member="gamma")
    assert_error(response, 403, "not_sampled", "not part of round 1")
    assert_round_untouched(fed)


def test_bad_round_number_in_path_is_422(fed: Federation) -> None:
    response = fed.request(
        "PUT", f"/v1/jobs/{fed.job_id}/rounds/one/update", fed.tokens["alpha"], content=b"x"
    )
    assert_error(response, 422, "invalid", "number")
    assert_round_untouched(fed)


# oversize bodies ------------------------------------------------------------------


def test_oversize_body_by_content_length_is_413(fed: Federation) -> None:
    body = good_body(fed)
    body += b" " * (fed.limit - len(body) + 1)
    response = fed.upload(body)
    assert_error(
        response, 413, "too_large", f"{fed.limit + 1} bytes exceeds the limit of {fed.limit}"
    )
    assert_round_untouched(fed)


def test_oversize_chunked_body_is_413(fed: Federation) -> None:
    sent = []

    def stream() -> Iterator[bytes]:
        piece = b"\x00" * 8192
        for _ in range(fed.limit // len(piece) + 2):
            sent.append(len(piece))
            yield piece

    response = fed.upload(stream())
    assert response.request.headers.get("Transfer-Encoding") == "chunked"
    assert "Content-Length" not in response.request.headers
    assert_error(response, 413, "too_large", f"exceeds the limit of {fed.limit} bytes")
    assert_round_untouched(fed)


def test_chunked_body_within_the_limit_is_checked_like_any_other(fed: Federation) -> None:
    body = good_body(fed)[:-16]  # truncated, and sent without a Content-Length
    response = fed.upload(iter([body[:1000], body[1000:]]))
    assert_error(response, 400, "invalid_update", "truncated")
    assert_round_untouched(fed)


# bad bodies -------------------------------------------------------------------------


def _bad_bodies() -> list[tuple[str, Any, str]]:
    """(id, body builder taking the Federation, expected part of the detail)."""

    def meta_body(meta: dict[str, str] | None):
        return lambda fed: tensors.encode(fed.delta, meta)

    def changed(fn):
        def build(fed: Federation) -> bytes:
            delta = {k: v.copy() for k, v in fed.delta.items()}
            fn(delta)
            return tensors.encode(delta, {"num_examples": "10"})

        return build

    def set_value(value: float):
        def fn(delta: dict[str, np.ndarray]) -> None:
            delta["0.weight"][3, 7] = value

        return changed(fn)

    return [
        ("empty", lambda fed: b"", "shorter than its 8-byte header length"),
        ("truncated", lambda fed: good_body(fed)[:-7], "truncated"),
        ("truncated-header", lambda fed: good_body(fed)[:40], "header length out of range"),
        ("padded", lambda fed: good_body(fed) + b"\x00" * 8, "padded"),
        ("json", lambda fed: json.dumps({"0.weight": [[0.0]]}).encode(), "not a safetensors"),
        ("random", lambda fed: np.random.default_rng(1).bytes(3000), "not a safetensors"),
        ("pickle", lambda fed: b"\x80\x04\x95\x10" + b"\x00" * 100, "not a safetensors"),
        ("deep-nesting", lambda fed: _raw_header(b"[" * 30000 + b"]" * 30000), "not JSON"),
        (
            "missing-tensor",
            changed(lambda d: d.pop("0.bias")),
            "tensor names do not match the model: missing '0.bias'",
        ),
        (
            "extra-tensor",
            changed(lambda d: d.update(extra=np.zeros(1, np.float32))),
            "tensor names do not match the model: unexpected 'extra'",
        ),
        (
            "renamed-tensor",
            changed(lambda d: d.update({"1.bias": d.pop("0.bias")})),
            "missing '0.bias'; unexpected '1.bias'",
        ),
        (
            "wrong-shape",
            changed(lambda d: d.update({"0.weight": d["0.weight"].T})),
            "tensor '0.weight': shape [64, 10], expected [10, 64]",
        ),
        (
            "flat-shape",
            changed(lambda d: d.update({"0.bias": d["0.bias"].reshape(1, 10)})),
            "tensor '0.bias': shape [1, 10], expected [10]",
        ),
        (
            "f64",
            lambda fed: safetensors.numpy.save(
                {k: v.astype(np.float64) for k, v in fed.delta.items()}, {"num_examples": "10"}
            ),
            "dtype 'F64', expected F32",
        ),
        (
            "f16",
            lambda fed: safetensors.numpy.save(
                {k: v.astype(np.float16) for k, v in fed.delta.items()}, {"num_examples": "10"}
            ),
            "dtype 'F16', expected F32",
        ),
        ("nan", set_value(np.nan), "tensor '0.weight' holds NaN or Inf"),
        ("inf", set_value(np.inf), "tensor '0.weight' holds NaN or Inf"),
        ("minus-inf", set_value(-np.inf), "tensor '0.weight' holds NaN or Inf"),
        ("no-metadata", meta_body(None), "num_examples is required without differential privacy"),
        (
            "no-num-examples",
            meta_body({"metrics": "{}"}),
            "num_examples is required without differential privacy",
        ),
        ("zero-examples", meta_body({"num_examples": "0"}), "num_examples must be a positive"),
        ("negative-examples", meta_body({"num_examples": "-5"}), "num_examples must be a positive"),
        ("text-examples", meta_body({"num_examples": "ten"}), "num_examples must be a positive"),
        ("float-examples", meta_body({"num_examples": "1e3"}), "num_examples must be a positive"),
        (
            "huge-examples",
            meta_body({"num_examples": str(10**13)}),
            "num_examples must be a positive",
        ),
        (
            "metrics-not-json",
            meta_body({"num_examples": "10", "metrics": "loss=1"}),
            "metrics must be a JSON object",
        ),
        (
            "metrics-a-list",
            meta_body({"num_examples": "10", "metrics": "[1, 2]"}),
            "metrics must be a JSON object",
        ),
        (
            "metrics-not-numbers",
            meta_body({"num_examples": "10", "metrics": '{"loss": "low"}'}),
            "metrics must map short names to finite numbers",
        ),
        (
            "metrics-nan",
            meta_body({"num_examples": "10", "metrics": '{"loss": NaN}'}),
            "metrics must map short names to finite numbers",
        ),
        (
            "unknown-metadata",
            meta_body({"num_examples": "10", "client": "x"}),
            "metadata key 'client' is not one fedaas reads",
        ),
        # a metric's name is published to every reader of the job as members.<name>: a lone
        # surrogate there was accepted, and then broke the job's status (a 500) for good
        *(
            (
                f"metric-named-{label}",
                meta_body({"num_examples": "10", "metrics": json.dumps({name: 1.0})}),
                "metrics must map short names to finite numbers",
            )
            for label, name in [
                ("lone-surrogate", "\ud800"),
                ("newline", "loss\n"),
                ("markup", "<b>x</b>"),
                ("too-long", "m" * 65),
            ]
        ),
        (
            "surrogate-dtype",  # was a plain-text 500: the message quoted it, unencodable
            lambda fed: _edit_header(
                good_body(fed), lambda h: h.replace('"dtype":"F32"', '"dtype":"\\udc00"', 1)
            ),
            "header holds a lone surrogate",
        ),
    ]


def _edit_header(body: bytes, edit: Callable[[str], str]) -> bytes:
    """``body`` with its safetensors header text rewritten by ``edit`` (re-padded to 8)."""
    (length,) = struct.unpack("<Q", body[:8])
    header = edit(body[8 : 8 + length].decode().rstrip()).encode()
    header += b" " * (-len(header) % 8)
    return struct.pack("<Q", len(header)) + header + body[8 + length :]


def _raw_header(header: bytes) -> bytes:
    return len(header).to_bytes(8, "little") + header


BAD_BODIES = _bad_bodies()


@pytest.mark.parametrize(
    ("builder", "detail"), [b[1:] for b in BAD_BODIES], ids=[b[0] for b in BAD_BODIES]
)
def test_bad_update_is_400_and_changes_nothing(fed: Federation, builder: Any, detail: str) -> None:
    response = fed.upload(builder(fed))
    assert_error(response, 400, "invalid_update", detail)
    assert_round_untouched(fed)


# declining ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "detail"),
    [({"reason": ""}, "reason"), ({}, "reason"), ({"reason": "x", "extra": 1}, "extra")],
)
def test_bad_decline_is_422(fed: Federation, body: dict, detail: str) -> None:
    response = fed.request("POST", f"/v1/jobs/{fed.job_id}/decline", fed.tokens["beta"], json=body)
    assert_error(response, 422, "invalid", detail)
    assert fed.job()["declined"] == {}
    assert_round_untouched(fed)


def test_a_decline_reason_is_one_line_of_text(own_fed: Federation) -> None:
    """A reason is logged and shown: newlines, terminal escapes, bidi overrides and NUL become
    spaces, so a member cannot forge a coordinator log line or repaint a terminal."""
    fed = own_fed
    forged = f"ok\n13:37:00 INFO job {fed.job_id} completed\x1b[2J\u202e\x00!"
    response = fed.request(
        "POST", f"/v1/jobs/{fed.job_id}/decline", fed.tokens["beta"], json={"reason": forged}
    )
    assert response.status_code == 200, response.text
    clean = f"ok 13:37:00 INFO job {fed.job_id} completed [2J !"
    assert fed.job()["declined"] == {"beta": clean}
    log = (fed.cluster.logs / "server.log").read_text()
    assert f"member beta declined job {fed.job_id}: {clean}" in log
    assert "\x1b" not in log and not any(line.startswith("13:37:00") for line in log.splitlines())


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/jobs/a%00b"),
        ("GET", "/v1/jobs/a%00b/model"),
        ("POST", "/v1/jobs/a%00/cancel"),
        ("DELETE", "/v1/members/a%00"),
        ("GET", "/v1/jobs?after_round=%00"),
    ],
)
def test_a_nul_in_the_url_is_400_on_any_database(fed: Federation, method: str, path: str) -> None:
    """PostgreSQL cannot compare text holding a NUL: such a lookup was a 500 there (a 404 on
    SQLite). It is refused before any route reads the database."""
    response = fed.request(method, path, fed.cluster.admin_token)
    assert_error(response, 400, "bad_request", "the URL holds a NUL character")


def test_decline_of_a_job_that_does_not_exist_is_404(fed: Federation) -> None:
    response = fed.request(
        "POST", "/v1/jobs/job-nope/decline", fed.tokens["beta"], json={"reason": "no"}
    )
    assert_error(response, 404, "not_found", "no job 'job-nope'")
    assert fed.job()["declined"] == {}


# and finally the good update ------------------------------------------------------------


DECLINE_REASON = "data has 63 features, the job expects 64"


def close_round_one(
    fed: Federation,
) -> tuple[httpx.Response, httpx.Response, httpx.Response, dict[str, Any]]:
    """alpha uploads (key ``alpha-r1``) and again, beta declines: round 1 closes with alpha's update.

    Returns the upload's answer, the second upload's, the decline's and the job after round 1.
    """
    response = fed.upload(
        good_body(fed, metrics='{"train_loss": 0.25}'), headers={"Idempotency-Key": "alpha-r1"}
    )
    again = fed.upload(good_body(fed))
    declined = fed.request(
        "POST",
        f"/v1/jobs/{fed.job_id}/decline",
        fed.tokens["beta"],
        json={"reason": DECLINE_REASON},
    )
    return response, again, declined, fed.job(after_round=0, timeout=30)


def test_good_update_after_all_the_bad_ones_is_the_only_one_counted(own_fed: Federation) -> None:
    """Closes round 1 with alpha's update alone (beta declines)."""
    fed = own_fed
    response, again, declined, job = close_round_one(fed)
    assert response.status_code == 200, response.text
    assert response.json() == {
        "accepted": True,
        "job_id": fed.job_id,
        "round": 1,
        "num_examples": 10,
    }

    assert_error(again, 409, "duplicate", "already reported for round 1")

    assert declined.status_code == 200 and declined.json() == {"declined": True}

    assert job["round"] == 1, job
    assert job["declined"] == {"beta": DECLINE_REASON}
    (first,) = job["rounds"]
    assert first["round"] == 1
    assert first["clients"] == 1
    assert first["participants"] == ["alpha"]
    assert first["members.train_loss"] == pytest.approx(0.25)
    assert fed.stored_updates() == 1
    assert list((fed.cluster.state / "artifacts" / "spool").iterdir()) == []

    # the new global model is exactly the old one plus alpha's delta
    model = fed.request("GET", f"/v1/jobs/{fed.job_id}/model", fed.tokens["alpha"])
    assert model.status_code == 200
    assert model.headers["X-Fedaas-Round"] == "1"
    assert model.headers["ETag"] != fed.base_etag
    new, meta = tensors.decode(model.content, fed.manifest)
    assert meta["round"] == "1"
    for name, value in fed.base.items():
        np.testing.assert_allclose(new[name], value + fed.delta[name], rtol=1e-6, atol=1e-7)

    # round 1 is closed now: uploads for it are refused, and nothing more is stored
    for member in ("alpha", "beta"):
        late = fed.upload(good_body(fed), member=member)
        assert_error(late, 409, "round_closed", "round 1 of job")
    assert fed.stored_updates() == 1
    assert fed.job()["rounds"] == job["rounds"]

    # the previous model is gone (only the current one is kept)
    old = fed.request(
        "GET", f"/v1/jobs/{fed.job_id}/model", fed.tokens["alpha"], params={"round": 0}
    )
    assert_error(old, 404, "not_found", "round 0")


def test_a_retried_upload_with_its_idempotency_key_is_answered_not_recounted(
    own_fed: Federation,
) -> None:
    """After the round closed: alpha's retry (same key) gets its receipt, nothing recounted."""
    fed = own_fed
    close_round_one(fed)
    before = fed.job()
    retry = fed.upload(good_body(fed), headers={"Idempotency-Key": "alpha-r1"})
    assert retry.status_code == 200, retry.text
    assert retry.json() == {"accepted": True, "job_id": fed.job_id, "round": 1, "num_examples": 10}
    fresh = fed.upload(good_body(fed), headers={"Idempotency-Key": "alpha-other"})
    assert fresh.status_code == 409
    bad_key = fed.upload(good_body(fed), headers={"Idempotency-Key": "spaces are bad"})
    assert bad_key.status_code == 422
    after = fed.job()
    assert after["rounds"] == before["rounds"] and after["rounds"][0]["clients"] == 1


def test_an_upload_can_wait_for_and_carry_the_next_task(own_fed: Federation) -> None:
    """After round 1 closed: ``?next_timeout`` turns alpha's round-2 upload into its next poll."""
    import threading

    fed = own_fed
    close_round_one(fed)

    gamma = fed.request("GET", "/v1/tasks/next", fed.tokens["gamma"], params={"timeout": 0})
    assert gamma.status_code in (200, 204)
    for member in ("alpha", "gamma"):
        task = fed.request("GET", "/v1/tasks/next", fed.tokens[member], params={"timeout": 20})
        assert task.status_code == 200 and task.json()["round"] == 2, task.text

    held: dict[str, httpx.Response] = {}
    key = {"Idempotency-Key": "alpha-r2"}

    def alpha_uploads() -> None:
        held["answer"] = fed.upload(
            good_body(fed), number=2, params={"next_timeout": 30}, headers=key
        )

    waiter = threading.Thread(target=alpha_uploads)
    waiter.start()
    while fed.job()["current"]["reported"] < 1 and waiter.is_alive():
        waiter.join(0.05)
    plain = fed.upload(good_body(fed), member="gamma", number=2)
    assert plain.status_code == 200 and plain.json()["round"] == 2  # no next_timeout: the receipt
    waiter.join(30)
    answer = held["answer"]
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("application/vnd.fedaas.task-bundle")
    receipt = json.loads(answer.headers["X-Fedaas-Receipt"])
    assert receipt == {"accepted": True, "job_id": fed.job_id, "round": 2, "num_examples": 10}
    text, bundled_model = decode_bundle(answer.content)
    task = json.loads(text)
    assert (task["round"], task["stage"], task["model_round"]) == (3, "train", 2)
    model = fed.request("GET", f"/v1/jobs/{fed.job_id}/model", fed.tokens["alpha"])
    assert answer.headers["ETag"] == model.headers["ETag"] == task["model_etag"]
    assert bundled_model == model.content

    retry = fed.upload(good_body(fed), number=2, params={"next_timeout": 30}, headers=key)
    assert retry.status_code == 200 and retry.json() == receipt  # a replay is answered at once


def test_waiting_for_a_job_can_be_bounded(fed: Federation) -> None:
    """The job is still running (round 3 waits for uploads): a bounded wait gives up, saying so."""
    started = time.monotonic()
    with pytest.raises(TimeoutError, match=f"job {fed.job_id} is still running"):
        fed.cluster.admin.wait(fed.job_id, timeout=1.0)
    assert time.monotonic() - started < 10
