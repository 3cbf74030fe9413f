"""The round's updates -> the mean delta the server optimizer steps on.

What the coordinator aggregates is bounded before it is combined:

- **norms**: under client-level DP an update above the round's clip norm
  (plus the member's own noise, if it adds any) was already refused at
  upload (:func:`dp_norm_limit`); otherwise every update is clipped to
  ``[strategy] norm_bound`` or, by default, to :data:`NORM_FACTOR` times the
  round's (lower) median norm (:class:`~fedaas.algorithms.robust.NormBound`,
  Sun et al. 2019). The relative default is off under client-level DP, where
  it would let one member's update change how the others are clipped.
- **weights** (the mean only): a member's claimed example count is capped at
  :data:`EXAMPLE_RATIO` times the round's median claim and at ``[federation]
  max_examples_per_member`` (:class:`~fedaas.algorithms.robust.ExampleCap`);
  under client-level DP every update weighs 1 (:meth:`JobPrivacy.weight`).

Then ``[strategy] aggregator`` combines them: ``mean`` (FedAvg, summed in
float64 like :class:`~fedaas.algorithms.aggregate.WeightedSum`, central DP
noise on the sum), the unweighted robust rules of
:mod:`fedaas.algorithms.robust`, or ``screened_mean``
(:mod:`fedaas.algorithms.screening`: FedAvg of the updates left after ``f``
are rejected by Krum score and by cosine to the centre). Every rule reads the spilled files
(:class:`~fedaas.server.spill.RoundSpill`) in column blocks, so the only
model-sized buffer is the float32 result.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedaas.algorithms.robust import (
    CoordinateMedian,
    ExampleCap,
    Krum,
    NormBound,
    TrimmedMean,
    gram_add,
    squared_distances,
)
from fedaas.algorithms.screening import ScreenedMean
from fedaas.protocol import ClientPrivacy, PrivacyInstructions
from fedaas.server.errors import JobFailed
from fedaas.server.privacy import JobPrivacy
from fedaas.server.spill import RoundSpill
from fedaas.spec import JobSpec
from fedaas.tensors import SafetensorsFile

log = logging.getLogger("fedaas.coordinator")

NORM_FACTOR = 10.0
"""Default norm bound: this many times the round's lower median update norm."""
EXAMPLE_RATIO = 3.0
"""A member's FedAvg weight is at most this many times the round's lower median claim."""
NOISE_TAIL = 10.0
"""``P(||N(0, s^2 I_d)|| > s (sqrt(d) + t)) <= exp(-t^2 / 2)``: with t = 10, about 2e-22."""


def dp_norm_limit(instructions: PrivacyInstructions, size: int) -> float | None:
    """The largest norm an honest member's update can have this round (``None``: no bound).

    A member clips to ``clip_norm`` and may add its share of the noise, whose
    norm exceeds ``noise_std * (sqrt(d) + NOISE_TAIL)`` with probability below
    ``exp(-NOISE_TAIL^2 / 2)`` (Gaussian concentration of Lipschitz functions).
    """
    if not isinstance(instructions, ClientPrivacy):
        return None
    clip = instructions.clip_norm * (1 + 1e-5) + 1e-6  # float32 rounding of a clipped update
    return clip + instructions.noise_std * (math.sqrt(size) + NOISE_TAIL)


@dataclass(frozen=True)
class Bounded:
    """What bounding did to the round: per-row norm scales, weights, members clipped."""

    members: list[int]
    scales: list[float]
    weights: list[float]
    clipped: list[int]


def bound_updates(spill: RoundSpill, spec: JobSpec, privacy: JobPrivacy) -> Bounded:
    """Norm scales and capped weights of the round's updates (rows ordered by member id)."""
    members = spill.members()
    entries = [spill.entries[m] for m in members]
    norms = [e.norm for e in entries]
    bound: NormBound | None = None
    if spec.strategy.norm_bound is not None:
        bound = NormBound(spec.strategy.norm_bound)
    elif not privacy.client_level and norms:
        bound = NormBound.relative(norms, NORM_FACTOR)
    scales = [bound.scale(n) if bound is not None else 1.0 for n in norms]
    cap = ExampleCap(EXAMPLE_RATIO, spec.federation.max_examples_per_member)
    claims = cap.weights([e.num_examples for e in entries])
    weights = [privacy.weight(max(1, round(c))) for c in claims]
    clipped = [m for m, s in zip(members, scales, strict=True) if s < 1.0]
    return Bounded(members, scales, weights, clipped)


def aggregate(
    spill: RoundSpill,
    spec: JobSpec,
    privacy: JobPrivacy,
    number: int,
    noise: dict[str, np.ndarray] | None = None,
    denominator: float | None = None,
) -> tuple[dict[str, np.ndarray], Bounded]:
    """The round's mean delta (float32 tensors, a fresh dict) and how the updates were bounded.

    ``noise`` (central DP) is added to the mean's sum, which is divided by
    ``denominator`` (``None``: the total weight); the robust rules take
    neither (the spec allows them only where each update is private itself).
    """
    bounded = bound_updates(spill, spec, privacy)
    rule = spec.strategy.aggregator
    if rule == "mean":
        return _mean(spill, bounded, noise, denominator), bounded
    if rule == "screened_mean":
        return _screened(spill, bounded, spec.strategy.byzantine, number), bounded
    delta = {name: np.zeros(shape, np.float32) for name, shape in spill.manifest.items()}
    scales = np.asarray(bounded.scales)[:, None]
    if rule == "krum":
        krum = Krum(spec.strategy.byzantine, spec.strategy.krum_select)
        picked = krum.select(squared_distances(_gram(spill, bounded)))
        chosen = [bounded.members[i] for i in picked]
        log.info("round %d: krum kept member(s) %s", number, chosen)
        for name, offset, rows in spill.columns(chosen):
            rows *= np.asarray([bounded.scales[i] for i in picked])[:, None]
            delta[name].reshape(-1)[offset : offset + rows.shape[1]] = rows.mean(axis=0)
        return delta, bounded
    combine = CoordinateMedian() if rule == "median" else TrimmedMean(spec.strategy.trim)
    for name, offset, rows in spill.columns(bounded.members):
        rows *= scales
        delta[name].reshape(-1)[offset : offset + rows.shape[1]] = combine.combine(rows)
    return delta, bounded


def _gram(spill: RoundSpill, bounded: Bounded) -> np.ndarray:
    """``G = X X^T`` of the bounded updates, summed over column blocks (``(n, n)`` float64)."""
    scales = np.asarray(bounded.scales)[:, None]
    gram = np.zeros((len(bounded.members),) * 2)
    for _, _, rows in spill.columns(bounded.members):
        rows *= scales
        gram_add(gram, rows)
    return gram


def _screened(spill: RoundSpill, bounded: Bounded, f: int, number: int) -> dict[str, np.ndarray]:
    """:class:`ScreenedMean`: two passes over the spill (the Gram matrix, then the kept mean)."""
    screened = ScreenedMean(f).screen(_gram(spill, bounded), bounded.weights)
    names = bounded.members
    log.info(
        "round %d: screened_mean rejected member(s) %s by distance, %s by direction",
        number,
        [names[i] for i in screened.by_distance],
        [names[i] for i in screened.by_direction],
    )
    coef = screened.coefficients(bounded.weights) * np.asarray(bounded.scales)
    delta = {name: np.zeros(shape, np.float32) for name, shape in spill.manifest.items()}
    for name, offset, rows in spill.columns(bounded.members):
        delta[name].reshape(-1)[offset : offset + rows.shape[1]] = coef @ rows
    return delta


def _mean(
    spill: RoundSpill,
    bounded: Bounded,
    noise: dict[str, np.ndarray] | None,
    denominator: float | None,
) -> dict[str, np.ndarray]:
    """FedAvg in float64: ``(sum_k w_k s_k x_k [+ noise]) / (sum_k w_k or the DP denominator)``.

    Summed column block by column block over the spilled updates, so no
    model-sized float64 buffer is needed (the result is float32).
    """
    total = float(sum(bounded.weights))
    coef = np.asarray([w * s for w, s in zip(bounded.weights, bounded.scales, strict=True)])
    divide = 1.0 / (denominator or total)
    delta = {name: np.zeros(shape, np.float32) for name, shape in spill.manifest.items()}
    for name, offset, rows in spill.columns(bounded.members):
        block = coef @ rows
        if noise is not None:  # DP-FedAvg: noise on the sum
            block += noise[name].reshape(-1)[offset : offset + block.size]
        with np.errstate(over="ignore"):  # add_base refuses a non-finite model
            delta[name].reshape(-1)[offset : offset + block.size] = block * divide
    return delta


def bounding_metrics(bounded: Bounded) -> dict[str, Any]:
    """The round record's account of bounding: how many updates were norm-clipped."""
    return {"updates_clipped": len(bounded.clipped)}


def add_base(
    delta: dict[str, np.ndarray], base: SafetensorsFile, spill: RoundSpill, names: dict[int, str]
) -> None:
    """Turn the step into the new model in place (``+= base``); refuse a non-finite one.

    A model with NaN or Inf is never published: :class:`JobFailed` says so
    and names the member whose update was the largest (``names``: id -> name).
    """
    for name, values in delta.items():
        flat = values.reshape(-1)
        for offset, chunk in base.chunks(name):
            with np.errstate(over="ignore", invalid="ignore"):
                flat[offset : offset + chunk.size] += chunk
        if not np.isfinite(flat).all():
            if not spill.entries:  # secure aggregation: no update was ever seen on its own
                raise JobFailed(f"round {spill.number}: the new model would hold NaN or Inf")
            top = max(spill.entries.values(), key=lambda e: e.norm)
            raise JobFailed(
                f"round {spill.number}: the new model would hold NaN or Inf (tensor {name!r}), "
                f"so it was not published; the largest update (norm {top.norm:.4g}) came "
                f"from member {names.get(top.member_id, top.member_id)}"
            )
