"""Stopping the coordinator's background tasks: cancelled until they have ended.

One ``Task.cancel()`` is not always enough on Python 3.11: ``asyncio.wait_for``
returns normally when the task's cancellation arrives just as the awaited
thing completes, and the task goes on waiting as if never cancelled (fixed
in 3.12). A shutdown that awaits such a task once would hang; this one asks
again until the task is done.
"""

from __future__ import annotations

import asyncio

RETRY_S = 0.1


async def cancel_and_wait(*tasks: asyncio.Task[object] | None) -> None:
    """Cancel every task and return once all have ended (their exceptions are dropped)."""
    live = {t for t in tasks if t is not None}
    while live := {t for t in live if not t.done()}:
        for task in live:
            task.cancel()
        await asyncio.wait(live, timeout=RETRY_S)
    for task in (t for t in tasks if t is not None and not t.cancelled()):
        task.exception()  # retrieved: no "exception was never retrieved" warning at exit
