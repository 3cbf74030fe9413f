"""The embedded backend's worker pool with real worker processes: answers reach the task
that asked, tasks bigger than a pipe never stall it, and a dead worker is an error, not a hang.

A worker answers an unknown task with an error that names it, which is
enough to tell each answer's task apart without a job.
"""

from __future__ import annotations

import os
import signal
import threading

import pytest

from fedaas.sim.simulate.pool import LocalPool, WorkerFailed
from fedaas.sim.simulate.wire import pack, unpack

BIG = b"\0" * (1 << 20)  # far more than a pipe holds (64 KiB on Linux)


def _run(pool: LocalPool, frames: list[bytes], seconds: float = 60) -> dict[int, str]:
    """``pool.run`` in a thread, so a hang fails the test instead of blocking the suite."""
    answers: dict[int, str] = {}
    failure: list[BaseException] = []

    def go() -> None:
        try:
            pool.run(frames, lambda i, a: answers.__setitem__(i, unpack(a)[0]["error"]))
        except BaseException as exc:
            failure.append(exc)

    thread = threading.Thread(target=go, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"the pool hung with {len(answers)} of {len(frames)} answers"
    if failure:
        raise failure[0]
    return answers


def test_every_answer_reaches_its_task_with_tasks_bigger_than_a_pipe() -> None:
    pool = LocalPool(2)
    try:
        frames = [pack({"op": f"task-{i}"}, BIG if i % 3 == 0 else b"") for i in range(40)]
        answers = _run(pool, frames)
        assert sorted(answers) == list(range(40))
        for i, error in answers.items():
            assert f"'task-{i}'" in error, (i, error)
        # a broadcast after a run still reaches each worker exactly once
        assert len(pool.broadcast(pack({"op": "again"}, BIG))) == 2
    finally:
        pool.close()


def test_a_dead_worker_fails_the_run_and_names_it() -> None:
    pool = LocalPool(2)
    try:
        victim = pool.pids()[1]
        os.kill(victim, signal.SIGKILL)
        with pytest.raises(WorkerFailed, match=f"pid {victim}"):
            _run(pool, [pack({"op": f"task-{i}"}, BIG) for i in range(20)], seconds=30)
    finally:
        pool.close()
