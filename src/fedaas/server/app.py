"""The coordinator's HTTP API (FastAPI), versioned under ``/v1``.

Handlers are thin: they authenticate, let FastAPI validate the request
against the :mod:`fedaas.protocol` models and hand over to the
:class:`~fedaas.server.coordinator.Coordinator` (or its inbox, for members).
Every answer is declared as a ``response_model`` or, for tensor payloads,
as a documented binary response, so ``/openapi.json`` describes them all.
Domain errors become JSON errors in :mod:`fedaas.server.http_errors`. What
reads the database runs in a thread, so a database that hangs holds up only
the requests that need it, never the event loop.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Header, Query, Request, Response
from fastapi.responses import FileResponse

from fedaas import __version__
from fedaas.protocol import (
    RECEIPT_HEADER,
    ROUND_HEADER,
    TASK_BUNDLE,
    Declined,
    DeclineReport,
    Enrolled,
    EnrollRequest,
    EvaluationAccepted,
    EvaluationReport,
    Health,
    JobStatus,
    JobSummary,
    MemberInfo,
    Receipt,
    Revoked,
    SubmitRequest,
    Task,
    encode_bundle,
)
from fedaas.server import dashboard, operations, secagg_routes
from fedaas.server.access import downloadable_model, member_view, readable_job
from fedaas.server.artifacts import Artifacts
from fedaas.server.auth import Authenticator
from fedaas.server.callers import Admin, Anyone, Member
from fedaas.server.coordinator import Coordinator
from fedaas.server.db import Store
from fedaas.server.errors import NotFound, Unavailable
from fedaas.server.http_errors import ERROR_RESPONSES, install_handlers
from fedaas.server.inbox import model_etag
from fedaas.server.limits import BodyLimit
from fedaas.server.request_text import refuse_nul
from fedaas.server.responses import BINARY, MODEL_RESPONSE, TASK_RESPONSES, UPLOAD_RESPONSES
from fedaas.server.uploads import MEMORY_SPOOL_BYTES, receive_body
from fedaas.spec import MAX_ROUNDS

MAX_POLL_S = 60.0
MEMBER_HOT_PATHS = frozenset(
    {
        "/v1/jobs/{job_id}/rounds/{number}/update",
        "/v1/tasks/next",
        "/v1/jobs/{job_id}/rounds/{number}/secagg/unmask",
    }
)


class _SmallFileCache:
    """The last small model file read, kept in memory: every member downloads it (a
    committed round's model is never rewritten, so its path names its content)."""

    def __init__(self) -> None:
        self._path: Path | None = None
        self._data = b""

    def read(self, path: Path, limit: int = MEMORY_SPOOL_BYTES) -> bytes | None:
        """The file's bytes, or ``None`` if it is larger than ``limit`` (it is not read);
        :class:`NotFound` if it is gone (someone deleted it under the coordinator)."""
        if path != self._path:
            try:
                if path.stat().st_size > limit:
                    return None
                self._data, self._path = path.read_bytes(), path
            except FileNotFoundError:
                raise NotFound(f"the model file {path.name} is missing") from None
        return self._data


def create_app(
    state_dir: Path,
    db_url: str,
    admin_token: str,
    artifacts_url: str | None = None,
    storage_options: dict[str, Any] | None = None,
    allow_code: tuple[str, ...] = (),
    on_fenced: Callable[[], None] | None = None,
) -> FastAPI:
    """Build the API over the coordinator state in ``state_dir`` (and ``artifacts_url``).

    ``allow_code``: packages whose model factories a job spec may name (built-ins always).
    The app takes the database's lease (:meth:`Store.take_lease`): once another coordinator
    takes it, this one's writes are refused and ``on_fenced`` runs (the server stops itself).
    """
    store = Store(db_url)
    store.take_lease(f"pid {os.getpid()} on {socket.gethostname()}", on_fenced)
    artifacts = Artifacts(state_dir / "artifacts", artifacts_url, storage_options)
    coordinator = Coordinator(store, artifacts, allowed_code=allow_code)
    inbox = coordinator.inbox
    auth = Authenticator(store, admin_token)
    models = _SmallFileCache()

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await coordinator.start()
        observer.start()  # the operator's view: log lines, metrics, tracking, dashboard
        yield
        await observer.stop()
        await coordinator.stop()

    app = FastAPI(
        title="fedaas coordinator",
        version=__version__,
        lifespan=lifespan,
        responses=ERROR_RESPONSES,
        telemetry={"tracing": False, "metrics": False, "logs": False},
        dependencies=[Depends(refuse_nul)],
    )
    app.state.coordinator = coordinator
    app.state.auth = auth
    app.state.bind_certificates = False  # serve() sets it under mutual TLS
    install_handlers(app)
    app.add_middleware(BodyLimit)
    observer = operations.install(app)  # /metrics, /v1/ready
    dashboard.mount(app, observer)  # /ui

    @app.get("/v1/health", response_model=Health)
    async def health() -> Health:
        """Liveness: the process answers (readiness, its dependencies too: ``/v1/ready``)."""
        return Health(version=__version__)

    @app.post("/v1/members", status_code=201, response_model=Enrolled)
    async def enroll(body: EnrollRequest, _: Admin) -> Enrolled:
        who, token = await asyncio.to_thread(auth.enroll, body.name)
        assert who.member_id is not None
        return Enrolled(id=who.member_id, name=who.name, token=token)

    @app.get("/v1/members", response_model=list[MemberInfo])
    async def list_members(_: Admin) -> list[MemberInfo]:
        return await asyncio.to_thread(coordinator.members)

    @app.post("/v1/members/{name}/token", response_model=Enrolled)
    async def renew(name: str, _: Admin) -> Enrolled:
        """A new token for the member (revoked or not); its old token is refused from now on."""
        who, token = await asyncio.to_thread(auth.renew, name)
        assert who.member_id is not None
        coordinator.presence.forget(who.member_id)
        return Enrolled(id=who.member_id, name=who.name, token=token)

    @app.delete("/v1/members/{name}", response_model=Revoked)
    async def revoke(name: str, _: Admin) -> Revoked:
        coordinator.member_revoked(await asyncio.to_thread(auth.revoke, name))
        return Revoked(name=name)

    @app.post("/v1/jobs", status_code=201, response_model=JobStatus)
    async def submit(body: SubmitRequest, _: Admin) -> JobStatus:
        return await asyncio.to_thread(coordinator.submit, body.spec, body.source)

    @app.get("/v1/jobs", response_model=list[JobSummary])
    async def list_jobs(_: Admin) -> list[JobSummary]:
        return await asyncio.to_thread(coordinator.jobs)

    @app.get("/v1/jobs/{job_id}", response_model=JobStatus)
    async def job_detail(
        job_id: str,
        who: Anyone,
        after_round: Annotated[int | None, Query(ge=0)] = None,
        timeout: Annotated[float, Query(ge=0, le=MAX_POLL_S)] = 25.0,
        rounds_after: Annotated[int, Query(ge=0, le=MAX_ROUNDS)] = 0,
    ) -> JobStatus:
        """The job; with ``after_round``, a long-poll that answers once the job passes it.

        ``rounds_after``: only the rounds after it (a follower asks for the new ones only).
        A member may read only a job it takes or took part in, and sees it
        without other members' details (``server/access.py``).
        """
        if after_round is None or who.role == "client":
            job = await asyncio.to_thread(readable_job, coordinator, job_id, who, rounds_after)
        if after_round is not None:
            job = await coordinator.wait_progress(job_id, after_round, timeout, rounds_after)
        return member_view(job, who)

    @app.post("/v1/jobs/{job_id}/cancel", response_model=JobStatus)
    async def cancel(job_id: str, _: Admin) -> JobStatus:
        return await coordinator.cancel(job_id)

    @app.post("/v1/jobs/{job_id}/resume", response_model=JobStatus)
    async def resume(job_id: str, _: Admin) -> JobStatus:
        """Continue a failed job from its last committed round (every round counts once)."""
        return await asyncio.to_thread(coordinator.resume, job_id)

    @app.get("/v1/jobs/{job_id}/model", response_class=Response, responses=MODEL_RESPONSE)
    async def model(
        job_id: str,
        who: Anyone,
        round: Annotated[int | None, Query(ge=0)] = None,
        if_none_match: Annotated[str | None, Header()] = None,
    ) -> Response:
        path, number = await asyncio.to_thread(downloadable_model, coordinator, job_id, round, who)
        tag = model_etag(job_id, number)
        headers = {"ETag": tag, ROUND_HEADER: str(number)}
        if if_none_match == tag:
            return Response(status_code=304, headers=headers)
        small = models.read(path)
        coordinator.count_download(
            job_id, number, path.stat().st_size if small is None else len(small)
        )
        if small is not None:
            return Response(small, media_type="application/octet-stream", headers=headers)
        return FileResponse(path, media_type="application/octet-stream", headers=headers)

    def bundled(task: Task, headers: dict[str, str]) -> Response | None:
        """The task with its model in one answer, when the model is small; else ``None``."""
        # the cache looks for the file once per model (NotFound if it is gone), not per member
        path, number = coordinator.model_file(task.job_id, task.model_round, on_disk=False)
        model = models.read(path)
        if model is None:
            return None
        coordinator.count_download(task.job_id, number, len(model))
        body = encode_bundle(task.model_dump_json().encode(), model)
        return Response(body, media_type=TASK_BUNDLE, headers={"ETag": task.model_etag, **headers})

    async def next_bundle(
        member: int, name: str, wait: float, request: Request, headers: dict[str, str]
    ) -> Response | None:
        """The member's next task bundle, held up to ``wait`` s (``None``: none came, or its
        model is too large to bundle): answers an upload or an unmask with the next task."""
        task = await inbox.next_task(member, wait, request.is_disconnected, name)
        return None if task is None else bundled(task, headers)

    secagg_routes.mount(app, coordinator, next_bundle)  # SecAgg's stages, member identities

    @app.get("/v1/tasks/next", response_model=Task, responses=TASK_RESPONSES)
    async def next_task(
        request: Request,
        who: Member,
        timeout: Annotated[float, Query(ge=0, le=MAX_POLL_S)] = 25.0,
        bundle: bool = False,
    ) -> Any:
        """Long-poll for work: 200 with a task, or 204 when none came up in ``timeout``.

        With ``bundle=true`` and a small model, the answer is a task bundle
        (the task, then its model): one round trip instead of two.
        """
        assert who.member_id is not None
        task = await inbox.next_task(who.member_id, timeout, request.is_disconnected, who.name)
        if task is None and coordinator.shutting_down:  # members back off instead of re-polling
            raise Unavailable("the coordinator is shutting down", "shutting_down")
        if task is None:
            return Response(status_code=204)
        if bundle and (answer := bundled(task, {})) is not None:
            return answer
        return Response(task.model_dump_json(), media_type="application/json")

    @app.put(
        "/v1/jobs/{job_id}/rounds/{number}/update",
        response_model=Receipt,
        responses=UPLOAD_RESPONSES,
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/octet-stream": BINARY},
                "description": "the update (safetensors; metadata: `UpdateMetadata`)",
            }
        },
    )
    async def upload(
        job_id: str,
        number: int,
        request: Request,
        who: Member,
        idempotency_key: Annotated[
            str | None, Header(max_length=128, pattern=r"^[A-Za-z0-9_\-]+$")
        ] = None,
        next_timeout: Annotated[float | None, Query(ge=0, le=MAX_POLL_S)] = None,
    ) -> Any:
        """Upload an update; a retry with the same ``Idempotency-Key`` is answered, not recounted.

        With ``next_timeout=S`` and a small model, the answer is held up to
        ``S`` seconds for the member's next task and, if one comes, is its
        task bundle (receipt in a header): one round trip per round.
        """
        key, member = idempotency_key, who.member_id
        assert member is not None
        with operations.counted_upload(request):  # Prometheus: accepted / rejected
            limit, receipt = inbox.check_upload(job_id, number, member, key)
            if receipt is None:
                with inbox.receiving(job_id, number, member):  # one upload in flight per member
                    body = await receive_body(request, limit, artifacts.new_spool)
                    if isinstance(body, bytes):  # small: validating and keeping beats a hop
                        receipt = inbox.accept_update(job_id, number, member, body, len(body), key)
                    else:
                        try:
                            size = body.stat().st_size
                            receipt = await asyncio.to_thread(
                                inbox.accept_update, job_id, number, member, body, size, key
                            )
                        finally:
                            body.unlink(missing_ok=True)  # kept ones were moved into the spill
                inbox.answered(job_id)
        held = secagg_routes.unmask_after(inbox, job_id, number, member, next_timeout, receipt)
        if (asked := await held) is not None:  # SecAgg: the unmask stage's question
            return asked
        if next_timeout and 0 < limit <= MEMORY_SPOOL_BYTES:  # not on a replay: answer at once
            headers = {RECEIPT_HEADER: receipt.model_dump_json()}
            if answer := await next_bundle(member, who.name, next_timeout, request, headers):
                return answer
        return Response(receipt.model_dump_json(), media_type="application/json")

    @app.post("/v1/jobs/{job_id}/rounds/{number}/evaluation", response_model=EvaluationAccepted)
    async def report_evaluation(
        job_id: str, number: int, body: EvaluationReport, who: Member
    ) -> EvaluationAccepted:
        assert who.member_id is not None
        inbox.accept_evaluation(
            job_id,
            number,
            who.member_id,
            body.num_examples,
            body.loss,
            body.accuracy,
            body.states,
            body.metrics,
        )
        return EvaluationAccepted(round=number)

    @app.post("/v1/jobs/{job_id}/decline", response_model=Declined)
    async def decline(job_id: str, body: DeclineReport, who: Member) -> Declined:
        assert who.member_id is not None
        inbox.decline(job_id, who.member_id, who.name, body.reason)
        return Declined()

    # Starlette tries the routes in order, a regular expression each: the requests every
    # member makes every round go first (a stable sort: the rest keep their order)
    app.router.routes.sort(key=lambda route: getattr(route, "path", "") not in MEMBER_HOT_PATHS)
    return app
