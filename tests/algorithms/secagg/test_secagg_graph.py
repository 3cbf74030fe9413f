"""SecAgg+ neighbourhoods: symmetric, of the asked degree, the same for everyone, per round."""

from __future__ import annotations

import pytest

from fedaas.algorithms.secagg import (
    ProtocolViolation,
    RoundContext,
    ThresholdNotMet,
    check_groups,
    neighbours,
)
from fedaas.spec_secagg import SecureAggregationSection

CTX = RoundContext("job", 1, 0)


@pytest.mark.parametrize(
    ("n", "k"), [(10, 4), (10, 3), (9, 3), (50, 8), (51, 7), (7, 6), (5, None)]
)
def test_graph_is_symmetric_with_the_asked_degree(n: int, k: int | None) -> None:
    ids = [f"m{i}" for i in range(n)]
    graph = neighbours(reversed(ids), k, CTX)
    want = n - 1 if k is None else min(k, n - 1)
    degrees = sorted(len(p) for p in graph.values())
    assert degrees[0] == want and degrees[-1] <= want + 1
    assert sum(d > want for d in degrees) <= 1
    for member, peers in graph.items():
        assert member not in peers
        assert all(member in graph[p] for p in peers)


def test_graph_is_deterministic_and_differs_between_rounds() -> None:
    ids = [f"m{i}" for i in range(30)]
    assert neighbours(ids, 6, CTX) == neighbours(sorted(ids, reverse=True), 6, CTX)
    assert neighbours(ids, 6, CTX) != neighbours(ids, 6, RoundContext("job", 2, 0))


def test_groups_that_two_halves_could_unmask_are_refused() -> None:
    graph = neighbours([f"m{i}" for i in range(10)], 5, CTX)  # groups of 6
    check_groups(graph, 4)
    with pytest.raises(ProtocolViolation, match="not above half"):
        check_groups(graph, 3)
    with pytest.raises(ThresholdNotMet):
        check_groups(neighbours(["a", "b", "c"], None, CTX), 4)


def test_every_threshold_the_spec_accepts_fits_the_graph_of_any_roster() -> None:
    """What ``[secure_aggregation]`` accepts never fails the core's group check at run time."""
    for sampled in range(3, 41):
        for k in [None, *range(2, sampled - 1)]:
            section = SecureAggregationSection(enabled=True, neighbors=k)
            threshold = section.reconstruction_threshold(sampled)
            for present in {sampled, max(threshold, sampled - 3)}:  # some never advertised
                graph = neighbours([f"m{i}" for i in range(present)], k, CTX)
                check_groups(graph, threshold)
