"""The OpenAPI document describes every answer, so a client can be generated from it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from fedaas.server.app import create_app


@pytest.fixture(scope="module")
def openapi(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    state = tmp_path_factory.mktemp("state")
    app = create_app(state, f"sqlite:///{state / 'db.sqlite'}", "admin-token")
    return app.openapi()


def _operations(doc: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (path, method, op)
        for path, item in doc["paths"].items()
        for method, op in item.items()
        if method in ("get", "post", "put", "delete", "patch")
    ]


def test_every_route_documents_a_success_body_with_a_schema(openapi: dict[str, Any]) -> None:
    operations = _operations(openapi)
    assert len(operations) >= 13, [f"{m} {p}" for p, m, _ in operations]
    for path, method, op in operations:
        success = {code: r for code, r in op["responses"].items() if code in ("200", "201")}
        assert success, f"{method.upper()} {path} documents no 200/201 answer"
        for code, response in success.items():
            content = response.get("content")
            assert content, f"{method.upper()} {path} {code} has no content"
            for media, body in content.items():
                schema = body.get("schema")
                assert schema, f"{method.upper()} {path} {code} {media} has no schema"
                assert schema != {}, f"{method.upper()} {path} {code} {media}: empty schema"


def test_json_answers_name_their_protocol_model(openapi: dict[str, Any]) -> None:
    expected = {
        ("/v1/health", "get"): "Health",
        ("/v1/members", "post"): "Enrolled",
        ("/v1/jobs", "post"): "JobStatus",
        ("/v1/jobs/{job_id}", "get"): "JobStatus",
        ("/v1/jobs/{job_id}/cancel", "post"): "JobStatus",
        ("/v1/tasks/next", "get"): "Task",
        ("/v1/jobs/{job_id}/rounds/{number}/update", "put"): "Receipt",
        ("/v1/jobs/{job_id}/rounds/{number}/evaluation", "post"): "EvaluationAccepted",
        ("/v1/jobs/{job_id}/decline", "post"): "Declined",
        ("/v1/members/{name}", "delete"): "Revoked",
    }
    for (path, method), model in expected.items():
        responses = openapi["paths"][path][method]["responses"]
        body = (responses.get("200") or responses["201"])["content"]["application/json"]
        assert body["schema"].get("$ref", "").endswith(f"/{model}"), (path, method, body)
    listed = openapi["paths"]["/v1/members"]["get"]["responses"]["200"]["content"]
    assert listed["application/json"]["schema"]["items"]["$ref"].endswith("/MemberInfo")


def test_errors_are_documented_as_error_bodies(openapi: dict[str, Any]) -> None:
    for path, method, op in _operations(openapi):
        for code in ("401", "404", "409"):
            body = op["responses"][code]["content"]["application/json"]["schema"]
            assert body["$ref"].endswith("/ErrorBody"), (path, method, code)


def test_the_task_schema_carries_the_privacy_union(openapi: dict[str, Any]) -> None:
    schemas = openapi["components"]["schemas"]
    privacy = schemas["Task"]["properties"]["privacy"]
    assert privacy["discriminator"]["propertyName"] == "kind"
    assert set(privacy["discriminator"]["mapping"]) == {"none", "client", "record"}
    assert "JobSpec" in schemas


def test_binary_answers_are_documented(openapi: dict[str, Any], tmp_path: Path) -> None:
    model = openapi["paths"]["/v1/jobs/{job_id}/model"]["get"]["responses"]
    assert model["200"]["content"]["application/octet-stream"]["schema"]["format"] == "binary"
    task = openapi["paths"]["/v1/tasks/next"]["get"]["responses"]
    assert "application/vnd.fedaas.task-bundle" in task["200"]["content"]
    assert "204" in task
