"""The operator's endpoints beside the API: ``/metrics``, ``/v1/ready``, and what feeds them.

- ``GET /v1/health``: liveness (in :mod:`fedaas.server.app`): the process answers.
- ``GET /v1/ready``: readiness: the database answers a query, the artifact
  folder is writable, the job supervisor runs and the coordinator is not
  shutting down; 200 with every check ``ok``, else 503 naming the failing
  one. Unauthenticated, like liveness, for load balancers and orchestrators.
- ``GET /docs``: the API's Swagger page, its assets served from the package
  (no CDN: it works offline).
- ``GET /metrics``: Prometheus text format (:mod:`fedaas.server.metrics`),
  behind the admin token (``Authorization: Bearer``; Prometheus reads it
  with ``authorization: {credentials_file: STATE/admin.token}``).

:func:`install` mounts them and starts the :class:`~fedaas.server.observer.Observer`
with its listeners (log lines, metrics, MLflow tracking); ``create_app``
calls it with a few lines.
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any

from fastapi import FastAPI, Header, Request, Response
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from sqlalchemy import text

from fedaas import __version__
from fedaas.protocol import Readiness
from fedaas.server.errors import CoordinatorError, Forbidden
from fedaas.server.metrics import CONTENT_TYPE, Metrics
from fedaas.server.observer import BaseListener, LogLines, Observer, job_status_counts
from fedaas.server.tracking import MlflowTracking


@contextmanager
def counted_upload(request: Request) -> Iterator[None]:
    """Around an upload's checks and acceptance: count it accepted, or rejected with its
    error code. (Not a route dependency: FastAPI's machinery for one that yields cost
    about 5% of the coordinator's CPU in a plain round.)"""
    try:
        yield
    except CoordinatorError as exc:
        request.app.state.metrics.upload(False, exc.code)
        raise
    else:
        request.app.state.metrics.upload(True)


def readiness_checks(app: FastAPI) -> dict[str, str]:
    """Each dependency -> ``ok`` or why it is not ready."""
    coordinator = app.state.coordinator
    checks: dict[str, str] = {}
    try:
        with coordinator.store.engine.connect() as connection:
            connection.execute(text("SELECT 1"))
        checks["database"] = "ok"
    except Exception as exc:  # any driver error means: not ready
        checks["database"] = f"unreachable: {type(exc).__name__}"
    try:
        with tempfile.TemporaryFile(dir=coordinator.artifacts.spool):
            pass
        checks["artifacts"] = "ok"
    except OSError as exc:
        checks["artifacts"] = f"not writable: {exc.strerror or type(exc).__name__}"
    for outage in coordinator.deps.outages():  # e.g. the remote artifact store, a full disk
        checks[outage.dependency] = f"unavailable: {outage.error}"
    checks["supervisor"] = "ok" if coordinator.supervising else "not running"
    checks["accepting"] = "shutting down" if coordinator.shutting_down else "ok"
    return checks


SWAGGER = "/ui/static/swagger-ui-5.35.0"


def offline_docs(app: FastAPI) -> None:
    """``/docs`` from assets inside the package (swagger-ui-dist 5.35.0, Apache-2.0).

    FastAPI's default page loads Swagger UI from a public CDN, so it is
    blank on a machine without internet; ``/redoc`` (CDN only) is dropped.
    """
    dropped = {"/docs", "/docs/oauth2-redirect", "/redoc"}
    app.router.routes[:] = [r for r in app.router.routes if getattr(r, "path", "") not in dropped]

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url="/openapi.json",
            title="fedaas coordinator API",
            swagger_js_url=f"{SWAGGER}-bundle.js",
            swagger_css_url=f"{SWAGGER}.css",
            swagger_favicon_url="/ui/static/favicon.svg",
            swagger_ui_parameters={"validatorUrl": None},
        )


def install(app: FastAPI, listeners: list[BaseListener] | None = None) -> Observer:
    """Mount ``/metrics`` and ``/v1/ready``; return the observer ``lifespan`` starts and stops."""
    coordinator = app.state.coordinator
    metrics = Metrics()
    metrics.watch_database(coordinator.store.engine)
    metrics.watch_artifacts(coordinator.artifacts)

    def live() -> tuple[int, int, dict[str, int]]:
        members = coordinator.members()
        active = [m for m in members if not m.revoked]
        return (
            sum(m.online for m in active),
            len(active),
            job_status_counts(coordinator.jobs()),
        )

    metrics.live(live)
    observer = Observer(
        coordinator, [LogLines(), metrics, MlflowTracking(coordinator), *(listeners or [])]
    )
    app.state.metrics = metrics
    app.state.observer = observer
    offline_docs(app)

    @app.get("/v1/ready", response_model=Readiness, responses={503: {"model": Readiness}})
    async def ready() -> Any:
        """Readiness: 200 when the database, artifact folder and job supervisor all work."""
        checks = await asyncio.to_thread(readiness_checks, app)
        ok = all(value == "ok" for value in checks.values())
        body = Readiness(status="ready" if ok else "not_ready", version=__version__, checks=checks)
        return Response(
            body.model_dump_json(), status_code=200 if ok else 503, media_type="application/json"
        )

    @app.get(
        "/metrics",
        response_class=Response,
        responses={
            200: {
                "content": {CONTENT_TYPE: {"schema": {"type": "string"}}},
                "description": "Prometheus text format",
            }
        },
    )
    async def prometheus(
        request: Request, authorization: Annotated[str | None, Header()] = None
    ) -> Response:
        """Prometheus metrics (text format 0.0.4); needs the admin token."""
        who = request.app.state.auth.identify(authorization)
        if who.role != "admin":
            raise Forbidden("metrics are for the coordinator's operator")
        data = await asyncio.to_thread(metrics.render)
        return Response(data, media_type=CONTENT_TYPE)

    return observer
