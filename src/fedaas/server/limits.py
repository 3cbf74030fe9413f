"""Authentication and caps on request bodies, before anything reads them.

FastAPI reads (and parses) a JSON body *before* it resolves dependencies,
authentication included, so without this layer anyone who can reach the
port could make the coordinator buffer large bodies in memory (60
unauthenticated 8 MiB requests took it from 382 to 867 MB, and the
allocator kept it). This ASGI middleware, for every request that carries a
body:

1. authenticates the bearer token first and answers 401 without reading a
   byte of the body (the connection is closed, so nothing is buffered);
2. caps the body by role: :data:`MAX_JSON_BODY` for the operator (a job spec
   with its TOML source), :data:`MAX_MEMBER_BODY` for members (a decline or
   an evaluation report), answered 413 as soon as the body is known
   (``Content-Length``) or seen (streamed) to exceed it. Update uploads are
   exempt from the cap: their handler streams them under a cap derived from
   the job's model (:func:`fedaas.server.uploads.receive_body`);
3. gives up on a body that stalls: no data for :data:`BODY_IDLE_S` seconds
   answers 408 and closes (a slowloris upload cannot hold a spool file).

A body cut off by 2. or 3. is never read to its end, so its answer always
carries ``Connection: close``, also when the API's own error handler writes
it: kept alive, the connection would stay open on the unread rest of the
body (found by ``tests/server/test_connection_limits.py``).

Wire it in ``create_app``: ``app.add_middleware(BodyLimit)``; it reads the
authenticator from ``app.state.auth``.
"""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fedaas.server.errors import Unauthenticated

MAX_JSON_BODY = 8 * 1024 * 1024  # a job spec with its TOML source (1e6 characters) fits
MAX_MEMBER_BODY = 64 * 1024  # a decline reason or an evaluation report
BODY_IDLE_S = 30.0
UI_FORM = 4 * 1024  # a dashboard form before sign-in (the login form)
STREAMED_PATHS = re.compile(r"^/v1/jobs/[^/]+/rounds/[^/]+/update$")
BODILESS = frozenset({"GET", "HEAD", "OPTIONS"})


class _TooLarge(HTTPException):
    """Raised from ``receive``; FastAPI passes HTTPExceptions on to the API's JSON handler."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body exceeds the limit of {limit} bytes")


class _Stalled(HTTPException):
    def __init__(self) -> None:
        super().__init__(408, f"the request body stalled: no data for {BODY_IDLE_S:g} s")


class BodyLimit:
    """401 before any body is read, 413 over the role's cap, 408 for a stalled body."""

    def __init__(
        self,
        app: ASGIApp,
        max_bytes: int = MAX_JSON_BODY,
        exempt: re.Pattern[str] = STREAMED_PATHS,
        member_max_bytes: int = MAX_MEMBER_BODY,
        idle_s: float = BODY_IDLE_S,
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.member_max_bytes = member_max_bytes
        self.exempt = exempt
        self.idle_s = idle_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers", []))
        declared = headers.get(b"content-length")
        has_body = scope.get("method") not in BODILESS or declared not in (None, b"0")
        limit = self.max_bytes
        ui = scope.get("path", "").startswith("/ui/")  # the dashboard: a session cookie, no bearer
        if has_body and ui:
            signed_in = (
                getattr(scope["app"].state, "ui_signed_in", None) if "app" in scope else None
            )
            limit = self.max_bytes if signed_in and signed_in(headers.get(b"cookie")) else UI_FORM
        elif has_body:
            auth = getattr(scope["app"].state, "auth", None) if "app" in scope else None
            if auth is not None:
                try:
                    who = auth.identify(headers.get(b"authorization", b"").decode("latin-1"))
                except Unauthenticated as exc:
                    await _answer(send, 401, "unauthorized", exc.detail)
                    return
                if who.role != "admin":
                    limit = self.member_max_bytes
        streamed = bool(self.exempt.match(scope.get("path", "")))
        if declared is not None and not streamed:
            if not declared.isdigit():
                await _answer(send, 400, "bad_request", "invalid Content-Length")
                return
            if int(declared) > limit:
                detail = f"request body of {int(declared)} bytes exceeds the limit of {limit}"
                await _answer(send, 413, "too_large", detail)
                return
        seen = 0
        complete = not has_body
        started = cut = False

        async def limited_receive() -> Message:
            nonlocal seen, complete, cut
            if complete:  # the body is in: waiting for a disconnect may take any time
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), self.idle_s)
            except TimeoutError:
                cut = True
                raise _Stalled() from None
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                complete = not message.get("more_body", False)
                if seen > limit and not streamed:
                    cut = True
                    raise _TooLarge(limit)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                if cut:  # the rest of the body is never read: close, whoever answers
                    headers = [h for h in message.get("headers", []) if h[0] != b"connection"]
                    message = {**message, "headers": [*headers, (b"connection", b"close")]}
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except (_TooLarge, _Stalled) as exc:
            if not started:
                code = "too_large" if exc.status_code == 413 else "timeout"
                await _answer(send, exc.status_code, code, str(exc.detail))


async def _answer(send: Send, status: int, code: str, detail: str) -> None:
    """A JSON error that closes the connection (any unread body is never read)."""
    body = json.dumps({"error": code, "detail": detail}).encode()
    headers: list[Any] = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
    ]
    if status == 401:
        headers.append((b"www-authenticate", b"Bearer"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
