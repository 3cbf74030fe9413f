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
import re
import socket
from collections.abc import Callable, Sequence
from typing import Any

from fedaas.sim.simulate.members import VirtualMembers

OBJECT_STORE_BYTES = 256 * 1024 * 1024
"""Object store of a local Ray started here (frames are small; Ray's default is 30% of RAM)."""
PROBE_S = 5.0
"""How long the cluster's address is given to accept a connection before Ray is asked."""


class RayUnavailable(RuntimeError):
    """No Ray cluster answers at the address, or it lacks what each member reserves."""


def _probe(address: str) -> None:
    """Fail in seconds when nothing listens at ``HOST:PORT`` (Ray itself retries for minutes)."""
    if address == "auto":
        return  # Ray's own lookup of the cluster started on this machine
    found = re.fullmatch(r"(?:ray://)?(?:\[([^\]]+)\]|([^\[\]/:\s]+)):(\d{1,5})", address)
    if found is None:
        raise RayUnavailable(
            f"the Ray address {address!r} is not HOST:PORT (or ray://HOST:PORT, or auto)"
        )
    host, port = found.group(1) or found.group(2), int(found.group(3))
    try:
        socket.create_connection((host, port), timeout=PROBE_S).close()
    except OSError as exc:
        raise RayUnavailable(
            f"no Ray cluster answers at {address} ({exc.strerror or type(exc).__name__}); "
            "start one with `ray start --head` and pass the address it prints"
        ) from None


def _check_resources(cluster: dict[str, float], cpus: float, gpus: float) -> None:
    """A member that reserves more than the whole cluster has would wait for it forever."""
    for name, wanted in (("CPU", cpus), ("GPU", gpus)):
        have = float(cluster.get(name, 0.0))
        if wanted > have:
            raise RayUnavailable(
                f"each member reserves {wanted:g} {name}(s) but the Ray cluster has {have:g}"
            )


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
                _probe(address)
                try:
                    ray.init(address=address, log_to_driver=False)
                except (ValueError, ConnectionError) as exc:  # e.g. no Ray at a port that answers
                    raise RayUnavailable(
                        f"cannot join the Ray cluster at {address}: {exc}"
                    ) from None
            else:
                ray.init(  # "local": a new Ray here, never a cluster that happens to run
                    address="local",
                    num_cpus=workers or os.cpu_count() or 1,
                    include_dashboard=False,
                    object_store_memory=OBJECT_STORE_BYTES,
                    log_to_driver=False,
                )
            self._owns = True
        resources = ray.cluster_resources()
        try:
            _check_resources(resources, cpus_per_member, gpus_per_member)
        except RayUnavailable:
            if self._owns:
                ray.shutdown()
            raise
        cpus = float(resources.get("CPU", 1.0))
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
