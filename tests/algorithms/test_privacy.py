"""Clipping, noise sources and calibration, OU noise, adaptive clipping (algorithms.privacy)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import safetensors.numpy
from hypothesis import given, settings
from hypothesis import strategies as st

from fedaas.algorithms.privacy import (
    OUNoise,
    ReproducibleNoise,
    adjusted_noise_multiplier,
    clip_update,
    count_noise_std,
    gaussian_noise,
    global_norm,
    next_clip_norm,
    noise_std,
    noised_unclipped_fraction,
    reproducible_noise_source,
    secure_noise_source,
)

# ------------------------------------------------------------------ clipping


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    sizes=st.lists(st.integers(1, 50), min_size=1, max_size=4),
    scale=st.floats(1e-6, 1e4),
    norm=st.floats(1e-3, 1e3),
    dtype=st.sampled_from([np.float32, np.float64]),
)
def test_clipped_update_never_exceeds_norm_and_keeps_direction(seed, sizes, scale, norm, dtype):
    rng = np.random.default_rng(seed)
    update = {f"t{i}": (scale * rng.standard_normal(n)).astype(dtype) for i, n in enumerate(sizes)}
    original = {k: v.copy() for k, v in update.items()}
    clipped, before = clip_update(update, norm)
    flat = np.concatenate([v.astype(np.float64) for v in update.values()])
    assert before == pytest.approx(np.linalg.norm(flat), rel=1e-12)
    assert global_norm(clipped) <= norm
    for name in update:
        assert clipped[name].dtype == dtype
        np.testing.assert_array_equal(update[name], original[name])  # input untouched
    if before <= norm:
        for name in update:
            np.testing.assert_array_equal(clipped[name], update[name])
    else:
        assert global_norm(clipped) == pytest.approx(norm, rel=1e-5)
        ratio = np.concatenate([v.astype(np.float64) for v in clipped.values()]) / flat
        np.testing.assert_allclose(ratio, norm / before, rtol=1e-5)


def test_clip_rejects_bad_norm_and_non_finite_update():
    with pytest.raises(ValueError, match="clip norm"):
        clip_update({"w": np.ones(3)}, 0.0)
    with pytest.raises(ValueError, match="non-finite"):
        clip_update({"w": np.array([1.0, np.nan])}, 1.0)
    clipped, before = clip_update({"w": np.zeros(4, dtype=np.float32)}, 1.0)
    assert before == 0.0 and not clipped["w"].any()


# ------------------------------------------------------------- noise sources


def test_secure_noise_is_standard_normal_and_fresh():
    source = secure_noise_source()
    assert source.private
    draws = source.standard_normal((400_001,))  # odd size exercises the Box-Muller tail
    assert draws.shape == (400_001,) and draws.dtype == np.float64
    se = 1 / math.sqrt(draws.size)
    assert abs(draws.mean()) < 6 * se
    assert draws.std() == pytest.approx(1.0, abs=6 * se)
    assert np.mean(draws**4) == pytest.approx(3.0, abs=0.1)  # Gaussian kurtosis (SE 0.016)
    assert np.mean(np.abs(draws) > 1.959964) == pytest.approx(0.05, abs=0.003)
    assert not np.array_equal(source.standard_normal((8,)), source.standard_normal((8,)))
    assert source.standard_normal((3, 0, 2)).shape == (3, 0, 2)


def test_reproducible_noise_repeats_is_marked_not_private_and_resumes():
    a, b = reproducible_noise_source(7), reproducible_noise_source(7)
    assert not a.private
    np.testing.assert_array_equal(a.standard_normal((5,)), b.standard_normal((5,)))
    other_stream = reproducible_noise_source(7, stream=1).standard_normal((5,))
    assert not np.array_equal(a.standard_normal((5,)), other_stream)
    state = json.loads(json.dumps(a.state_dict()))
    expected = a.standard_normal((6,))
    np.testing.assert_array_equal(
        ReproducibleNoise.from_state(state).standard_normal((6,)), expected
    )


@pytest.mark.parametrize("placement", ["central", "distributed", "local"])
def test_gaussian_noise_std_matches_calibration(placement):
    z, clip, members, size = 1.3, 0.5, 16, 40_000
    source = secure_noise_source()
    std = noise_std(z, clip, placement, members)
    parties = members if placement == "distributed" else 1
    total = sum(
        gaussian_noise({"w": (size,), "b": (4, 5)}, std, source)["w"].astype(np.float64)
        for _ in range(parties)
    )
    # central and distributed: the sum carries N(0, (z*S)^2); local: each member's update does.
    assert total.std() == pytest.approx(z * clip, rel=0.03)
    assert abs(total.mean()) < 6 * z * clip / math.sqrt(size)


def test_noise_std_values_and_errors():
    assert noise_std(2.0, 0.5, "central") == 1.0
    assert noise_std(2.0, 0.5, "local", members=100) == 1.0
    assert noise_std(2.0, 0.5, "distributed", members=4) == pytest.approx(0.5)
    noise = gaussian_noise({"w": (2, 3)}, 1.0, secure_noise_source())
    assert noise["w"].shape == (2, 3) and noise["w"].dtype == np.float32
    with pytest.raises(ValueError):
        noise_std(1.0, 1.0, "everywhere")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        gaussian_noise({"w": (2,)}, -1.0, secure_noise_source())


# ------------------------------------------------------------------ OU noise


@pytest.mark.parametrize("theta", [0.7, -0.5])
def test_ou_noise_has_lag_one_correlation_theta_and_variance_sigma_squared(theta):
    sigma, size = 2.0, 200_000
    ou = OUNoise({"w": (size,)}, sigma, theta)
    steps = [ou.next(secure_noise_source())["w"] for _ in range(6)]
    for z in (steps[0], steps[-1]):
        assert z.var() == pytest.approx(sigma**2, rel=0.03)  # stationary from round 1
    for lag in (1, 2):
        corr = np.corrcoef(steps[3], steps[3 + lag])[0, 1]
        assert corr == pytest.approx(theta**lag, abs=0.01)


def _round_trip(ou: OUNoise) -> OUNoise:
    tensors, meta = ou.state_dict()
    data = safetensors.numpy.save(tensors) if tensors else None
    loaded = safetensors.numpy.load(data) if data else {}
    return OUNoise.from_state(loaded, json.loads(json.dumps(meta)))


def test_ou_state_round_trips_and_continues_the_same_process():
    shapes = {"w": (3, 4), "b": (5,)}
    ou, source = OUNoise(shapes, 0.8, 0.6), reproducible_noise_source(11)
    assert _round_trip(ou).step == 0
    for _ in range(3):
        ou.next(source)
    restored = _round_trip(ou)
    restored_source = ReproducibleNoise.from_state(json.loads(json.dumps(source.state_dict())))
    assert (restored.step, restored.sigma, restored.theta) == (3, 0.8, 0.6)
    for _ in range(2):
        expected, got = ou.next(source), restored.next(restored_source)
        for name in shapes:
            np.testing.assert_array_equal(got[name], expected[name])


def test_restored_ou_state_keeps_the_correlation_across_a_restart():
    ou = OUNoise({"w": (100_000,)}, 1.0, 0.8)
    before = ou.next(secure_noise_source())["w"]
    after = _round_trip(ou).next(secure_noise_source())["w"]
    assert np.corrcoef(before, after)[0, 1] == pytest.approx(0.8, abs=0.01)


def test_ou_rejects_bad_parameters_and_bad_state():
    with pytest.raises(ValueError, match="theta"):
        OUNoise({"w": (2,)}, 1.0, 1.0)
    with pytest.raises(ValueError, match="sigma"):
        OUNoise({"w": (2,)}, -1.0, 0.5)
    ou = OUNoise({"w": (2,)}, 1.0, 0.5)
    ou.next(secure_noise_source())
    tensors, meta = ou.state_dict()
    with pytest.raises(ValueError, match="format"):
        OUNoise.from_state(tensors, {**meta, "format": "other"})
    with pytest.raises(ValueError, match="match"):
        OUNoise.from_state({}, meta)
    with pytest.raises(ValueError, match="non-finite"):
        OUNoise.from_state({"w": np.array([np.inf, 0.0])}, meta)
    with pytest.raises(ValueError, match="shape"):
        OUNoise.from_state({"w": np.zeros(3)}, meta)


# --------------------------------------------------------- adaptive clipping


def test_adjusted_noise_multiplier_formula_and_impossible_case():
    sigma_b = count_noise_std(100)
    assert sigma_b == 5.0
    z_delta = adjusted_noise_multiplier(1.0, sigma_b)
    assert z_delta == pytest.approx((1 - 1 / 100) ** -0.5)
    # The two Gaussian mechanisms together cost exactly one with multiplier z.
    assert z_delta**-2 + (2 * sigma_b) ** -2 == pytest.approx(1.0)
    with pytest.raises(ValueError, match="impossible"):
        adjusted_noise_multiplier(2.0, 1.0)  # needs sigma_b > z / 2


def test_adaptive_clipping_tracks_the_target_quantile():
    rng = np.random.default_rng(0)
    source = reproducible_noise_source(3)
    clip, m = 0.01, 200
    for _ in range(300):
        norms = rng.lognormal(mean=0.0, sigma=0.5, size=m)  # median 1
        unclipped = int(np.sum(norms <= clip))
        b = noised_unclipped_fraction(unclipped, m, m, count_noise_std(m), source)
        clip = next_clip_norm(clip, b, target_quantile=0.5, lr=0.2)
    assert clip == pytest.approx(1.0, rel=0.15)
    assert next_clip_norm(1.0, 0.9) < 1.0 < next_clip_norm(1.0, 0.1)


def test_noised_unclipped_fraction_is_unbiased_with_the_right_noise():
    source = secure_noise_source()
    draws = np.array([noised_unclipped_fraction(30, 100, 100, 5.0, source) for _ in range(4000)])
    assert draws.mean() == pytest.approx(0.3, abs=0.005)
    assert draws.std() == pytest.approx(5.0 / 100, rel=0.07)
    with pytest.raises(ValueError):
        noised_unclipped_fraction(5, 3, 10, 1.0, source)
