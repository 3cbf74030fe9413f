"""The Ray backend: the same virtual members as Ray actors, on a Ray cluster.

``backend="ray"`` starts ``workers`` actors of :class:`RayMembers` (each
reserving ``cpus_per_member`` CPUs and ``gpus_per_member`` GPUs, fractions
allowed), either on a cluster at ``address`` (started with ``ray start
--head``) or on a local Ray started here. Each actor wraps the very
:class:`~fedaas.sim.simulate.members.VirtualMembers` a local worker process
runs, and it is given and gives back only ``bytes`` frames
(:mod:`fedaas.sim.simulate.wire`): JSON headers and safetensors bodies. How
Ray itself moves those bytes, and how it ships the actor class to its
workers, is Ray's business (its own serializer); fedaas sends no Python
object through it. :meth:`RayPool.run` keeps one task in flight per actor
and gives answers to the caller as they arrive, like the local pool.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

from fedaas.sim.simulate.members import VirtualMembers

OBJECT_STORE_BYTES = 256 * 1024 * 1024
"""Object store of a local Ray started here (frames are small; Ray's default is 30% of RAM)."""


class RayMembers:
    """A Ray actor hosting virtual members: one frame in, one frame out."""

    def __init__(self) -> None:
        import torch

        torch.set_num_threads(1)
        self.members = VirtualMembers()

    def handle(self, frame: bytes) -> bytes:
        return self.members.handle(frame)


class RayPool:
    """Actors on a Ray cluster (``address``) or on a Ray started here and stopped by :meth:`close`."""

    def __init__(
        self,
        workers: int | None = None,
        address: str | None = None,
        cpus_per_member: float = 1.0,
        gpus_per_member: float = 0.0,
    ) -> None:
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        import ray

        self._ray: Any = ray
        self._owns = False
        if not ray.is_initialized():
            if address:
                ray.init(address=address, log_to_driver=False)
            else:
                ray.init(  # "local": a new Ray here, never a cluster that happens to run
                    address="local",
                    num_cpus=workers or os.cpu_count() or 1,
                    include_dashboard=False,
                    object_store_memory=OBJECT_STORE_BYTES,
                    log_to_driver=False,
                )
            self._owns = True
        cpus = float(ray.cluster_resources().get("CPU", 1.0))
        self.size = max(1, workers or int(cpus // max(cpus_per_member, 1e-9)))
        actor = ray.remote(RayMembers).options(
            num_cpus=cpus_per_member,
            num_gpus=gpus_per_member,
            runtime_env={"env_vars": {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}},
        )
        self.actors = [actor.remote() for _ in range(self.size)]

    def broadcast(self, frame: bytes) -> list[bytes]:
        """Send the same frame to every actor (the job, the round's model); their answers."""
        ref = self._ray.put(frame)
        return list(self._ray.get([a.handle.remote(ref) for a in self.actors]))

    def run(self, frames: Sequence[bytes], on_answer: Callable[[int, bytes], None]) -> None:
        """Run every task, one in flight per actor; ``on_answer(index, answer)`` as they arrive."""
        ray = self._ray
        pending: dict[Any, tuple[int, int]] = {}
        cursor = 0

        def submit(actor: int) -> None:
            nonlocal cursor
            if cursor < len(frames):
                pending[self.actors[actor].handle.remote(frames[cursor])] = (cursor, actor)
                cursor += 1

        for actor in range(min(self.size, len(frames))):
            submit(actor)
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            index, actor = pending.pop(ready[0])
            answer = ray.get(ready[0])
            submit(actor)
            on_answer(index, answer)

    def close(self) -> None:
        """Stop the actors; shut Ray down when it was started (or connected) here."""
        for actor in self.actors:
            self._ray.kill(actor)
        self.actors = []
        if self._owns:
            self._ray.shutdown()
