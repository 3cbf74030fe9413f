"""What members report about themselves, kept apart from what the coordinator computes.

Members' training metrics are averaged into their own namespace,
``members.<key>`` (:func:`member_means`), so a member reporting ``accuracy``,
``epsilon`` or ``round`` can never replace the coordinator's held-out
accuracy, its accountant's epsilon or the round number in a round record.
Federated evaluation: members send the metric STATES of their validation
split (:mod:`fedaas.train.metrics`), which are checked on arrival
(:func:`evaluation_problems`) and SUMMED across members before any metric is
computed (:func:`capped_evaluations`): an AUROC or F1 averaged over members
is not the pooled data's, and fedaas never publishes one. Each member's
states count with its example count capped like a FedAvg weight. Under record-level DP the members report their
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
from fedaas.spec_train import job_metrics
from fedaas.train.metrics import States, check_states, compute_metrics, merge_states

NAMESPACE = "members."


def member_means(items: list[tuple[int, dict[str, float]]]) -> dict[str, float]:
    """Example-weighted mean of each metric the members reported, as ``members.<key>``.

    Summed as ``sum(w / W * value)``: a convex combination of finite numbers stays finite,
    where ``sum(w * value) / W`` overflowed to infinity (published as null) on one member's
    metric near the float64 maximum.
    """
    weights = ExampleCap(EXAMPLE_RATIO).weights([max(n, 1) for n, _ in items])
    sums: dict[str, float] = {}
    for w, (_, metrics) in zip(weights, items, strict=True):
        for key in metrics:
            sums[key] = sums.get(key, 0.0) + w
    means: dict[str, float] = {}
    for w, (_, metrics) in zip(weights, items, strict=True):
        for key, value in metrics.items():
            if sums[key] > 0:
                means[key] = means.get(key, 0.0) + w / sums[key] * value
    return {NAMESPACE + key: mean for key, mean in means.items()}


def evaluation_problems(spec: JobSpec, examples: int, states: States) -> list[str]:
    """Why a member's evaluation report cannot be summed (empty: it can)."""
    return check_states(states, spec.train.task, spec.data.classes, job_metrics(spec), examples)


def capped_evaluations(
    spec: JobSpec,
    evaluated: dict[int, tuple[int, float, float | None]],
    states: dict[int, States],
) -> dict[str, float]:
    """``federated_<metric>`` of the SUM of the members' metric states (and the loss).

    Each member's states are scaled by ``capped / reported`` examples (a
    member claiming many more examples than the round's median counts as
    the cap), then summed; the metrics are computed once from the sum.
    """
    members = [m for m in evaluated if m in states]
    reported = [evaluated[m][0] for m in members]
    weights = ExampleCap(EXAMPLE_RATIO).weights(reported)
    parts = [(w / n, states[m]) for w, n, m in zip(weights, reported, members, strict=True)]
    names = job_metrics(spec)
    if spec.train.task != "regression" and "accuracy" not in names:
        names = (*names, "accuracy")
    values = compute_metrics(merge_states(parts), spec.train.task, spec.data.classes, names)
    out = {f"federated_{key}": value for key, value in values.items()}
    out["federated_examples"] = sum(reported)
    return out


def custom_evaluations(items: list[tuple[int, dict[str, float]]]) -> dict[str, float]:
    """The members' ``eval_step`` metrics: example-weighted means as ``members.eval.<key>``."""
    means = member_means([(n, m) for n, m in items if m])
    return {NAMESPACE + "eval." + k.removeprefix(NAMESPACE): v for k, v in means.items()}


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
