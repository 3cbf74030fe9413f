"""What members report about themselves, kept apart from what the coordinator computes.

Members' training metrics are averaged into their own namespace,
``members.<key>`` (:func:`member_means`), so a member reporting ``accuracy``,
``epsilon`` or ``round`` can never replace the coordinator's held-out
accuracy, its accountant's epsilon or the round number in a round record.
Federated evaluation (members' loss and accuracy on their validation split)
weighs each report by its example count, capped like a FedAvg weight
(:func:`capped_evaluations`). Under record-level DP the members report their
own epsilons: :func:`over_budget` finds the members whose report exceeds the
budget, so that those members are declined instead of the job being stopped
for everyone.
"""

from __future__ import annotations

from typing import Any

from fedaas.algorithms.robust import ExampleCap
from fedaas.server.aggregation import EXAMPLE_RATIO
from fedaas.server.db import Store
from fedaas.server.rounds import ActiveJob, RoundState
from fedaas.spec import JobSpec, PrivacyRecord

NAMESPACE = "members."


def member_means(items: list[tuple[int, dict[str, float]]]) -> dict[str, float]:
    """Example-weighted mean of each metric the members reported, as ``members.<key>``."""
    weights = ExampleCap(EXAMPLE_RATIO).weights([max(n, 1) for n, _ in items])
    totals: dict[str, float] = {}
    sums: dict[str, float] = {}
    for w, (_, metrics) in zip(weights, items, strict=True):
        for key, value in metrics.items():
            totals[key] = totals.get(key, 0.0) + w * value
            sums[key] = sums.get(key, 0.0) + w
    return {NAMESPACE + key: totals[key] / sums[key] for key in totals if sums[key] > 0}


def capped_evaluations(evaluated: dict[int, tuple[int, float, float]]) -> dict[str, float]:
    """``federated_loss``/``_accuracy``: the members' reports weighed by capped example counts."""
    reports = list(evaluated.values())
    weights = ExampleCap(EXAMPLE_RATIO).weights([n for n, _, _ in reports])
    total = sum(weights)
    pairs = list(zip(weights, reports, strict=True))
    return {
        "federated_loss": sum(w * loss for w, (_, loss, _) in pairs) / total,
        "federated_accuracy": sum(w * acc for w, (_, _, acc) in pairs) / total,
        "federated_examples": sum(n for n, _, _ in reports),
    }


def over_budget(spec: JobSpec, reports: dict[int, dict[str, float]]) -> dict[int, str]:
    """Record-level DP: member id -> why its own epsilon report is over the job's budget."""
    cfg = spec.privacy
    if not isinstance(cfg, PrivacyRecord) or cfg.epsilon_budget is None:
        return {}
    over: dict[int, str] = {}
    for member, metrics in reports.items():
        spent = max(metrics.get("record_epsilon", 0.0), metrics.get("record_epsilon_next", 0.0))
        if spent > cfg.epsilon_budget:
            over[member] = (
                f"its reported record-level epsilon ({spent:.4g}) exceeds the job's budget "
                f"({cfg.epsilon_budget:g}): it takes no further part"
            )
    return over


def within_budget(
    spec: JobSpec, reported: dict[int, int], reports: dict[int, dict[str, float]]
) -> tuple[list[tuple[int, dict[str, Any]]], dict[int, str]]:
    """The reports the job's privacy may read and the members to decline.

    Only when every reporting member is over the budget do all reports pass
    (the job then stops, as the budget says); otherwise the members over it
    are declined and their reports left out.
    """
    over = over_budget(spec, reports)
    if set(over) >= set(reports):
        over = {}
    kept = [(reported.get(m) or 1, v) for m, v in reports.items() if m not in over]
    return kept, over


def decline_over_budget(
    spec: JobSpec, job: ActiveJob, state: RoundState, store: Store
) -> list[tuple[int, dict[str, Any]]]:
    """:func:`within_budget` for the closing round; the members over it are declined (stored)."""
    kept, over = within_budget(spec, state.reported, state.member_metrics)
    for member, reason in over.items():
        job.declined[member] = reason
        store.record_decline(job.id, state.sampled[member], reason)
    return kept
