"""The HTTP edge of errors: every failure is JSON ``{"error": code, "detail": text}``.

Domain errors (:mod:`fedaas.server.errors`) get their status code here and
nowhere else; FastAPI's own validation and routing errors are reshaped into
the same body.
"""

from __future__ import annotations

import logging
import time

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException

from fedaas.protocol import ErrorBody
from fedaas.server.db import StoreFenced
from fedaas.server.errors import (
    Conflict,
    CoordinatorError,
    Forbidden,
    InvalidRequest,
    InvalidSpec,
    NotFound,
    TooLarge,
    Unauthenticated,
    Unavailable,
)
from fedaas.server.outages import Dependencies, DependencyUnavailable, is_transient
from fedaas.storage import StorageError, one_line

log = logging.getLogger("fedaas.coordinator")

STATUS: dict[type[CoordinatorError], int] = {
    InvalidRequest: 400,
    InvalidSpec: 422,
    Unauthenticated: 401,
    Forbidden: 403,
    NotFound: 404,
    Conflict: 409,
    TooLarge: 413,
    Unavailable: 503,
}
"""The status code of each domain error."""

_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    408: "timeout",
    413: "too_large",
    422: "invalid",
}

ERROR_RESPONSES: dict[int | str, dict[str, object]] = {
    status: {"model": ErrorBody, "description": code.replace("_", " ")}
    for status, code in _CODES.items()
    if status != 405
}
"""OpenAPI ``responses=`` for the error answers every route may give."""


def status_of(exc: CoordinatorError) -> int:
    for cls in type(exc).__mro__:
        if cls in STATUS:
            return STATUS[cls]  # type: ignore[index]
    return 500


RETRY_AFTER_S = 5
"""What a 503 tells clients to wait before they try again."""


def error_response(
    status: int, code: str, detail: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    if status == 401:
        headers = {"WWW-Authenticate": "Bearer", **(headers or {})}
    # a detail quoting what a caller sent may hold text UTF-8 cannot encode (a lone surrogate)
    detail = detail.encode("utf-8", "backslashreplace").decode("utf-8")
    body = ErrorBody(error=code, detail=detail).model_dump()
    return JSONResponse(body, status_code=status, headers=headers)


def _outage_response(request: Request, exc: Exception) -> JSONResponse:
    """503 while a dependency is down: one log line per incident, not one per request."""
    coordinator = getattr(request.app.state, "coordinator", None)
    deps: Dependencies | None = None if coordinator is None else coordinator.deps
    if deps is None:
        detail = one_line(exc)
    else:
        outage = deps.blame(exc, deps.database).failed(exc)
        detail = (
            f"the coordinator's {outage.dependency} is unavailable "
            f"(since {time.strftime('%H:%M:%S', time.localtime(outage.since))}: {outage.error})"
        )
    return error_response(
        503, "unavailable", f"{detail}; retry later", {"Retry-After": str(RETRY_AFTER_S)}
    )


def install_handlers(app: FastAPI) -> None:
    @app.exception_handler(CoordinatorError)
    async def _domain(_: Request, exc: CoordinatorError) -> JSONResponse:
        return error_response(status_of(exc), exc.code, exc.detail)

    @app.exception_handler(OperationalError)
    @app.exception_handler(PoolTimeout)
    @app.exception_handler(StorageError)
    @app.exception_handler(DependencyUnavailable)
    async def _outage(request: Request, exc: Exception) -> JSONResponse:
        return _outage_response(request, exc)

    @app.exception_handler(StoreFenced)
    async def _fenced(_: Request, exc: StoreFenced) -> JSONResponse:
        return error_response(
            503,
            "unavailable",
            f"{exc}; ask the coordinator that holds it now",
            {"Retry-After": str(RETRY_AFTER_S)},
        )

    @app.exception_handler(OSError)
    async def _os(request: Request, exc: OSError) -> JSONResponse:
        if is_transient(exc):  # a full disk: wait it out like any outage
            return _outage_response(request, exc)
        log.error("I/O error: %s", one_line(exc))
        return error_response(500, "internal", "the coordinator hit an I/O error")

    @app.exception_handler(DBAPIError)
    async def _database(request: Request, exc: DBAPIError) -> JSONResponse:
        if exc.connection_invalidated:
            return _outage_response(request, exc)
        log.error("database error: %s", one_line(exc))
        return error_response(500, "internal", "the coordinator hit a database error")

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        parts = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "body"
            parts.append(f"{where}: {err.get('msg', 'invalid')}")
        return error_response(422, "invalid", "; ".join(parts) or "invalid request")

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _CODES.get(exc.status_code, "error")
        return error_response(exc.status_code, code, str(exc.detail))
