"""Local training on a member: plain (FedAvg, FedProx) and record-level private (DP-SGD).

- :mod:`fedaas.train.local`: :func:`train_local`, :func:`evaluate`, :class:`EvalResult`;
- :mod:`fedaas.train.dp_sgd`: :func:`train_local_dp` (DP-SGD with Opacus);
- :mod:`fedaas.train.optim`: :func:`make_optimizer`, the optimizer both use;
- :mod:`fedaas.train.losses`: each task's loss; :mod:`fedaas.train.schedule`:
  the learning rate of a round; :mod:`fedaas.train.device`: device, mixed precision;
- :mod:`fedaas.train.metrics`: metric states that members send and the coordinator sums;
- :mod:`fedaas.train.custom`: a job's own ``train_step``/``eval_step`` (:class:`BatchLoader`).

:func:`train_local_dp` is imported on first use (PEP 562 ``__getattr__``):
Opacus takes more than a second to import, and neither the coordinator, which
only evaluates, nor a member without record-level DP needs it. The schedule
and epsilon of DP-SGD are pure accounting and live in
:mod:`fedaas.algorithms.accounting` (which loads dp-accounting on first use).
"""

from __future__ import annotations

from typing import Any

from fedaas.algorithms.accounting import dp_sgd_schedule, record_epsilon_after
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
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
