"""Distributed DP noise under secure aggregation: how much each member adds.

With ``placement = "distributed"`` every member adds a share of the
Gaussian noise to its own update and the coordinator sees only the sum
(secure aggregation), so the released sum carries the sum of the shares.
The privacy of a target member must not rely on its own share (it is the
one the adversary wants to learn about, and a dropout removes its share
along with its input), and the sum is recovered from at least
``threshold`` members. Each share is therefore ``N(0, total_std^2 /
(threshold - 1))``: any ``threshold - 1`` shares other than the target's
already carry the full variance ``total_std^2`` (Kairouz, Liu & Steinke,
"The Distributed Discrete Gaussian Mechanism for Federated Learning with
Secure Aggregation", ICML 2021, discuss this sizing).
"""

from __future__ import annotations

import math


def distributed_noise_std(total_std: float, threshold: int) -> float:
    """Standard deviation of one member's Gaussian noise share for a fully noised sum."""
    if not isinstance(total_std, int | float) or not math.isfinite(total_std) or total_std < 0:
        raise ValueError("total_std is a finite number >= 0")
    if not isinstance(threshold, int) or threshold < 2:
        raise ValueError(
            "threshold must be >= 2: with fewer, the sum without the target's own share "
            "could carry no noise at all"
        )
    return total_std / math.sqrt(threshold - 1)


def noised_std_without(total_std: float, threshold: int, survivors: int) -> float:
    """Standard deviation of the noise in a sum of ``survivors`` shares, the target's excluded."""
    if survivors < threshold:
        raise ValueError(f"{survivors} survivors, fewer than the threshold {threshold}")
    return distributed_noise_std(total_std, threshold) * math.sqrt(survivors - 1)
