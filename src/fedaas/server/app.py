"""The coordinator's HTTP API (FastAPI), versioned under ``/v1``.

Handlers are thin: they authenticate, validate the request shape and hand
over to :class:`~fedaas.server.coordinator.Coordinator`.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Header, Query, Request, Response
from fastapi.responses import FileResponse, JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from fedaas import __version__
from fedaas.server.answers import etag
from fedaas.server.artifacts import Artifacts
from fedaas.server.auth import Authenticator, Principal
from fedaas.server.coordinator import Coordinator
from fedaas.server.db import Store
from fedaas.server.errors import ApiError, install_handlers
from fedaas.server.limits import BodyLimit
from fedaas.server.uploads import MEMORY_SPOOL_BYTES, receive_body
from fedaas.spec import SpecError

MAX_POLL_S = 60.0
TASK_BUNDLE = "application/vnd.fedaas.task+safetensors"


class EnrollRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: Annotated[str, Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9][\w.\-]*$")]


class SubmitRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    spec: dict[str, Any]
    source: Annotated[str, Field(max_length=1_000_000, pattern=r"^[^\x00]*$")] | None = None


class EvaluationReport(BaseModel):
    model_config = ConfigDict(extra="forbid")
    num_examples: Annotated[int, Field(ge=1, le=10**12)]
    loss: Annotated[float, Field(ge=0, allow_inf_nan=False)]
    accuracy: Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)]


class DeclineReport(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: Annotated[str, Field(min_length=1, max_length=4000)]


async def _principal(
    request: Request, authorization: Annotated[str | None, Header()] = None
) -> Principal:
    return request.app.state.auth.identify(authorization)


async def _admin(who: Annotated[Principal, Depends(_principal)]) -> Principal:
    if who.role != "admin":
        raise ApiError(403, "forbidden", "this endpoint is for the coordinator's operator")
    return who


async def _member(
    request: Request, authorization: Annotated[str | None, Header()] = None
) -> Principal:
    # one flat dependency: members hit this on every poll, download and upload
    who: Principal = request.app.state.auth.identify(authorization)
    if who.role != "client":
        raise ApiError(403, "forbidden", "this endpoint is for enrolled members")
    return who


Admin = Annotated[Principal, Depends(_admin)]
Member = Annotated[Principal, Depends(_member)]
Anyone = Annotated[Principal, Depends(_principal)]


class _SmallFileCache:
    """The last small model file read, kept in memory: every member downloads it."""

    def __init__(self) -> None:
        self._path: Path | None = None
        self._data = b""

    def read(self, path: Path) -> bytes:
        if path != self._path:
            self._data, self._path = path.read_bytes(), path
        return self._data


def create_app(
    state_dir: Path,
    db_url: str,
    admin_token: str,
    artifacts_url: str | None = None,
    storage_options: dict[str, Any] | None = None,
) -> FastAPI:
    """Build the API over the coordinator state in ``state_dir`` (and ``artifacts_url``)."""
    store = Store(db_url)
    artifacts = Artifacts(state_dir / "artifacts", artifacts_url, storage_options)
    coordinator = Coordinator(store, artifacts)
    auth = Authenticator(store, admin_token)
    models = _SmallFileCache()

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await coordinator.start()
        yield
        await coordinator.stop()

    app = FastAPI(
        title="fedaas coordinator",
        version=__version__,
        lifespan=lifespan,
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    app.state.coordinator = coordinator
    app.state.auth = auth
    install_handlers(app)
    app.add_middleware(BodyLimit)

    @app.get("/v1/health")
    async def health() -> dict[str, str]:
        return {"status": "ok", "version": __version__}

    @app.post("/v1/members", status_code=201)
    async def enroll(body: EnrollRequest, _: Admin) -> dict[str, Any]:
        who, token = auth.enroll(body.name)
        return {"id": who.member_id, "name": who.name, "token": token}

    @app.get("/v1/members")
    async def list_members(_: Admin) -> list[dict[str, Any]]:
        online = coordinator._online()
        return [
            {
                "id": m.id,
                "name": m.name,
                "revoked": m.revoked_at is not None,
                "online": m.id in online,
            }
            for m in store.members()
        ]

    @app.delete("/v1/members/{name}")
    async def revoke(name: str, _: Admin) -> dict[str, Any]:
        coordinator.forget_member(auth.revoke(name))
        return {"name": name, "revoked": True}

    @app.post("/v1/jobs", status_code=201)
    async def submit(body: SubmitRequest, _: Admin) -> dict[str, Any]:
        try:
            job = await asyncio.to_thread(coordinator.submit, body.spec, body.source)
        except SpecError as exc:
            raise ApiError(422, "invalid_spec", "; ".join(exc.problems)) from None
        return coordinator.describe(job.id)

    @app.get("/v1/jobs")
    async def list_jobs(_: Admin) -> list[dict[str, Any]]:
        return [
            {
                "id": j.id,
                "name": j.name,
                "status": j.status,
                "round": j.round,
                "created_at": j.created_at,
            }
            for j in store.jobs()
        ]

    @app.get("/v1/jobs/{job_id}")
    async def job_detail(
        job_id: str,
        _: Admin,
        after_round: Annotated[int | None, Query(ge=0)] = None,
        timeout: Annotated[float, Query(ge=0, le=MAX_POLL_S)] = 25.0,
    ) -> dict[str, Any]:
        if after_round is None:
            return coordinator.describe(job_id)
        return await coordinator.wait_progress(job_id, after_round, timeout)

    @app.post("/v1/jobs/{job_id}/cancel")
    async def cancel(job_id: str, _: Admin) -> dict[str, Any]:
        await coordinator.cancel(job_id)
        return coordinator.describe(job_id)

    @app.get("/v1/jobs/{job_id}/model")
    async def model(
        job_id: str,
        _: Anyone,
        round: Annotated[int | None, Query(ge=0)] = None,
        if_none_match: Annotated[str | None, Header()] = None,
    ) -> Response:
        path, number = coordinator.model_file(job_id, round)
        tag = etag(job_id, number)
        headers = {"ETag": tag, "X-Fedaas-Round": str(number)}
        if if_none_match == tag:
            return Response(status_code=304, headers=headers)
        size = path.stat().st_size
        coordinator.count_download(job_id, number, size)
        if size <= MEMORY_SPOOL_BYTES:
            return Response(
                models.read(path), media_type="application/octet-stream", headers=headers
            )
        return FileResponse(path, media_type="application/octet-stream", headers=headers)

    def bundled(task: dict[str, Any], headers: dict[str, str]) -> Response | None:
        """The task with its model in one answer, when the model is small; else ``None``."""
        path, number = coordinator.model_file(task["job_id"], task["model_round"])
        size = path.stat().st_size
        if size > MEMORY_SPOOL_BYTES:
            return None
        coordinator.count_download(task["job_id"], number, size)
        headers = {"X-Fedaas-Task": json.dumps(task), "ETag": task["model_etag"], **headers}
        return Response(models.read(path), media_type=TASK_BUNDLE, headers=headers)

    @app.get("/v1/tasks/next")
    async def next_task(
        request: Request,
        who: Member,
        timeout: Annotated[float, Query(ge=0, le=MAX_POLL_S)] = 25.0,
        bundle: bool = False,
    ) -> Any:
        """Long-poll for work: 200 with a task, or 204 when none came up in ``timeout``.

        With ``bundle=true`` and a small model, the answer is the task's model
        (safetensors, ``Content-Type: application/vnd.fedaas.task+safetensors``)
        with the task as JSON in the ``X-Fedaas-Task`` header: one round trip
        instead of two.
        """
        assert who.member_id is not None
        task = await coordinator.next_task(who.member_id, timeout, request.is_disconnected)
        if task is None and coordinator.shutting_down:  # members back off instead of re-polling
            raise ApiError(503, "shutting_down", "the coordinator is shutting down")
        if task is None:
            return Response(status_code=204)
        if bundle and (answer := bundled(task, {})) is not None:
            return answer
        return JSONResponse(task)

    @app.put("/v1/jobs/{job_id}/rounds/{number}/update")
    async def upload(
        job_id: str,
        number: int,
        request: Request,
        who: Member,
        idempotency_key: Annotated[
            str | None, Header(max_length=128, pattern=r"^[A-Za-z0-9_\-]+$")
        ] = None,
        next_timeout: Annotated[float | None, Query(ge=0, le=MAX_POLL_S)] = None,
    ) -> Response:
        """Upload an update; a retry with the same ``Idempotency-Key`` is answered, not recounted.

        The answer is the receipt (JSON). With ``next_timeout=S`` and a small
        model, the coordinator then holds the answer up to ``S`` seconds for
        the member's next task and, if one comes, answers with the task bundle
        of ``GET /v1/tasks/next?bundle=true`` (receipt in ``X-Fedaas-Receipt``):
        the upload doubles as the next poll, one round trip per round.
        """
        assert who.member_id is not None
        key = idempotency_key
        limit, receipt = coordinator.check_upload(job_id, number, who.member_id, key)
        if receipt is None:
            body = await receive_body(request, limit, artifacts.new_spool)
            if isinstance(body, bytes):  # small: validating and folding beats a thread hop
                receipt = coordinator.accept_update(
                    job_id, number, who.member_id, body, len(body), key
                )
            else:
                try:
                    size = body.stat().st_size
                    receipt = await asyncio.to_thread(
                        coordinator.accept_update, job_id, number, who.member_id, body, size, key
                    )
                finally:
                    body.unlink(missing_ok=True)
            coordinator.after_answer(job_id)
        if next_timeout and 0 < limit <= MEMORY_SPOOL_BYTES:  # not on a replay: answer at once
            task = await coordinator.next_task(who.member_id, next_timeout, request.is_disconnected)
            if task is not None:
                answer = bundled(task, {"X-Fedaas-Receipt": json.dumps(receipt)})
                if answer is not None:
                    return answer
        return JSONResponse(receipt)

    @app.post("/v1/jobs/{job_id}/rounds/{number}/evaluation")
    async def report_evaluation(
        job_id: str, number: int, body: EvaluationReport, who: Member
    ) -> dict[str, Any]:
        assert who.member_id is not None
        coordinator.accept_evaluation(
            job_id, number, who.member_id, body.num_examples, body.loss, body.accuracy
        )
        return {"accepted": True, "round": number}

    @app.post("/v1/jobs/{job_id}/decline")
    async def decline(job_id: str, body: DeclineReport, who: Member) -> dict[str, Any]:
        assert who.member_id is not None
        coordinator.decline(job_id, who.member_id, who.name, body.reason)
        return {"declined": True}

    return app
