"""Secure aggregation's HTTP API against a real coordinator whose round 1 is a secure round.

Members ``alpha`` and ``beta`` are online and sampled, ``gamma`` enrolled but not: every
malformed or out-of-turn request is a JSON 4xx that changes nothing.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Any

import pytest

from fedaas.algorithms.secagg import IdentityKey, RoundContext
from fedaas.algorithms.secagg.keys import sign_advertisement
from fedaas.protocol_secagg import SecureSession
from fixtures.federation import Federation, StartFederation
from fixtures.specs import make_spec

pytestmark = pytest.mark.slow


# the coordinator's API ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def fed(start_federation: StartFederation) -> Iterator[Federation]:
    spec = make_spec(clients=2, min_clients=2, timeout=120, secure_aggregation={"enabled": True})
    with start_federation(spec) as federation:
        yield federation


def _round(fed: Federation, path: str = "") -> str:
    return f"/v1/jobs/{fed.job_id}/rounds/1{path}"


def _error(response: Any, status: int, code: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error", "detail"}
    if code is not None:
        assert body["error"] == code, body
    return body


def test_a_secure_task_carries_the_session_and_its_encoding(fed: Federation) -> None:
    task = fed.request("GET", "/v1/tasks/next", fed.tokens["alpha"], params={"timeout": 5})
    assert task.status_code == 200
    session = SecureSession.model_validate(task.json()["secure"])
    assert session.member == "alpha" and session.sampled == 2 and session.bits == 32


def test_identity_registration_is_once_and_checked(fed: Federation) -> None:
    key = IdentityKey.generate().public_bytes()
    body = {"signing_key": base64.b64encode(key).decode()}
    path = "/v1/members/me/identity"
    assert fed.request("PUT", path, fed.tokens["gamma"], json=body).status_code == 200
    assert fed.request("PUT", path, fed.tokens["gamma"], json=body).status_code == 200
    other = {"signing_key": base64.b64encode(bytes(32)).decode()}
    _error(fed.request("PUT", path, fed.tokens["gamma"], json=other), 409, "identity_registered")
    _error(fed.request("PUT", path, fed.tokens["gamma"], json={"signing_key": "x"}), 422)
    _error(fed.request("PUT", path, None, json=body), 401)
    clear = fed.request("DELETE", "/v1/members/gamma/identity", fed.cluster.admin_token)
    assert clear.status_code == 200 and clear.json()["cleared"]
    assert fed.request("PUT", path, fed.tokens["gamma"], json=other).status_code == 200
    _error(fed.request("DELETE", "/v1/members/gamma/identity", fed.tokens["gamma"]), 403)


def test_out_of_turn_and_malformed_secure_requests_are_json_4xx(fed: Federation) -> None:
    key = IdentityKey.generate()
    registration = {"signing_key": base64.b64encode(key.public_bytes()).decode()}
    fed.request("PUT", "/v1/members/me/identity", fed.tokens["beta"], json=registration)
    wrong = RoundContext(fed.job_id, 1, 0)  # not this run's attempt: the signature fails
    ad = sign_advertisement(key, wrong, "beta", bytes(range(32)), bytes(range(1, 33)))
    keys = {
        "c_public": base64.b64encode(ad.c_public).decode(),
        "s_public": base64.b64encode(ad.s_public).decode(),
        "signature": base64.b64encode(ad.signature).decode(),
    }
    beta, gamma = fed.tokens["beta"], fed.tokens["gamma"]
    post = lambda path, token, body, **kw: fed.request(  # noqa: E731
        "POST", _round(fed, path), token, json=body, params={"wait": 0}, **kw
    )
    _error(post("/secagg/keys", beta, keys), 400, "invalid_keys")
    _error(post("/secagg/keys", gamma, keys), 403, "not_sampled")
    _error(post("/secagg/keys", beta, {**keys, "signature": "!!"}), 422)
    _error(post("/secagg/keys", beta, {**keys, "extra": 1}), 422)
    _error(post("/secagg/shares", beta, {"shares": []}), 409, "round_closed")
    _error(post("/secagg/unmask", beta, {"seed_shares": [], "key_shares": []}), 409)
    ask = fed.request("GET", _round(fed, "/secagg/unmask"), beta, params={"wait": 0})
    assert ask.status_code == 204
    _error(fed.request("GET", _round(fed, "/secagg/unmask"), beta, params={"wait": 99}), 422)
    plain = fed.upload(fed.good_body(), member="beta")
    _error(plain, 400, "invalid_update")
    other_job = "/v1/jobs/nojob/rounds/1/secagg/keys"
    _error(fed.request("POST", other_job, beta, json=keys), 404)
