"""Local training on a member: plain (FedAvg, FedProx) and record-level private (DP-SGD).

- :mod:`fedaas.train.local`: :func:`train_local`, :func:`evaluate`, :class:`EvalResult`;
- :mod:`fedaas.train.dp_sgd`: :func:`train_local_dp` (DP-SGD with Opacus);
- :mod:`fedaas.train.optim`: :func:`make_optimizer`, the optimizer both use;
- :mod:`fedaas.train.losses`: each task's loss; :mod:`fedaas.train.schedule`:
  the learning rate of a round; :mod:`fedaas.train.device`: device, mixed precision;
- :mod:`fedaas.train.metrics`: metric states that members send and the coordinator sums;
- :mod:`fedaas.train.custom`: a job's own ``train_step``/``eval_step`` (:class:`BatchLoader`).

The DP-SGD names are imported on first use (PEP 562 ``__getattr__``): Opacus
and dp-accounting take a second each to import, and the coordinator, which
only evaluates, never needs them here. The schedule and epsilon of DP-SGD
are pure accounting and live in :mod:`fedaas.algorithms.accounting`.
"""

from __future__ import annotations

from typing import Any

from fedaas.train.custom import BatchLoader
from fedaas.train.local import EvalResult, evaluate, train_local
from fedaas.train.optim import make_optimizer

__all__ = [
    "BatchLoader",
    "EvalResult",
    "dp_sgd_schedule",
    "evaluate",
    "make_optimizer",
    "record_epsilon_after",
    "train_local",
    "train_local_dp",
]


def __getattr__(name: str) -> Any:
    if name == "train_local_dp":
        from fedaas.train import dp_sgd

        return dp_sgd.train_local_dp
    if name in ("dp_sgd_schedule", "record_epsilon_after"):
        from fedaas.algorithms import accounting

        return getattr(accounting, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
