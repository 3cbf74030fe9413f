"""The FedProx paper's Synthetic(alpha, beta) federation (Li et al., MLSys 2020, arXiv:1812.06127).

As the authors' generator (``data/synthetic_*/generate_niid.py``) draws it,
with ``alpha`` and ``beta`` standard deviations (not variances), for device k:

- ``n_k = int(lognormal(4, 2)) + 50`` examples (a power law of device sizes);
- ``u_k ~ N(0, alpha)``; ``W_k`` (60 x 10) and ``b_k`` (10) elementwise ``~ N(u_k, 1)``
  (the same ``u_k`` for both): ``alpha`` sets how much the devices' models differ;
- ``B_k ~ N(0, beta)``; ``v_k[j] ~ N(B_k, 1)``: ``beta`` sets how much their inputs differ;
- ``x ~ N(v_k, diag(j^-1.2))``, j = 1..60, and ``y = argmax(softmax(x W_k + b_k))``;
- each device's examples split 90/10 (``int(0.9 n_k)`` train) into train and test.

A property of this definition worth knowing: ``u_k`` adds the same amount,
``u_k * (sum(x) + 1)``, to every class's logit, so it never changes the argmax.
Labels, hence the data, do not depend on ``alpha`` at all; with the same seed,
Synthetic(0, beta) and Synthetic(1, beta) are the same federation here (each
device draws ``W_k = u_k + Z_k`` from the same ``Z_k``). Model heterogeneity
comes from the per-device ``Z_k`` and the input shift ``v_k``; ``beta`` matters.

The IID variant (``iid=True``, the paper's "Synthetic-IID") uses one global
``W, b ~ N(0, 1)`` and ``x ~ N(0, diag(j^-1.2))`` on every device. It is a
separate variant: Synthetic(0, 0) is still non-IID (every device draws its own
``W_k`` and ``v_k``, only their means are 0).

Each device comes from its own random stream (the seed and the device's
index), so device k is the same in a federation of 30 or of 1000 devices, and
devices can be generated one at a time (:func:`synthetic_device`). Pure numpy;
:func:`write_synthetic` writes per-member files through :mod:`fedaas.data.source`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

FEATURES = 60
CLASSES = 10
TRAIN_SHARE = 0.9
_SCALE = np.arange(1, FEATURES + 1, dtype=np.float64) ** -0.6  # sqrt of diag(j^-1.2)
_GLOBAL = 0xFFFF_FFFF  # stream index of the IID variant's shared W, b (above any device index)


@dataclass(frozen=True)
class SyntheticDevice:
    """One device's data: its train and test examples (x float32, y int64)."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def _check(alpha: float, beta: float, seed: int) -> None:
    for name, value in (("alpha", alpha), ("beta", beta)):
        if not (np.isfinite(value) and value >= 0):
            raise ValueError(f"{name} must be a finite number >= 0, got {value}")
    if seed < 0:
        raise ValueError("seed must be non-negative")


def iid_model(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The IID variant's shared ``(W, b)``, ``~ N(0, 1)`` elementwise, for ``seed``."""
    rng = np.random.default_rng([int(seed), _GLOBAL])
    return rng.normal(0.0, 1.0, (FEATURES, CLASSES)), rng.normal(0.0, 1.0, CLASSES)


def device_size(seed: int, index: int) -> int:
    """``n_k = int(lognormal(4, 2)) + 50``: device ``index``'s example count (train + test)."""
    return int(np.random.default_rng([int(seed), int(index)]).lognormal(4.0, 2.0)) + 50


def synthetic_device(
    alpha: float, beta: float, seed: int, index: int, *, iid: bool = False
) -> SyntheticDevice:
    """Device ``index`` of Synthetic(alpha, beta) (or Synthetic-IID) with ``seed``."""
    _check(alpha, beta, seed)
    if index < 0 or index >= _GLOBAL:
        raise ValueError(f"device index must be in [0, {_GLOBAL}), got {index}")
    rng = np.random.default_rng([int(seed), int(index)])
    n = int(rng.lognormal(4.0, 2.0)) + 50  # the first draw: device_size() repeats it
    if iid:
        w, b = iid_model(seed)
        v = np.zeros(FEATURES)
    else:
        u = rng.normal(0.0, alpha)
        big_b = rng.normal(0.0, beta)
        v = rng.normal(big_b, 1.0, FEATURES)
        w = rng.normal(u, 1.0, (FEATURES, CLASSES))
        b = rng.normal(u, 1.0, CLASSES)
    x = v + rng.standard_normal((n, FEATURES)) * _SCALE
    y = np.argmax(x @ w + b, axis=1).astype(np.int64)  # softmax is monotone: same argmax
    x = x.astype(np.float32)
    cut = int(TRAIN_SHARE * n)
    return SyntheticDevice(x[:cut], y[:cut], x[cut:], y[cut:])


def synthetic_federation(
    alpha: float, beta: float, devices: int, seed: int, *, iid: bool = False
) -> tuple[list[tuple[np.ndarray, np.ndarray]], tuple[np.ndarray, np.ndarray]]:
    """Synthetic(alpha, beta) over ``devices`` devices: each device's training split, and
    the held-out set (every device's 10% test split, concatenated in device order: the
    paper reports accuracy over the union of the devices' test data)."""
    if devices < 1:
        raise ValueError("devices must be at least 1")
    parts, xs, ys = [], [], []
    for k in range(devices):
        d = synthetic_device(alpha, beta, seed, k, iid=iid)
        parts.append((d.x_train, d.y_train))
        xs.append(d.x_test)
        ys.append(d.y_test)
    return parts, (np.concatenate(xs), np.concatenate(ys))


def write_synthetic(
    url_dir: str,
    alpha: float,
    beta: float,
    devices: int,
    seed: int,
    *,
    iid: bool = False,
    fmt: str = "npz",
    storage_options: dict[str, Any] | None = None,
) -> list[str]:
    """Write ``client_<k>`` (each device's training split) and ``test`` below ``url_dir``.

    Any location and format :func:`fedaas.data.source.write_dataset` takes (local
    folder, ``s3://``, ``gs://``, ``az://``; npz, parquet, csv). Devices are
    generated and written one at a time (memory: one device and the test splits). Returns the
    members' URLs in device order (the held-out set is the last file, ``test``).
    """
    from fedaas.data.source import write_dataset

    if devices < 1:
        raise ValueError("devices must be at least 1")
    base = url_dir.rstrip("/")
    urls, xs, ys = [], [], []
    for k in range(devices):
        d = synthetic_device(alpha, beta, seed, k, iid=iid)
        urls.append(write_dataset(base, f"client_{k}", d.x_train, d.y_train, fmt, storage_options))
        xs.append(d.x_test)
        ys.append(d.y_test)
    write_dataset(base, "test", np.concatenate(xs), np.concatenate(ys), fmt, storage_options)
    return urls
