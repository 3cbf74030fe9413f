"""Waiting out outages of the coordinator's dependencies: the database and the artifact store.

Real infrastructure fails for a minute every week: PostgreSQL restarts, an
object store is unreachable, a disk fills. A call into such a dependency
goes through its :class:`Dependency`, which retries transient failures with
capped exponential backoff (and gives a hung call a deadline), logs one line
when an incident starts and one when it ends (never one per retry or per
request), and remembers what is down and since when, so the job's status,
the readiness endpoint and the API's 503 answers can say so. Only when an
outage outlasts :data:`MAX_OUTAGE_S` does the call give up with
:class:`DependencyUnavailable`: the job then fails with that reason and can
be continued from its last committed round (``fedaas job resume``).

What counts as transient: a lost or refused database connection, a full
disk, an unreachable or timing-out object store. Anything else (a constraint
violation, a bug) propagates at once.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import errno
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from fedaas.storage import StorageError, one_line

log = logging.getLogger("fedaas.coordinator")

T = TypeVar("T")

MAX_OUTAGE_S = 900.0
"""How long a job waits for a dependency to come back before it fails (resumable)."""
CALL_DEADLINE_S = 30.0
"""How long one small call may hang before it counts as a failure (and is retried)."""
TRANSFER_RATE = 2 * 1024 * 1024
"""Bytes per second a transfer is given on top of :data:`CALL_DEADLINE_S`."""


def deadline_for(nbytes: int) -> float:
    """The deadline of a call that moves ``nbytes`` (a model to the artifact store)."""
    return CALL_DEADLINE_S + nbytes / TRANSFER_RATE


BACKOFF_CAP_S = 10.0
SETTLE_S = 5.0
"""An outage is over when calls have succeeded and none failed for this long."""


class DependencyUnavailable(RuntimeError):
    """A dependency stayed down longer than the coordinator waits; the message says which."""


class CallTimedOut(RuntimeError):
    """A call into a dependency did not return within its deadline."""


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` is an outage worth waiting out (not a bug or a bad request)."""
    if isinstance(exc, OperationalError | PoolTimeout | CallTimedOut):
        return True
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    if isinstance(exc, StorageError):
        return exc.transient
    if isinstance(exc, OSError):
        return exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.ECONNREFUSED)
    return False


@dataclass(frozen=True)
class Outage:
    dependency: str
    since: float
    """Wall-clock time (``time.time()``) the outage was first seen."""
    error: str


class Dependency:
    """One external dependency and the state of its current outage (if any)."""

    def __init__(self, name: str, max_outage_s: float = MAX_OUTAGE_S) -> None:
        self.name = name
        self.max_outage_s = max_outage_s
        self._outage: Outage | None = None
        self._last_failure = 0.0
        self._lock = threading.Lock()

    @property
    def outage(self) -> Outage | None:
        """The current outage, or ``None`` while the dependency answers."""
        return self._outage

    def failed(self, exc: BaseException) -> Outage:
        """Record a failure; logs only when it starts an incident."""
        with self._lock:
            self._last_failure = time.monotonic()
            if self._outage is None:
                self._outage = Outage(self.name, time.time(), one_line(exc))
                log.warning("%s unavailable: %s; waiting for it", self.name, self._outage.error)
            return self._outage

    def recovered(self) -> None:
        """A call succeeded: the incident ends once no call has failed for :data:`SETTLE_S`.

        A read can succeed while writes still fail (a full disk); settling keeps
        one incident one incident instead of a flapping pair of log lines.
        """
        with self._lock:
            settled = time.monotonic() - self._last_failure >= SETTLE_S
            if self._outage is not None and settled:
                log.warning(
                    "%s available again after %.0f s", self.name, time.time() - self._outage.since
                )
                self._outage = None

    def _give_up_after(self, outage: Outage) -> None:
        if time.time() - outage.since > self.max_outage_s:
            raise DependencyUnavailable(
                f"the {self.name} has been unavailable for {time.time() - outage.since:.0f} s "
                f"({outage.error}); continue the job with 'fedaas job resume' once it is back"
            )


class HeldOutUnavailable(StorageError):
    """The store of a job's held-out set is down (not the artifact store): waited out too."""


class Dependencies:
    """The coordinator's dependencies, and calls into them that wait out their outages.

    A failure is blamed on the dependency its exception belongs to (a
    database error on the database, a storage error on the artifact store, or
    on the held-out data's store when it says so, a full disk on the state
    disk); a call that hangs past ``deadline_s`` on the one the caller names.
    """

    def __init__(
        self, max_outage_s: float = MAX_OUTAGE_S, deadline_s: float = CALL_DEADLINE_S
    ) -> None:
        self.database = Dependency("database", max_outage_s)
        self.artifacts = Dependency("artifact store", max_outage_s)
        self.disk = Dependency("state disk", max_outage_s)
        self.holdout = Dependency("held-out data store", max_outage_s)
        self.deadline_s = deadline_s
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=8, thread_name_prefix="fedaas-io"
        )

    def all(self) -> tuple[Dependency, ...]:
        return (self.database, self.artifacts, self.disk, self.holdout)

    def outages(self) -> list[Outage]:
        return [d.outage for d in self.all() if d.outage is not None]

    def blame(self, exc: BaseException, default: Dependency) -> Dependency:
        if isinstance(exc, DBAPIError | PoolTimeout):
            return self.database
        if isinstance(exc, HeldOutUnavailable):
            return self.holdout
        if isinstance(exc, StorageError):
            return self.artifacts
        if isinstance(exc, OSError):
            return self.disk
        return default

    def _failed(self, exc: BaseException, default: Dependency, attempt: int) -> float:
        """Record a transient failure; the delay before the next attempt (or give up)."""
        dependency = self.blame(exc, default)
        dependency._give_up_after(dependency.failed(exc))
        return min(BACKOFF_CAP_S, 0.5 * 2**attempt)

    def _recovered(self) -> None:
        for dependency in self.all():
            dependency.recovered()

    def _timed_out(self, on: Dependency, deadline: float) -> CallTimedOut:
        return CallTimedOut(f"the {on.name} did not answer within {deadline:.0f} s")

    async def acall(
        self,
        fn: Callable[..., T],
        *args: object,
        on: str = "database",
        deadline_s: float | None = None,
    ) -> T:
        """Run ``fn(*args)`` in a worker thread from the event loop, waiting out outages."""
        default = self._named(on)
        deadline = deadline_s or self.deadline_s
        loop = asyncio.get_running_loop()
        attempt = 0
        while True:
            try:
                result = await asyncio.wait_for(
                    loop.run_in_executor(self._pool, fn, *args), timeout=deadline
                )
            except TimeoutError:
                delay = self._failed(self._timed_out(default, deadline), default, attempt)
            except Exception as exc:
                if not is_transient(exc):
                    raise
                delay = self._failed(exc, default, attempt)
            else:
                self._recovered()
                return result
            await asyncio.sleep(delay)
            attempt += 1

    def _named(self, on: str) -> Dependency:
        return {"database": self.database, "artifacts": self.artifacts, "disk": self.disk}[on]
