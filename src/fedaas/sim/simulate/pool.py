"""The embedded backend: a pool of worker processes on this machine, frames over pipes.

Each worker is ``python -m fedaas.sim.simulate.worker`` with its stdin and
stdout as pipes (no ``multiprocessing``, whose pools pickle what they send).
:meth:`LocalPool.run` hands each worker its next task as soon as it answers
the previous one, and gives the answers to the caller on the calling thread
as they arrive; the caller orders what it keeps by member, so the order of
arrival never reaches the model. Memory is the workers' (one model and one
member's data each) plus the driver's: it does not grow with the number of
members.
"""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO

from fedaas.sim.simulate.wire import WireError, read_frame, write_frame


class WorkerFailed(RuntimeError):
    """A worker process died or broke the frame protocol."""


class LocalPool:
    """``workers`` worker processes (default: one per core)."""

    def __init__(self, workers: int | None = None, log_path: Path | None = None) -> None:
        self.size = max(1, workers or os.cpu_count() or 1)
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        self._log: IO[bytes] | None = open(log_path, "ab") if log_path else None
        self._procs: list[subprocess.Popen[bytes]] = []
        try:
            for _ in range(self.size):
                self._procs.append(
                    subprocess.Popen(
                        [sys.executable, "-m", "fedaas.sim.simulate.worker"],
                        stdin=subprocess.PIPE,
                        stdout=subprocess.PIPE,
                        stderr=self._log if self._log is not None else subprocess.DEVNULL,
                        env=env,
                    )
                )
        except BaseException:
            self.close()
            raise

    def _ask(self, i: int, frame: bytes) -> bytes:
        proc = self._procs[i]
        assert proc.stdin is not None and proc.stdout is not None
        try:
            write_frame(proc.stdin, frame)
            answer = read_frame(proc.stdout)
        except (OSError, WireError) as exc:
            raise WorkerFailed(f"worker {i} (pid {proc.pid}) failed: {exc}") from None
        if answer is None:
            raise WorkerFailed(f"worker {i} (pid {proc.pid}) exited with {proc.poll()}")
        return answer

    def broadcast(self, frame: bytes) -> list[bytes]:
        """Send the same frame to every worker (the job, the round's model); their answers."""
        answers: list[bytes] = [b""] * self.size
        self.run([frame] * self.size, answers.__setitem__, pinned=True)
        return answers

    def run(
        self,
        frames: Sequence[bytes],
        on_answer: Callable[[int, bytes], None],
        *,
        pinned: bool = False,
    ) -> None:
        """Run every task; ``on_answer(index, answer)`` on this thread as answers arrive.

        ``pinned``: task ``i`` goes to worker ``i`` (one each); otherwise each
        worker takes the next task when it is free.
        """
        done: queue.Queue[tuple[int, bytes | BaseException]] = queue.Queue()
        lock, cursor = threading.Lock(), [0]

        def next_index() -> int | None:
            with lock:
                i = cursor[0]
                cursor[0] += 1
            return i if i < len(frames) else None

        def serve(worker: int) -> None:
            while (i := worker if pinned else next_index()) is not None:
                try:
                    done.put((i, self._ask(worker, frames[i])))
                except BaseException as exc:  # re-raised on the calling thread
                    done.put((i, exc))
                    return
                if pinned:
                    return

        count = len(frames) if pinned else min(self.size, len(frames))
        if pinned and count > self.size:
            raise ValueError("a pinned run takes at most one task per worker")
        threads = [threading.Thread(target=serve, args=(w,), daemon=True) for w in range(count)]
        for t in threads:
            t.start()
        for _ in range(len(frames)):
            i, answer = done.get()
            if isinstance(answer, BaseException):
                raise answer  # the caller closes the pool, which ends the other workers
            on_answer(i, answer)
        for t in threads:
            t.join()

    def close(self) -> None:
        """End every worker (closing its input ends it; a stuck one is killed by its pid)."""
        for proc in self._procs:
            if proc.stdin is not None:
                try:
                    proc.stdin.close()
                except OSError:
                    pass
        for proc in self._procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()
        self._procs.clear()
        if self._log is not None:
            self._log.close()
            self._log = None

    def pids(self) -> list[int]:
        return [p.pid for p in self._procs]
