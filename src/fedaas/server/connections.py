"""Connection-level limits: how long a client may take to send its headers, how many it may hold.

Uvicorn's keep-alive timeout only starts after a response, so a connection
that never completes its request headers (a slowloris: 300 connections that
sent half a header were still open after 100 s) or never sends anything at
all is held forever, and enough of them starve health checks and member
polls. :func:`guarded` extends uvicorn's httptools protocol (or a subclass of
it, such as the mutual-TLS one) so that:

- every request must complete its headers within :data:`HEADER_TIMEOUT_S`
  of the connection opening or of its first byte, or the connection is
  closed;
- past :data:`MAX_CONNECTIONS` open connections a new one is closed at once
  (uvicorn's ``limit_concurrency`` answers 503 only once headers arrive).

Bodies have their own idle timeout (:mod:`fedaas.server.limits`).
"""

from __future__ import annotations

import asyncio

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

HEADER_TIMEOUT_S = 10.0
MAX_CONNECTIONS = 4096
"""Members hold one long-poll each; uvicorn's ``limit_concurrency`` is set to the same."""


class HeaderDeadline(HttpToolsProtocol):
    """httptools, plus a deadline for request headers and a cap on open connections."""

    header_timeout_s: float = HEADER_TIMEOUT_S
    max_connections: int = MAX_CONNECTIONS

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._header_timer: asyncio.TimerHandle | None = None
        super().connection_made(transport)
        if len(self.connections) > self.max_connections:
            transport.close()
            return
        self._arm()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._header_timer is None:
            self._arm()

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._header_timer = self.loop.call_later(self.header_timeout_s, self._headers_late)

    def _disarm(self) -> None:
        if getattr(self, "_header_timer", None) is not None:
            self._header_timer.cancel()  # type: ignore[union-attr]
            self._header_timer = None

    def _headers_late(self) -> None:
        self._header_timer = None
        if self.cycle is None or self.cycle.response_complete:  # not inside a request
            self.transport.close()


def guarded(base: type[HttpToolsProtocol] = HttpToolsProtocol) -> type[HttpToolsProtocol]:
    """``base`` with :class:`HeaderDeadline`'s limits (``base`` may add its own behaviour)."""
    if base is HttpToolsProtocol:
        return HeaderDeadline
    return type(f"HeaderDeadline{base.__name__}", (HeaderDeadline, base), {})
