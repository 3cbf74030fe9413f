"""The ``[secure_aggregation]`` section of a job spec, and what it cannot be combined with.

Secure aggregation (SecAgg, Bonawitz et al. CCS 2017; SecAgg+, Bell et al.
CCS 2020) lets the coordinator recover only the sum of a round's updates:
each member masks its fixed-point encoded update with pairwise masks that
cancel in the sum and a self mask whose seed is secret-shared among its
neighbours. ``enabled`` turns it on; ``neighbors`` is SecAgg+'s sparse graph
(each member shares keys with this many others; unset: with everyone, which
is SecAgg); ``threshold`` is how many of a member's group (its neighbours
and itself) must answer the unmask stage for the round to be recovered
(unset: a strict majority); ``clip_norm`` bounds each update before its
fixed-point encoding when no client-level DP clips it (unset: 10).

:func:`secure_aggregation_problem` refuses, with the reason, what secure
aggregation cannot make secure: a robust aggregator or a norm bound (they
need each update on its own), a threshold of half the neighbourhood or less
(two disjoint halves could each unmask a member), fewer than two members per
round (the sum of one is the update), adaptive clipping (the unclipped bit
is per member) and ``placement = "distributed"`` without secure aggregation
(the coordinator would see each under-noised share).

Part of the spec layer (imported by :mod:`fedaas.spec`); imports nothing of ours.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field, model_validator

from fedaas.spec_section import Section


class SecureAggregationSection(Section):
    """``[secure_aggregation]``: mask the updates so the coordinator sees only their sum."""

    enabled: bool = False
    threshold: Annotated[int, Field(ge=2, le=100_000)] | None = None
    """Shares needed to unmask (of a member's neighbourhood); unset: a majority of it."""
    neighbors: Annotated[int, Field(ge=2, le=100_000)] | None = None
    """SecAgg+: each member's neighbourhood size; unset: every sampled member (SecAgg)."""
    clip_norm: Annotated[float, Field(gt=0, le=1e6)] | None = None
    """Members clip their update to this L2 norm before the fixed-point encoding (unset: 10;
    under client-level DP the privacy clip norm is used)."""

    @model_validator(mode="after")
    def _threshold_fits(self) -> SecureAggregationSection:
        given = [k for k in ("threshold", "neighbors", "clip_norm") if getattr(self, k) is not None]
        if not self.enabled and given:
            raise ValueError(f"{', '.join(given)} apply only with enabled = true")
        if self.threshold is not None and self.neighbors is not None:
            if self.threshold > self.neighbors:
                raise ValueError(
                    f"threshold ({self.threshold}) exceeds neighbors ({self.neighbors}): a "
                    "member's shares go to its neighbours only, so no round could be unmasked"
                )
            if 2 * self.threshold <= self.neighbors:
                raise ValueError(
                    f"threshold ({self.threshold}) is not above half of neighbors "
                    f"({self.neighbors}): two disjoint sets of neighbours could each reconstruct "
                    "a member's secrets, so one could unmask a member that the other reported"
                )
        return self

    def neighborhood(self, sampled: int) -> int:
        """How many others each member shares keys with, among ``sampled`` members."""
        others = max(sampled - 1, 0)
        return others if self.neighbors is None else min(self.neighbors, others)

    def reconstruction_threshold(self, sampled: int) -> int:
        """Shares needed to unmask: ``threshold``, or a strict majority of the neighbourhood.

        Counted over the neighbourhood including the member itself (it holds
        a share of its own secrets), and never below a strict majority.
        """
        group = self.neighborhood(sampled) + 1
        majority = group // 2 + 1
        return max(majority, self.threshold or majority)


def secure_aggregation_problem(
    secure: SecureAggregationSection,
    *,
    aggregator: str,
    norm_bound: float | None,
    privacy: Any,
    min_clients: int,
    clients_per_round: int | None,
) -> str | None:
    """Why the job's sections can't be combined with (or without) secure aggregation; ``None``: fine."""
    placement = getattr(privacy, "placement", None)
    unit = getattr(privacy, "unit", None)
    if not secure.enabled:
        if placement == "distributed" and unit == "client":
            return (
                "privacy: placement 'distributed' needs [secure_aggregation] enabled = true: "
                "without it the coordinator sees each upload on its own, carrying only part of "
                "the noise, so the reported epsilon would not hold against it; use 'central' "
                "(trusts the coordinator) or 'local' (each member adds all the noise)"
            )
        return None
    if aggregator != "mean":
        return (
            f"secure_aggregation: aggregator '{aggregator}' needs every update on its own, but "
            "secure aggregation shows the coordinator only their sum: use aggregator 'mean'"
        )
    if norm_bound is not None:
        return (
            "secure_aggregation: strategy.norm_bound clips each update on the coordinator, which "
            "sees only the masked sum: remove norm_bound (members clip under [privacy] instead)"
        )
    if getattr(privacy, "adaptive_clipping", False):
        return (
            "secure_aggregation: adaptive_clipping has each member report whether its update "
            "was clipped, a value of its own the coordinator would see in the clear"
        )
    if placement == "distributed" and getattr(privacy, "mechanism", None) == "ou":
        return "secure_aggregation: distributed noise needs mechanism 'gaussian'"
    if min_clients < 2:
        return (
            "secure_aggregation: the sum of a single update is that update: set "
            "federation.min_clients >= 2"
        )
    if clients_per_round is not None:
        if secure.neighbors is not None and secure.neighbors >= clients_per_round:
            return (
                f"secure_aggregation: neighbors ({secure.neighbors}) must be below "
                f"clients_per_round ({clients_per_round}); leave it unset for full SecAgg"
            )
        needed = secure.reconstruction_threshold(clients_per_round)
        if secure.threshold is not None and secure.threshold < needed:
            group = secure.neighborhood(clients_per_round) + 1
            return (
                f"secure_aggregation: threshold ({secure.threshold}) is not above half of the "
                f"{group} members that hold each member's shares: two disjoint halves could "
                f"each reconstruct a member's secrets; use at least {needed}"
            )
        if needed > clients_per_round:
            return (
                f"secure_aggregation: threshold ({needed}) exceeds clients_per_round "
                f"({clients_per_round}): no round could be unmasked"
            )
    return None


def secure_aggregation_fits(spec: Any) -> Any:
    """``JobSpec`` validator: raise :class:`ValueError` with :func:`secure_aggregation_problem`."""
    problem = secure_aggregation_problem(
        spec.secure_aggregation,
        aggregator=spec.strategy.aggregator,
        norm_bound=spec.strategy.norm_bound,
        privacy=spec.privacy,
        min_clients=spec.federation.min_clients,
        clients_per_round=spec.federation.clients_per_round,
    )
    if problem is not None:
        raise ValueError(problem)
    return spec
