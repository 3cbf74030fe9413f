"""Distributed noise shares: the sum without the target's share is fully noised."""

from __future__ import annotations

import math

import pytest

from fedaas.algorithms.secagg import distributed_noise_std, noised_std_without


@pytest.mark.parametrize(("total", "threshold"), [(1.0, 2), (0.7, 6), (3.0, 26)])
def test_threshold_minus_one_shares_carry_the_full_noise(total: float, threshold: int) -> None:
    share = distributed_noise_std(total, threshold)
    assert math.isclose(math.sqrt(threshold - 1) * share, total)
    assert math.isclose(noised_std_without(total, threshold, threshold), total)
    assert noised_std_without(total, threshold, threshold + 5) > total  # more survivors, more noise


def test_unsound_sizes_are_refused() -> None:
    with pytest.raises(ValueError, match="threshold must be >= 2"):
        distributed_noise_std(1.0, 1)
    with pytest.raises(ValueError, match="total_std"):
        distributed_noise_std(float("nan"), 3)
    with pytest.raises(ValueError, match="fewer than the threshold"):
        noised_std_without(1.0, 5, 4)
