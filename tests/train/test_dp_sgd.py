"""Record-level DP: DP-SGD inside a member (fedaas.train.dp_sgd, Opacus + dp-accounting)."""

from __future__ import annotations

import math

import dp_accounting
import numpy as np
import pytest
import torch
from dp_accounting import rdp
from torch import nn

from fedaas.data.dataset import ArrayDataset
from fedaas.spec import TrainSection
from fedaas.train import evaluate, train_local
from fedaas.train.dp_sgd import (
    dp_sgd_schedule,
    poisson_lot,
    record_epsilon_after,
    train_local_dp,
)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # tiny models: a second intra-op thread only adds spin-waiting (badly so on a busy machine)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _blobs(n: int, features: int, seed: int, gap: float = 3.0) -> ArrayDataset:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    x = rng.standard_normal((n, features)) + gap * (2 * y[:, None] - 1) / math.sqrt(features)
    return ArrayDataset(x.astype(np.float32), y.astype(np.int64))


def _mlp(features: int, classes: int = 2, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(features, 16), nn.ReLU(), nn.Linear(16, classes))


def _flat(module: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1).clone() for p in module.parameters()])


def _direct_rdp_epsilon(q: float, z: float, steps: int, delta: float) -> float:
    event = dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(z)), steps
    )
    return rdp.RdpAccountant().compose(event).get_epsilon(delta)


# ------------------------------------------------------------- the module


def test_state_dict_names_and_shapes_unchanged_and_no_opacus_leftovers():
    data = _blobs(200, 5, seed=1)
    module = _mlp(5)
    before = {k: v.clone() for k, v in module.state_dict().items()}
    metrics = train_local_dp(
        module,
        data,
        TrainSection(batch_size=20, lr=0.1, epochs=1),
        seed=3,
        noise_multiplier=1.0,
        max_grad_norm=1.0,
        delta=1e-5,
    )
    after = module.state_dict()
    assert list(after) == list(before)
    assert all(after[k].shape == before[k].shape for k in before)
    assert any(not torch.equal(after[k], before[k]) for k in before)  # it trained
    assert set(metrics) == {"train_loss", "train_accuracy", "record_epsilon"}
    assert all(math.isfinite(v) for v in metrics.values())
    for p in module.parameters():  # no grad_sample / summed_grad / hooks left behind
        assert not hasattr(p, "grad_sample") and not hasattr(p, "summed_grad")
        assert p.grad is None
    for m in module.modules():
        assert not m._forward_hooks and not m._backward_hooks
    module(torch.zeros(4, 5)).sum().backward()  # a plain module again
    assert not hasattr(next(module.parameters()), "grad_sample")


def test_per_record_clipping_bounds_one_outliers_influence():
    # q = 1 (batch >= n) and z = 0: one deterministic full-batch step. Replacing
    # one record by an outlier moves the sum of clipped gradients by at most 2C,
    # so the SGD step by at most lr * 2C / n.
    n, features, lr, clip = 50, 4, 0.5, 0.1
    base = _blobs(n, features, seed=2)
    x_out, y_out = base.x.copy(), base.y.copy()
    x_out[0] = 1e4
    y_out[0] = 1 - y_out[0]
    outlier = ArrayDataset(x_out, y_out)
    cfg = TrainSection(batch_size=n, lr=lr, epochs=1)
    start = _mlp(features, seed=5)
    moved = {}
    for name, data in (("base", base), ("outlier", outlier)):
        module = _mlp(features, seed=5)
        kwargs = {"noise_multiplier": 0.0, "max_grad_norm": clip, "delta": 1e-5}
        metrics = train_local_dp(module, data, cfg, seed=0, **kwargs)
        assert metrics["record_epsilon"] == math.inf  # no noise, no privacy
        moved[name] = _flat(module) - _flat(start)
        assert float(moved[name].norm()) <= lr * clip * (1 + 1e-4)  # every record clipped to C
    difference = float((moved["outlier"] - moved["base"]).norm())
    assert difference <= 2 * lr * clip / n * (1 + 1e-4)
    # without clipping the same outlier dominates the step
    plain = _mlp(features, seed=5)
    plain_base = _mlp(features, seed=5)
    train_local(plain, outlier, cfg, seed=0)
    train_local(plain_base, base, cfg, seed=0)
    assert float((_flat(plain) - _flat(plain_base)).norm()) > 100 * difference


def test_noise_has_the_dp_sgd_scale():
    # Zero features: every record's weight gradient is 0, so the full-batch step
    # on the weights is -lr * noise / n with noise ~ N(0, (z*C)^2) per coordinate.
    n, features, classes, lr, z, clip = 40, 50, 10, 1.0, 2.0, 0.5
    data = ArrayDataset(np.zeros((n, features), np.float32), np.arange(n) % classes)
    torch.manual_seed(0)
    module = nn.Sequential(nn.Linear(features, classes))
    w0 = module[0].weight.detach().clone()
    cfg = TrainSection(batch_size=n, lr=lr, epochs=1)
    train_local_dp(module, data, cfg, seed=0, noise_multiplier=z, max_grad_norm=clip, delta=1e-5)
    step = (module[0].weight.detach() - w0).reshape(-1).double().numpy()
    expected = lr * z * clip / n
    assert abs(step.mean()) < 5 * expected / math.sqrt(step.size)
    assert step.std() == pytest.approx(expected, rel=0.15)


def test_secure_noise_differs_between_runs_and_reproducible_mode_repeats():
    data = _blobs(120, 4, seed=3)
    cfg = TrainSection(batch_size=30, lr=0.2, epochs=1)

    def run(secure: bool, seed: int = 7) -> torch.Tensor:
        module = _mlp(4, seed=11)
        train_local_dp(
            module,
            data,
            cfg,
            seed,
            noise_multiplier=1.0,
            max_grad_norm=1.0,
            delta=1e-5,
            secure=secure,
        )
        return _flat(module)

    assert not torch.equal(run(True), run(True))  # same seed, OS randomness
    assert torch.equal(run(False), run(False))  # reproducible mode: NOT private
    assert not torch.equal(run(False, 7), run(False, 8))


# ------------------------------------------------------------- accounting


def test_record_epsilon_matches_dp_accounting():
    n, batch, epochs, z, delta = 500, 25, 2, 1.1, 1e-5
    q, steps = dp_sgd_schedule(n, batch, epochs)
    assert (q, steps) == (0.05, 40)
    module = nn.Sequential(nn.Linear(3, 2))
    metrics = train_local_dp(
        module,
        _blobs(n, 3, seed=4),
        TrainSection(batch_size=batch, epochs=epochs),
        seed=0,
        noise_multiplier=z,
        max_grad_norm=1.0,
        delta=delta,
    )
    direct = _direct_rdp_epsilon(q, z, steps, delta)
    assert metrics["record_epsilon"] == pytest.approx(direct, rel=1e-9)
    # cumulative over rounds: all rounds' steps compose
    assert record_epsilon_after(5, steps, q, z, delta) == pytest.approx(
        _direct_rdp_epsilon(q, z, 5 * steps, delta), rel=1e-9
    )
    assert record_epsilon_after(1, steps, q, z, delta) < record_epsilon_after(2, steps, q, z, delta)
    assert record_epsilon_after(0, steps, q, z, delta) == 0.0
    assert record_epsilon_after(3, steps, q, 0.0, delta) == math.inf
    # the tighter PLD accountant never reports more than RDP
    pld = record_epsilon_after(2, steps, q, z, delta, accountant="pld")
    assert 0 < pld <= record_epsilon_after(2, steps, q, z, delta)


def test_schedule_full_batch_when_batch_exceeds_data():
    assert dp_sgd_schedule(10, 32, 3) == (1.0, 3)
    assert dp_sgd_schedule(101, 10, 1) == (10 / 101, 11)
    with pytest.raises(ValueError):
        dp_sgd_schedule(0, 10, 1)


def test_poisson_lots_are_bernoulli_samples():
    rng = np.random.default_rng(0)

    def uniform(count: int) -> np.ndarray:
        return 1.0 - rng.random(count)

    n, q, trials = 300, 0.1, 2000
    counts = np.zeros(n)
    sizes = []
    for _ in range(trials):
        lot = poisson_lot(n, q, uniform)
        assert np.all(np.diff(lot) > 0) and (lot.size == 0 or (lot[0] >= 0 and lot[-1] < n))
        counts[lot] += 1
        sizes.append(lot.size)
    assert np.mean(sizes) == pytest.approx(n * q, rel=0.02)
    assert np.var(sizes) == pytest.approx(n * q * (1 - q), rel=0.15)
    # every record included with probability q (binomial, 5 sigma)
    sigma = math.sqrt(trials * q * (1 - q))
    assert np.all(np.abs(counts - trials * q) < 5 * sigma)
    assert np.array_equal(poisson_lot(7, 1.0, uniform), np.arange(7))
    # small q, large n: the gap sampler needs several refills of its buffer
    lot = poisson_lot(1_000_000, 1e-3, uniform)
    assert 800 < lot.size < 1200


# --------------------------------------------------------------- learning


@pytest.mark.parametrize("optimizer, mu", [("sgd", 0.0), ("adam", 0.1)])
def test_dp_sgd_still_learns_an_easy_task(optimizer, mu):
    train, test = _blobs(2000, 10, seed=5), _blobs(1000, 10, seed=6)
    module = _mlp(10, seed=1)
    lr = 0.5 if optimizer == "sgd" else 0.02
    cfg = TrainSection(optimizer=optimizer, lr=lr, momentum=0.0, batch_size=100, epochs=2, mu=mu)
    metrics = train_local_dp(
        module, train, cfg, seed=0, noise_multiplier=1.0, max_grad_norm=1.0, delta=1e-5
    )
    assert evaluate(module, test).accuracy > 0.85
    assert metrics["train_accuracy"] > 0.7
    assert 0 < metrics["record_epsilon"] < 10


class _Streamed:
    """A dataset that only streams batches (no .x/.y), as StreamingDataset."""

    def __init__(self, data: ArrayDataset) -> None:
        self._data = data

    @property
    def num_examples(self) -> int:
        return self._data.num_examples

    def batches(self, batch_size, rng=None):
        return self._data.batches(batch_size, rng)


def test_streaming_dataset_is_materialized_and_buffers_rejected():
    data = _blobs(100, 3, seed=8)
    module = nn.Sequential(nn.Linear(3, 2))
    kwargs = {"noise_multiplier": 0.5, "max_grad_norm": 1.0, "delta": 1e-5}
    metrics = train_local_dp(module, _Streamed(data), TrainSection(batch_size=10), 0, **kwargs)
    assert math.isfinite(metrics["train_loss"])
    with_buffers = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    with pytest.raises(ValueError, match="DP-SGD"):
        train_local_dp(with_buffers, data, TrainSection(batch_size=10), 0, **kwargs)
    with pytest.raises(ValueError, match="noise_multiplier"):
        train_local_dp(module, data, TrainSection(), 0, **{**kwargs, "noise_multiplier": -1.0})
