"""A cap on request bodies, before anything reads them.

FastAPI reads (and parses) a JSON body *before* it resolves dependencies,
authentication included, so without a cap anyone who can reach the port
can make the coordinator buffer an arbitrarily large body in memory. This
ASGI middleware answers 413 as soon as a body is known (``Content-Length``)
or seen (streamed) to exceed ``max_bytes``. Update uploads are exempt: their
handler streams them under a cap derived from the job's model
(:func:`fedaas.server.uploads.receive_body`).

Wire it in ``create_app``: ``app.add_middleware(BodyLimit)``.
"""

from __future__ import annotations

import json
import re
from typing import Any

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

MAX_JSON_BODY = 8 * 1024 * 1024  # a job spec with its TOML source (1e6 characters) fits
STREAMED_PATHS = re.compile(r"^/v1/jobs/[^/]+/rounds/[^/]+/update$")


class _TooLarge(HTTPException):
    """Raised from ``receive``; FastAPI passes HTTPExceptions on to the API's JSON handler."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body exceeds the limit of {limit} bytes")


class BodyLimit:
    """413 ``{"error": "too_large"}`` for bodies over ``max_bytes`` (uploads excepted)."""

    def __init__(
        self,
        app: ASGIApp,
        max_bytes: int = MAX_JSON_BODY,
        exempt: re.Pattern[str] = STREAMED_PATHS,
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.exempt = exempt

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.exempt.match(scope.get("path", "")):
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                if not value.isdigit() or int(value) > self.max_bytes:
                    await self._reject(send, value.decode("latin-1")[:32])
                    return
        seen = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise _TooLarge(self.max_bytes)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _TooLarge:
            if not started:
                await self._reject(send, None)

    async def _reject(self, send: Send, declared: str | None) -> None:
        if declared is not None and declared.isdigit():
            detail = f"request body of {declared} bytes exceeds the limit of {self.max_bytes}"
        elif declared is not None:
            detail = "invalid Content-Length"
        else:
            detail = f"request body exceeds the limit of {self.max_bytes} bytes"
        status = 413 if declared is None or declared.isdigit() else 400
        code = "too_large" if status == 413 else "bad_request"
        body = json.dumps({"error": code, "detail": detail}).encode()
        headers: list[Any] = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
        ]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
