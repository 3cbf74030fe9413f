"""Who shares keys with whom: SecAgg's complete graph or SecAgg+'s sparse one.

SecAgg+ (Bell et al., CCS 2020) replaces the complete graph of SecAgg with
a random graph of logarithmic degree. Here it is a Harary graph (the ring
of members, each joined to its ``neighbors // 2`` nearest on each side, and
to the opposite member when ``neighbors`` is odd) over a pseudo-random order
of the members, derived with SHA-256 from the round context and the set of
members that advertised keys. Every member and the coordinator compute the
same graph from public values, so the coordinator can't choose it; it is
symmetric, and every degree is ``neighbors`` or ``neighbors + 1`` (one member,
when both ``neighbors`` and the count are odd).

A member's *group* is its neighbours plus itself: it gives each of them one
Shamir share of its two secrets.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from fedaas.algorithms.secagg.errors import ProtocolViolation, ThresholdNotMet
from fedaas.algorithms.secagg.messages import RoundContext, framed

Graph = dict[str, tuple[str, ...]]


def neighbours(members: Iterable[str], neighbors: int | None, context: RoundContext) -> Graph:
    """Each member's neighbours (sorted, itself excluded) for this round."""
    ids = sorted(set(members))
    n = len(ids)
    if neighbors is None or neighbors >= n - 1:
        return {m: tuple(x for x in ids if x != m) for m in ids}
    if neighbors < 1:
        raise ValueError("neighbors is >= 1")
    roster = hashlib.sha256(framed(context.encode(), b"graph", *ids)).digest()
    order = sorted(ids, key=lambda m: hashlib.sha256(roster + m.encode()).digest())
    edges: dict[str, set[str]] = {m: set() for m in ids}

    def join(i: int, j: int) -> None:
        a, b = order[i % n], order[j % n]
        if a != b:
            edges[a].add(b)
            edges[b].add(a)

    for i in range(n):
        for step in range(1, neighbors // 2 + 1):
            join(i, i + step)
    if neighbors % 2:
        for i in range((n + 1) // 2):
            join(i, i + (n + 1) // 2 if n % 2 else i + n // 2)
    return {m: tuple(sorted(edges[m])) for m in ids}


def check_groups(graph: Graph, threshold: int) -> None:
    """Refuse a round where a threshold could not unmask, or two halves could each unmask."""
    for member, peers in graph.items():
        group = len(peers) + 1
        if threshold > group:
            raise ThresholdNotMet(
                f"{member} has {group} members in its group, fewer than the threshold {threshold}"
            )
        if 2 * threshold <= group:
            raise ProtocolViolation(
                f"threshold {threshold} is not above half of {member}'s group of {group}: two "
                "disjoint halves could each reconstruct one of its secrets"
            )
