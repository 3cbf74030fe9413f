"""HTTP transport to the coordinator: bearer auth, JSON errors, retries with backoff.

Connection failures and 5xx answers are retried with capped exponential
backoff and jitter (so a restarting coordinator is not stampeded); a 4xx
answer is final and raised as :class:`ApiClientError` carrying the server's
``{"error", "detail"}``.
"""

from __future__ import annotations

import logging
import random
import time
from typing import Any

import httpx

log = logging.getLogger("fedaas.transport")


class ApiClientError(Exception):
    """The coordinator refused a request (4xx) or could not be reached in time."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(f"{detail} ({status} {code})" if status else detail)
        self.status = status
        self.code = code
        self.detail = detail


def backoff_delays(base: float = 0.5, cap: float = 30.0) -> Any:
    """Full-jitter exponential backoff: 0.5 s, 1 s, 2 s ... capped at ``cap``."""
    attempt = 0
    while True:
        yield random.uniform(0.5, 1.0) * min(cap, base * 2**attempt)
        attempt += 1


class Transport:
    """A keep-alive HTTP client bound to one coordinator and one token."""

    def __init__(
        self,
        server: str,
        token: str,
        *,
        give_up_after: float | None = 60.0,
        verify: bool | str = True,
    ) -> None:
        self.server = server.rstrip("/")
        self.give_up_after = give_up_after
        self._http = httpx.Client(
            base_url=self.server,
            headers={"Authorization": f"Bearer {token}", "User-Agent": "fedaas"},
            timeout=httpx.Timeout(30.0, connect=10.0),
            verify=verify,
        )

    def close(self) -> None:
        self._http.close()

    def request(
        self, method: str, path: str, *, timeout: float | None = None, **kwargs: Any
    ) -> httpx.Response:
        """Send a request, retrying while the coordinator is unreachable or failing."""
        started = time.monotonic()
        delays = backoff_delays()
        if timeout is not None:
            kwargs["timeout"] = httpx.Timeout(timeout + 10.0, connect=10.0)
        while True:
            try:
                response = self._http.request(method, path, **kwargs)
            except httpx.TransportError as exc:
                problem = f"cannot reach the coordinator at {self.server} ({type(exc).__name__})"
            else:
                if response.status_code < 400 or response.status_code == 304:
                    return response
                if response.status_code < 500:
                    raise _error(response)
                problem = f"coordinator error {response.status_code}"
            delay = next(delays)
            if (
                self.give_up_after is not None
                and time.monotonic() - started + delay > self.give_up_after
            ):
                raise ApiClientError(0, "unreachable", problem)
            log.warning("%s; retrying in %.1f s", problem, delay)
            time.sleep(delay)

    def get_json(self, path: str, **kwargs: Any) -> Any:
        return self.request("GET", path, **kwargs).json()

    def post_json(self, path: str, body: Any, **kwargs: Any) -> Any:
        return self.request("POST", path, json=body, **kwargs).json()


def _error(response: httpx.Response) -> ApiClientError:
    try:
        body = response.json()
        return ApiClientError(response.status_code, str(body["error"]), str(body["detail"]))
    except (ValueError, KeyError, TypeError):
        return ApiClientError(
            response.status_code, "error", response.text[:200] or response.reason_phrase
        )
