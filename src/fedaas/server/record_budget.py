"""Record-level DP on the coordinator: the job's view of its members' DP-SGD budgets.

Under record-level DP (DP-SGD inside each member, Abadi et al., CCS 2016,
arXiv:1607.00133) every member keeps its own ledger and refuses a round that
would take it past the budget. The coordinator only watches what members
report with their updates (``record_epsilon``, ``record_epsilon_next``): the
job's guarantee is the weakest member's, and the job stops before the round
that would take any member past ``epsilon_budget``.
"""

from __future__ import annotations

from typing import Any

from fedaas.spec import PrivacyRecord


class BudgetReached(Exception):
    """The next round would exceed the job's privacy budget: stop the job cleanly."""


class RecordBudget:
    """The largest next-round epsilon any member reported (persisted with every round)."""

    def __init__(self, cfg: PrivacyRecord, epsilon_next: float = 0.0) -> None:
        self.cfg = cfg
        self.epsilon_next = float(epsilon_next)

    def check(self, number: int) -> None:
        """Raise :class:`BudgetReached` if a member's epsilon would exceed the budget."""
        budget = self.cfg.epsilon_budget
        if budget is not None and self.epsilon_next > budget:
            raise BudgetReached(
                f"privacy budget reached: after round {number - 1}, one more round of DP-SGD "
                f"would bring a member's record-level epsilon to {self.epsilon_next:.3f} "
                f"> {budget:g}"
            )

    def close(self, member_metrics: list[tuple[int, dict[str, float]]]) -> dict[str, Any]:
        """The round's metrics: the largest ``record_epsilon`` (with ``delta``), the largest
        ``record_epsilon_next``, and ``private`` (false for a reproducible run)."""
        metrics: dict[str, Any] = {"private": not self.cfg.reproducible}
        spent = [m["record_epsilon"] for _, m in member_metrics if "record_epsilon" in m]
        if spent:
            metrics.update(record_epsilon=max(spent), delta=self.cfg.delta)
        upcoming = [
            m["record_epsilon_next"] for _, m in member_metrics if "record_epsilon_next" in m
        ]
        if upcoming:  # a member's epsilon only grows: the running maximum is the one to watch
            self.epsilon_next = max(self.epsilon_next, *upcoming)
            metrics["record_epsilon_next"] = max(upcoming)
        return metrics
