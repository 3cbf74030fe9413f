"""``fedaas simulate``: thousands of virtual members on one machine, or on a Ray cluster.

The coordinator's and the members' code of the service, called in-process:
:mod:`~fedaas.sim.simulate.engine` (the round loop),
:mod:`~fedaas.sim.simulate.members` (a worker's virtual members),
:mod:`~fedaas.sim.simulate.pool` / :mod:`~fedaas.sim.simulate.ray_pool`
(the backends), :mod:`~fedaas.sim.simulate.wire` (the frames between them),
:mod:`~fedaas.sim.simulate.partitions` (who the members are),
:mod:`~fedaas.sim.simulate.run` (:func:`simulate`, the run folder).
"""

from __future__ import annotations

from typing import Any

__all__ = ["NotSimulated", "PartitionError", "SimulationResult", "Stragglers", "simulate"]

_WHERE = {
    "NotSimulated": "run",
    "PartitionError": "partitions",
    "SimulationResult": "run",
    "Stragglers": "engine",
    "simulate": "run",
}


def __getattr__(name: str) -> Any:
    """Imported on first use (PEP 562): a worker process imports only what members need."""
    if name in _WHERE:
        import importlib

        return getattr(importlib.import_module(f"fedaas.sim.simulate.{_WHERE[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
