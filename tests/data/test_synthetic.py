"""The FedProx paper's Synthetic(alpha, beta) generator: sizes, distributions, determinism."""

from __future__ import annotations

import numpy as np
import pytest

from fedaas.data.source import read_npz
from fedaas.data.synthetic import (
    CLASSES,
    FEATURES,
    device_size,
    iid_model,
    synthetic_device,
    synthetic_federation,
    write_synthetic,
)


def test_shapes_types_and_the_90_10_split() -> None:
    parts, (x_test, y_test) = synthetic_federation(1.0, 1.0, 30, seed=0)
    assert len(parts) == 30
    tests = 0
    for k, (x, y) in enumerate(parts):
        n = device_size(0, k)
        assert n >= 50
        assert x.shape == (int(0.9 * n), FEATURES) and x.dtype == np.float32
        assert y.shape == (int(0.9 * n),) and y.dtype == np.int64
        assert y.min() >= 0 and y.max() < CLASSES
        tests += n - int(0.9 * n)
    assert x_test.shape == (tests, FEATURES) and y_test.shape == (tests,)
    assert x_test.dtype == np.float32 and y_test.dtype == np.int64


def test_device_sizes_follow_the_lognormal_4_2_power_law() -> None:
    sizes = np.array([device_size(7, k) for k in range(4000)])
    assert sizes.min() >= 50
    extra = sizes - 50  # int(lognormal(4, 2)): median e^4, e^6 at one sigma
    assert abs(np.median(extra) - np.exp(4)) < 10
    assert 0.13 < (extra > np.exp(6)).mean() < 0.19
    assert 0.13 < (extra < np.exp(2)).mean() < 0.19
    assert sizes.max() > 20 * np.median(sizes)  # heavy tail: a few devices dominate


def test_inputs_have_covariance_diag_j_to_the_minus_1_2() -> None:
    big = next(k for k in range(500) if device_size(3, k) > 3000)
    d = synthetic_device(1.0, 1.0, 3, big)
    x = np.concatenate([d.x_train, d.x_test]).astype(np.float64)
    expected = np.arange(1, FEATURES + 1) ** -1.2
    np.testing.assert_allclose(x.var(axis=0), expected, rtol=0.15)
    corr = np.corrcoef(x[:, :5].T)
    assert np.abs(corr - np.eye(5)).max() < 0.1  # diagonal: features independent


def test_beta_spreads_the_devices_input_means() -> None:
    def spread(beta: float) -> float:
        parts, _ = synthetic_federation(0.0, beta, 40, seed=5)
        return float(np.std([x.mean() for x, _ in parts]))

    # mean over 60 features of v_k ~ N(B_k, 1): std ~ sqrt(beta^2 + 1/60)
    assert spread(0.0) < 0.3
    assert 0.6 < spread(1.0) < 1.5
    assert spread(3.0) > 2.0


def test_alpha_shifts_every_logit_alike_so_labels_do_not_depend_on_it() -> None:
    # u_k enters W_k and b_k as a common offset: argmax(x W_k + b_k) is unchanged
    for alpha in (0.5, 1.0, 5.0):
        a = synthetic_device(alpha, 1.0, 11, 2)
        b = synthetic_device(0.0, 1.0, 11, 2)
        np.testing.assert_array_equal(a.y_train, b.y_train)
        np.testing.assert_array_equal(a.x_train, b.x_train)


def test_iid_variant_shares_one_model_and_zero_mean_inputs() -> None:
    w, b = iid_model(2)
    iid, _ = synthetic_federation(0.0, 0.0, 30, seed=2, iid=True)
    for x, y in iid:  # one linear argmax labels every device
        np.testing.assert_array_equal(y, np.argmax(x.astype(np.float64) @ w + b, axis=1))
    x = np.concatenate([x for x, _ in iid]).astype(np.float64)
    assert np.abs(x.mean(axis=0)).max() < 0.1
    # Synthetic(0, 0) is not the IID variant: each device has its own W_k, v_k
    niid, _ = synthetic_federation(0.0, 0.0, 30, seed=2)
    agree = [np.mean(y == np.argmax(x.astype(np.float64) @ w + b, axis=1)) for x, y in niid]
    assert np.mean(agree) < 0.3
    means = [x.mean() for x, _ in niid]
    assert np.std(means) > 0.05


def test_deterministic_and_a_device_does_not_depend_on_the_federation_size() -> None:
    small, (xs, _) = synthetic_federation(1.0, 1.0, 4, seed=9)
    again, (xa, _) = synthetic_federation(1.0, 1.0, 4, seed=9)
    large, _ = synthetic_federation(1.0, 1.0, 7, seed=9)
    other, _ = synthetic_federation(1.0, 1.0, 4, seed=10)
    np.testing.assert_array_equal(xs, xa)
    for (x1, y1), (x2, y2), (x3, y3) in zip(small, again, large, strict=False):
        np.testing.assert_array_equal(x1, x2)
        np.testing.assert_array_equal(y1, y2)
        np.testing.assert_array_equal(x1, x3)
        np.testing.assert_array_equal(y1, y3)
    assert not np.array_equal(small[0][0][:45], other[0][0][:45])


def test_written_members_read_back(tmp_path) -> None:
    urls = write_synthetic(str(tmp_path), 1.0, 1.0, 3, seed=4)
    assert urls == [str(tmp_path / f"client_{k}.npz") for k in range(3)]
    parts, (x_test, y_test) = synthetic_federation(1.0, 1.0, 3, seed=4)
    for url, (x, y) in zip(urls, parts, strict=True):
        rx, ry = read_npz(url)
        np.testing.assert_array_equal(rx, x)
        np.testing.assert_array_equal(ry, y)
    rx, ry = read_npz(str(tmp_path / "test.npz"))
    np.testing.assert_array_equal(rx, x_test)
    np.testing.assert_array_equal(ry, y_test)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((-1.0, 1.0, 3, 0), "alpha must be a finite number >= 0"),
        ((1.0, float("nan"), 3, 0), "beta must be a finite number >= 0"),
        ((1.0, 1.0, 0, 0), "devices must be at least 1"),
        ((1.0, 1.0, 3, -1), "seed must be non-negative"),
    ],
)
def test_bad_arguments(args: tuple, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        synthetic_federation(*args)
