"""Which members are online: seen recently, or waiting in a long-poll right now.

A member is online while one of its long-polls is open, and for
:data:`ONLINE_WINDOW_S` after its last request. A member that hangs up while
it waits (killed, network gone) is offline at once, so the next round does
not sample it and then wait for it until the deadline.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from fedaas.server.signals import Signal

log = logging.getLogger("fedaas.coordinator")

ONLINE_WINDOW_S = 60.0


class Presence:
    def __init__(self) -> None:
        self._last_seen: dict[int, float] = {}
        self._polling: dict[int, int] = {}
        self._lock = threading.Lock()
        """Held to change the tables, and to read them as a whole (the event loop changes them,
        the operator's view reads them in threads)."""
        self.changed = Signal()
        """Fires when a member comes online or goes away."""

    def online(self) -> set[int]:
        now = time.monotonic()
        with self._lock:  # the operator's view reads this in threads
            return {
                member
                for member, seen in self._last_seen.items()
                if self._polling.get(member, 0) > 0 or now - seen < ONLINE_WINDOW_S
            }

    def last_seen(self, member_id: int) -> float | None:
        """Wall-clock time of the member's last request (``None``: not since start-up)."""
        seen = self._last_seen.get(member_id)
        return None if seen is None else time.time() - (time.monotonic() - seen)

    def seen(self, member_id: int) -> None:
        """The member made a request just now."""
        with self._lock:
            first = member_id not in self._last_seen
            self._last_seen[member_id] = time.monotonic()
        if first:
            self.changed.fire()

    def forget(self, member_id: int) -> None:
        """The member is gone (revoked): offline from now on."""
        with self._lock:
            self._last_seen.pop(member_id, None)
        self.changed.fire()

    @contextmanager
    def waiting(self, member_id: int) -> Iterator[PollHandle]:
        """The member holds a long-poll open for the duration of the ``with`` block."""
        with self._lock:
            self._polling[member_id] = self._polling.get(member_id, 0) + 1
        handle = PollHandle()
        try:
            yield handle
        finally:
            with self._lock:
                self._polling[member_id] -= 1
                gone = handle.hung_up and self._polling[member_id] == 0
                if gone:
                    self._last_seen.pop(member_id, None)
                else:
                    self._last_seen[member_id] = time.monotonic()
            if gone:
                log.info("member %d hung up while waiting for a task: offline", member_id)
                self.changed.fire()


class PollHandle:
    """Set ``hung_up`` when the member closed the connection of its poll."""

    hung_up: bool = False
