"""A broadcast wake-up for the coordinator's long-polls and its round loop."""

from __future__ import annotations

import asyncio


class Signal:
    """Every waiter is released on each :meth:`fire` (unlike an ``asyncio.Event``, it re-arms)."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def fire(self) -> None:
        self._event.set()
        self._event = asyncio.Event()

    async def wait(self, timeout: float) -> None:
        try:
            await asyncio.wait_for(self._event.wait(), timeout=max(timeout, 0))
        except TimeoutError:
            pass
