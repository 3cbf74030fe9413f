"""fedaas: federated learning as a service.

The Python API (:mod:`fedaas.api`) is re-exported here on first use
(PEP 562 ``__getattr__``), so ``import fedaas`` stays light (no torch, no
HTTP client) until one of these names is touched::

    fedaas.connect(url, token=...)   # -> Coordinator: .submit(spec) -> Job (.status, .wait, .download)
    fedaas.load_model(run_dir)       # -> torch.nn.Module
    fedaas.run_federation(spec, partitions, holdout=...)  # a whole federation on this machine
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_API = ("Coordinator", "Job", "LocalRun", "connect", "load_model", "run_federation", "simulate")

__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    if name in _API:
        from fedaas import api

        return getattr(api, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
