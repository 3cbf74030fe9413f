"""The HTTP edge of errors: every failure is JSON ``{"error": code, "detail": text}``.

Domain errors (:mod:`fedaas.server.errors`) get their status code here and
nowhere else; FastAPI's own validation and routing errors are reshaped into
the same body.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from fedaas.protocol import ErrorBody
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


def error_response(status: int, code: str, detail: str) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    body = ErrorBody(error=code, detail=detail).model_dump()
    return JSONResponse(body, status_code=status, headers=headers)


def install_handlers(app: FastAPI) -> None:
    @app.exception_handler(CoordinatorError)
    async def _domain(_: Request, exc: CoordinatorError) -> JSONResponse:
        return error_response(status_of(exc), exc.code, exc.detail)

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
