"""The coordinator stops when asked, whatever its background tasks were doing.

Found as a hang of the dashboard tests (about one run in six): an operator
cancels a job and the coordinator shuts down at once. The supervisor, awaiting
the cancelled job, took its own cancellation for the job's and went on
waiting for the next job; the shutdown waited for it forever.
"""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from fedaas.server.app import create_app
from fedaas.server.tasks import cancel_and_wait
from fixtures.specs import make_spec

ADMIN = "fda_" + "s" * 40


def test_a_shutdown_right_after_a_cancelled_job_ends(tmp_path: Path) -> None:
    headers = {"Authorization": f"Bearer {ADMIN}"}

    def cancel_then_stop(i: int) -> None:
        folder = tmp_path / str(i)
        folder.mkdir()
        app = create_app(folder, f"sqlite:///{folder / 'db.sqlite'}", ADMIN)
        with TestClient(app, base_url="http://127.0.0.1") as client:  # stops on leaving
            job = client.post("/v1/jobs", json={"spec": make_spec("c")}, headers=headers).json()
            assert client.post(f"/v1/jobs/{job['id']}/cancel", headers=headers).is_success

    def run(i: int, done: list[BaseException | None]) -> None:
        try:
            cancel_then_stop(i)
            done.append(None)
        except BaseException as exc:
            done.append(exc)

    for i in range(12):  # without the fix, about one try in six hung
        done: list[BaseException | None] = []
        worker = threading.Thread(target=run, args=(i, done), daemon=True)  # a hang fails
        worker.start()
        worker.join(timeout=20)
        assert done, f"try {i}: the coordinator did not stop within 20 s"
        assert done[0] is None, done[0]


def test_a_task_that_swallows_its_cancellation_is_cancelled_again() -> None:
    """As ``asyncio.wait_for`` does on Python 3.11 when the cancellation meets a result."""

    async def stubborn() -> None:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            pass
        await asyncio.sleep(30)

    async def main() -> float:
        task = asyncio.create_task(stubborn())
        await asyncio.sleep(0)
        began = time.monotonic()
        await asyncio.wait_for(cancel_and_wait(task, None), timeout=5)
        assert task.cancelled()
        return time.monotonic() - began

    assert asyncio.run(main()) < 1.0


@pytest.mark.parametrize("outcome", ["error", "result"])
def test_ended_tasks_are_waited_for_without_raising(outcome: str) -> None:
    async def ends() -> int:
        if outcome == "error":
            raise RuntimeError("broken")
        return 1

    async def main() -> None:
        task = asyncio.create_task(ends())
        await asyncio.sleep(0.01)
        await cancel_and_wait(task)
        assert task.done()

    asyncio.run(main())
