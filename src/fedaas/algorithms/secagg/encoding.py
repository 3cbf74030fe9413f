"""Fixed-point encoding of a weighted update into integers modulo 2^32 (or 2^64).

SecAgg sums integers modulo 2^k (Bonawitz et al. 2017, section 3), so a
member turns its clipped float update ``x`` (L2 norm <= ``clip``) and its
weight ``w`` (e.g. its example count, capped at the public ``max_weight``)
into the vector ``[q(w' x_1), ..., q(w' x_d), q(w')]`` with
``w' = min(w, max_weight) / max_weight`` scaled by ``scale`` and rounded
**stochastically** (up with probability equal to the fractional part), so
the encoding is unbiased. The weight travels inside the masked vector: the
coordinator learns only the total weight, never one member's count.

Rounding randomness is an AES-256-CTR keystream keyed from ``os.urandom``
(:mod:`.prg`), 32 bits per coordinate (``floor(v + U)``): cryptographic like the masks, and
~10x faster than ``os.urandom`` itself. A seeded numpy generator would be
statistically fine, but the rounding direction depends on the data, so we
keep it unpredictable (the same rule as privacy noise).

``scale`` is the largest power of two for which the sum of ``members``
vectors cannot wrap: each coordinate is at most ``max(clip, 1) * scale + 1``
in magnitude and ``members`` of them stay below ``2^(k-1)`` with a factor
two of margin; 2^32 is used whenever that leaves ``clip * scale >= 2^16``
(up to 16,384 members at clip 1, 1,638 at clip 10), else 2^64, so a masked upload is no bigger
than the fp32 update.

Error (documented and tested): each member rounds its weight once and each
coordinate once, one step ``max_weight / scale`` each at most, so against
the exact ``sum_u w_u x_u`` every decoded coordinate is off by less than
``members * (1 + clip) * max_weight / scale`` (:meth:`FixedPoint.error_bound`),
and the decoded total weight by less than ``members * max_weight / scale``;
both errors have mean zero (stochastic rounding is unbiased). At 64 bits
the step is finer than float64 resolves, so rounding there is float64's
(relative 2^-52, far below the float32 update's own precision) and the
bound gains ``members * max_weight * clip * 2^-50``.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np

from fedaas.algorithms.secagg.prg import expand

PRECISION = 2.0**16
"""Minimum ``clip * scale`` (and ``scale``) before the encoding moves to 64 bits."""
_CLIP_SLACK = 1e-5


def _stochastic_floor(values: np.ndarray) -> np.ndarray:
    """``floor(v + U)``, U uniform in [0, 1) with 32 cryptographic bits: rounds up with
    probability ``frac(v)``, so the result is unbiased. In place on ``values`` (float64), then
    int64. Bias: under 2^-32 of a step from the 32-bit uniform, plus under 2^-25 of a step from
    the float64 sum for ``|v| < 2^27`` (the encodings :meth:`FixedPoint.for_round` makes)."""
    uniforms = expand(os.urandom(32), values.size, np.uint32).astype(np.float64)
    uniforms *= 2.0**-32
    values += uniforms
    np.floor(values, out=values)
    return values.astype(np.int64)


@dataclass(frozen=True)
class FixedPoint:
    """The encoding of a round: modulus ``2^bits``, step ``1/scale``, public bounds."""

    bits: int
    scale: float
    clip: float
    max_weight: float

    def __post_init__(self) -> None:
        if self.bits not in (32, 64):
            raise ValueError("bits is 32 or 64")
        for name in ("scale", "clip", "max_weight"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
                raise ValueError(f"{name} is a finite number > 0")

    @classmethod
    def for_round(cls, members: int, clip: float, max_weight: float) -> FixedPoint:
        """The smallest modulus and largest power-of-two scale where ``members`` sums can't wrap."""
        if not isinstance(members, int) or members < 1:
            raise ValueError("members is an integer >= 1")
        if not math.isfinite(clip) or clip <= 0 or not math.isfinite(max_weight) or max_weight <= 0:
            raise ValueError("clip and max_weight are finite numbers > 0")
        for bits in (32, 64):
            per_member = (2 ** (bits - 1) - 1) // members
            if per_member < 4:
                continue
            scale = 2.0 ** math.floor(math.log2(per_member / 2 / max(clip, 1.0)))
            if scale * min(clip, 1.0) >= PRECISION:
                return cls(bits=bits, scale=scale, clip=float(clip), max_weight=float(max_weight))
        raise ValueError(
            f"no fixed-point encoding for {members} members at clip {clip}: "
            "even 64 bits leave fewer than 16 bits of precision"
        )

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(np.uint32 if self.bits == 32 else np.uint64)

    def encoded_length(self, parameters: int) -> int:
        """Length of an encoded vector: the parameters, then the weight."""
        return parameters + 1

    def max_members(self) -> int:
        """How many encoded vectors can be summed without wrapping."""
        per_member = max(self.clip, 1.0) * self.scale + 1
        return int((2 ** (self.bits - 1) - 1) // per_member)

    def encode(self, update: np.ndarray, weight: float) -> np.ndarray:
        """``update`` (flat, finite, L2 norm <= clip) times its capped weight, quantised."""
        x = np.asarray(update)
        if x.ndim != 1 or x.dtype.kind not in "fiu":
            raise ValueError("encode a flat (1-D) numeric update")
        if not isinstance(weight, int | float) or not math.isfinite(weight) or weight < 0:
            raise ValueError("weight is a finite number >= 0")
        capped = min(float(weight), self.max_weight) / self.max_weight
        q_weight = float(_stochastic_floor(np.array([capped * self.scale]))[0])
        values = np.empty(x.size + 1, dtype=np.float64)
        # float32 * integer q_weight < 2^27 is exact in float64: the scaling adds no error
        np.multiply(x, q_weight if q_weight > 0 else 1.0, out=values[:-1], dtype=np.float64)
        norm = math.sqrt(float(np.dot(values[:-1], values[:-1])))  # NaN/Inf propagate here
        norm /= q_weight if q_weight > 0 else 1.0
        if not math.isfinite(norm):
            raise ValueError("the update has NaN or Inf values")
        if norm > self.clip * (1 + _CLIP_SLACK):
            raise ValueError(
                f"the update's L2 norm {norm:.6g} exceeds the clip {self.clip}: clip first"
            )
        if q_weight == 0:
            values[:-1] = 0.0
        values[-1] = q_weight
        return _stochastic_floor(values).view(np.uint64).astype(self.dtype, copy=False)

    def decode(self, total: np.ndarray) -> tuple[np.ndarray, float]:
        """``(sum_u w_u x_u, sum_u w_u)`` from the unmasked sum (weights in ``max_weight`` units)."""
        if total.dtype != self.dtype or total.ndim != 1 or total.size < 1:
            raise ValueError(f"decode a 1-D {self.dtype} vector")
        signed = total.view(np.int32 if self.bits == 32 else np.int64).astype(np.float64)
        values = signed * (self.max_weight / self.scale)
        return values[:-1], float(values[-1])

    def check_sum(self, total: np.ndarray, members: int) -> None:
        """Raise :class:`ValueError` unless ``total`` can be the sum of ``members`` encoded
        inputs: its weight within ``[0, members * (scale + 2)]``, every coordinate and the norm
        within what ``members`` clipped updates add up to after rounding.

        A wrong share makes the coordinator remove the wrong mask, which leaves a
        pseudorandom one in the sum: about half its coordinates land past the bound (the
        encoding keeps a factor two of margin), so such a sum is caught here instead of
        becoming the model. An honest sum always passes.
        """
        signed = total.view(np.int32 if self.bits == 32 else np.int64).astype(np.float64)
        values, weight = signed[:-1], float(signed[-1])
        # each rounding may add a step (float64 near 2^45 rounds v + U up): two for the weight
        top = self.scale + 2
        reach = self.clip * (1 + _CLIP_SLACK) * top
        if not 0 <= weight <= members * top:
            raise ValueError(f"its weight is not one {members} members can add up to")
        if values.size and float(np.max(np.abs(values))) > members * (reach + 2):
            raise ValueError(f"a coordinate is past what {members} clipped updates add up to")
        if math.sqrt(float(np.dot(values, values))) > members * (
            reach + 2 * math.sqrt(values.size)
        ):
            raise ValueError(f"its norm is past what {members} clipped updates add up to")

    def error_bound(self, members: int) -> float:
        """Largest error of a decoded weighted-sum coordinate of ``members`` vectors (vs exact).

        One step ``1/scale`` for the coordinate and ``|x_i| <= clip`` steps for the
        weight, per member, plus float64's own rounding (``clip * 2^-50``, which
        matters only at 64 bits, where the step is finer than a double).
        """
        return members * self.max_weight * ((1 + self.clip) / self.scale + self.clip * 2.0**-50)
