"""Fixed-point encoding: no wrap at the bound, error within the documented bound, unbiased."""

from __future__ import annotations

import numpy as np
import pytest

from fedaas.algorithms.secagg import FixedPoint


def _unit(rng: np.random.Generator, d: int, norm: float) -> np.ndarray:
    v = rng.normal(size=d)
    return v / np.linalg.norm(v) * norm


@pytest.mark.parametrize(
    ("members", "clip", "bits"), [(10, 1.0, 32), (50, 5.0, 32), (100_000, 1.0, 64), (10, 1e5, 64)]
)
def test_modulus_is_32_bits_where_the_sum_allows(members: int, clip: float, bits: int) -> None:
    enc = FixedPoint.for_round(members, clip=clip, max_weight=1.0)
    assert enc.bits == bits
    assert enc.max_members() >= members
    assert np.log2(enc.scale) == int(np.log2(enc.scale))  # a power of two: scaling is exact


@pytest.mark.parametrize(("members", "clip"), [(10, 1.0), (50, 2.0), (100_000, 1.0)])
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_the_extreme_sum_does_not_wrap(members: int, clip: float, sign: float) -> None:
    """Every member at the clip on one coordinate, full weight: the worst case for wrapping."""
    enc = FixedPoint.for_round(members, clip=clip, max_weight=50.0)
    x = np.zeros(3)
    x[1] = sign * clip
    one = enc.encode(x, 80.0)  # above max_weight: capped to 50
    total = one * np.array(members, dtype=enc.dtype)  # the same vector ``members`` times, mod 2^k
    weighted, weight = enc.decode(total)
    assert weight == pytest.approx(members * 50.0, rel=1e-12)
    assert abs(weighted[1] - sign * clip * 50.0 * members) <= enc.error_bound(members)
    enc.check_sum(total, members)  # the worst honest sum is a possible one


@pytest.mark.parametrize("bits", [32, 64])
def test_a_sum_with_a_mask_left_in_is_impossible(bits: int) -> None:
    """What the coordinator gets when it removes a wrong mask: uniform integers. The weight,
    a coordinate or the norm is past what the members' clipped inputs add up to."""
    members = 10 if bits == 32 else 100_000
    enc = FixedPoint.for_round(members, clip=1.0, max_weight=50.0)
    rng = np.random.default_rng(5)
    for _ in range(100):  # rounding is random: at 64 bits float64 may round up a step more
        honest = sum(
            (enc.encode(v / np.linalg.norm(v), 50.0) for v in rng.normal(size=(10, 40))),
            start=np.zeros(41, enc.dtype),
        )
        enc.check_sum(honest, 10)
    for seed in range(20):
        mask = np.random.default_rng(seed).integers(0, 2**bits, 41, dtype=np.uint64)
        with pytest.raises(ValueError, match=f"{members}|10"):
            enc.check_sum(honest + mask.astype(enc.dtype), 10)
    with pytest.raises(ValueError, match="weight"):
        enc.check_sum(honest, 1)  # more weight than one member can carry


@pytest.mark.parametrize(
    ("members", "dtype"), [(10, np.float64), (50, np.float32), (200_000, np.float32)]
)
def test_decoded_sum_is_within_the_error_bound(members: int, dtype: type) -> None:
    rng = np.random.default_rng(1)
    enc = FixedPoint.for_round(members, clip=1.0, max_weight=500.0)
    count = min(members, 50)  # at 200k members (64 bits) sum 50 of them: the bound still holds
    xs = [_unit(rng, 5000, rng.uniform(0, 1.0)).astype(dtype) for _ in range(count)]
    ws = rng.integers(1, 500, size=count).astype(float)
    total = np.zeros(5001, dtype=enc.dtype)
    for x, w in zip(xs, ws, strict=True):
        total += enc.encode(x, float(w))
    weighted, weight = enc.decode(total)
    exact = sum(w * x.astype(np.float64) for x, w in zip(xs, ws, strict=True))
    assert np.max(np.abs(weighted - exact)) <= enc.error_bound(count)
    assert abs(weight - ws.sum()) <= count * enc.max_weight / enc.scale + 1e-9
    mean = weighted / weight
    assert np.max(np.abs(mean - exact / ws.sum())) < 1e-6


def test_stochastic_rounding_is_unbiased() -> None:
    """A value 0.3 steps past the grid rounds up 30% of the time, so the mean is exact."""
    enc = FixedPoint(bits=32, scale=1024.0, clip=1.0, max_weight=1.0)
    d = 200_000
    x = np.full(d, 0.3 / 1024)  # norm 0.13 < clip
    q = enc.encode(x, 1.0).view(np.int32)[:-1].astype(float)
    assert set(np.unique(q)) == {0.0, 1.0}
    assert abs(q.mean() - 0.3) < 4 * np.sqrt(0.21 / d)


def test_weight_travels_inside_the_vector() -> None:
    enc = FixedPoint.for_round(10, clip=1.0, max_weight=100.0)
    encoded = enc.encode(np.zeros(4), 37.0)
    assert encoded.shape == (enc.encoded_length(4),) and encoded.dtype == np.uint32
    assert enc.decode(encoded)[1] == pytest.approx(37.0, abs=100.0 / enc.scale)


@pytest.mark.parametrize(
    ("update", "weight", "message"),
    [
        (np.array([2.0, 0.0]), 1.0, "exceeds the clip"),
        (np.array([np.nan, 0.0]), 1.0, "NaN"),
        (np.zeros((2, 2)), 1.0, "flat"),
        (np.zeros(2), -1.0, "weight"),
        (np.zeros(2), float("inf"), "weight"),
    ],
)
def test_bad_updates_are_refused(update: np.ndarray, weight: float, message: str) -> None:
    enc = FixedPoint.for_round(10, clip=1.0, max_weight=10.0)
    with pytest.raises(ValueError, match=message):
        enc.encode(update, weight)


def test_bad_parameters_are_refused() -> None:
    with pytest.raises(ValueError, match="bits"):
        FixedPoint(bits=16, scale=1.0, clip=1.0, max_weight=1.0)
    with pytest.raises(ValueError, match="members"):
        FixedPoint.for_round(0, clip=1.0, max_weight=1.0)
    with pytest.raises(ValueError, match="no fixed-point encoding"):
        FixedPoint.for_round(2**40, clip=1e6, max_weight=1.0)
    with pytest.raises(ValueError, match="decode"):
        FixedPoint.for_round(10, clip=1.0, max_weight=1.0).decode(np.zeros(3, dtype=np.uint64))
