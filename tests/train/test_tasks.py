"""The training loop's tasks and options: losses, weights, clipping, decay, devices, precision.

Everything runs on the CPU here; the tests marked ``gpu`` run the same code on
CUDA where a GPU exists and are skipped elsewhere.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from fedaas.data.dataset import ArrayDataset
from fedaas.models import build_model, get_state, set_state
from fedaas.spec import JobSpec, parse_spec
from fedaas.train import evaluate, train_local, train_local_dp
from fedaas.train.device import DeviceError, resolve_device, to_device

CPU = torch.device("cpu")
needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU here")


def _spec(task: str, train: dict[str, Any] | None = None, **evaluation: Any) -> JobSpec:
    data: dict[str, Any] = {"features": 8} | ({} if task == "regression" else {"classes": 2})
    if task == "classification":
        data["classes"] = 3
    return parse_spec(
        {
            "job": {"name": "t", "rounds": 4},
            "model": {"name": "mlp", "hidden": [16]},
            "data": data,
            "train": {"task": task, "optimizer": "adam", "lr": 0.02, **(train or {})},
            "evaluation": evaluation,
        }
    )


def _data(task: str, n: int = 800, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 8)).astype(np.float32)
    if task == "regression":
        return x, (x @ np.linspace(-1, 1, 8) + 0.1 * rng.normal(size=n)).astype(np.float32)
    if task == "binary":
        return x, (x[:, 0] + x[:, 1] + 0.3 * rng.normal(size=n) > 0.8).astype(np.int64)
    return x, np.digitize(x[:, 0] + x[:, 1], [-0.7, 0.7]).astype(np.int64)


def _trained(spec: JobSpec, rounds: int = 4, seed: int = 0) -> tuple[torch.nn.Module, ArrayDataset]:
    data = ArrayDataset.checked(*_data(spec.train.task, seed=seed), spec.data)
    module = build_model(spec.model, spec.data, seed=0, task=spec.train.task)
    for r in range(1, rounds + 1):
        train_local(module, data, spec.train, seed=[seed, r], round=r, rounds=rounds)
    return module, data


@pytest.mark.parametrize(
    ("task", "metric", "floor"),
    [("binary", "auroc", 0.95), ("regression", "r2", 0.9), ("classification", "f1", 0.8)],
)
def test_each_task_learns_with_its_loss(task: str, metric: str, floor: float) -> None:
    spec = _spec(task, metrics=[metric])
    module, data = _trained(spec)
    result = evaluate(module, data, cfg=spec.train, classes=spec.data.classes, metrics=(metric,))
    assert result.metrics[metric] > floor, result
    if task == "regression":
        assert np.isnan(result.accuracy) and result.states["regression"][0] == len(data.y)
    out = module(torch.from_numpy(data.x[:3]))
    assert out.shape == (3, 3 if task == "classification" else 1)  # binary: ONE logit


def test_class_weights_and_pos_weight_shift_the_decisions() -> None:
    def positives(spec: JobSpec) -> int:
        module, data = _trained(spec)
        return int((module(torch.from_numpy(data.x))[:, 0] > 0).sum())

    plain, heavy = positives(_spec("binary")), positives(_spec("binary", {"pos_weight": 20.0}))
    assert heavy > plain * 1.3, (plain, heavy)

    def predicted_as_2(spec: JobSpec) -> int:
        module, data = _trained(spec)
        return int((module(torch.from_numpy(data.x)).argmax(1) == 2).sum())

    weights = {"class_weights": [1.0, 1.0, 20.0]}
    assert predicted_as_2(_spec("classification", weights)) > 1.15 * predicted_as_2(
        _spec("classification")
    )


def test_grad_clip_bounds_every_step() -> None:
    spec = _spec(
        "regression", {"optimizer": "sgd", "lr": 1.0, "grad_clip": 0.01, "batch_size": 800}
    )
    data = ArrayDataset.checked(*_data("regression"), spec.data)
    module = build_model(spec.model, spec.data, seed=0, task="regression")
    before = get_state(module)
    train_local(module, data, spec.train, seed=0)  # one full batch: one step
    moved = np.sqrt(sum(((get_state(module)[k] - v) ** 2).sum() for k, v in before.items()))
    assert 0.009 < moved <= 0.01 + 1e-6  # lr * clip: the norm was clipped, not the direction


def test_weight_decay_shrinks_the_weights() -> None:
    def norm(decay: float) -> float:
        spec = _spec("binary", {"optimizer": "sgd", "lr": 0.1, "weight_decay": decay})
        module, _ = _trained(spec)
        return float(sum((p.detach() ** 2).sum() for p in module.parameters()))

    assert norm(0.5) < 0.8 * norm(0.0)


def test_bf16_autocast_trains_on_the_cpu() -> None:
    fp32, _ = _trained(_spec("binary"))
    bf16, data = _trained(_spec("binary", {"precision": "bf16"}))
    spec = _spec("binary")
    a = evaluate(fp32, data, cfg=spec.train, classes=2, metrics=("auroc",))
    b = evaluate(bf16, data, cfg=spec.train, classes=2, metrics=("auroc",))
    assert b.metrics["auroc"] > 0.95 and abs(a.loss - b.loss) < 0.05
    assert all(p.dtype == torch.float32 for p in bf16.parameters())  # weights stay float32


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a member without a GPU")
def test_a_member_without_a_gpu_says_so() -> None:
    assert resolve_device("auto") == CPU
    with pytest.raises(DeviceError, match="has no CUDA GPU"):
        resolve_device("cuda:0")
    spec = _spec("binary", {"precision": "16"})
    data = ArrayDataset.checked(*_data("binary"), spec.data)
    module = build_model(spec.model, spec.data, task="binary")
    with pytest.raises(DeviceError, match="needs a CUDA GPU"):
        train_local(module, data, spec.train, seed=0)


def test_a_cpu_batch_is_not_copied() -> None:
    array = np.ones((4, 3), dtype=np.float32)
    assert to_device(array, CPU).data_ptr() == array.ctypes.data


@pytest.mark.parametrize("task", ["binary", "regression"])
def test_dp_sgd_trains_every_task(task: str) -> None:
    spec = _spec(task, {"optimizer": "sgd", "lr": 0.5, "lr_schedule": "step", "lr_step_rounds": 1})
    data = ArrayDataset.checked(*_data(task, n=400), spec.data)
    module = build_model(spec.model, spec.data, seed=0, task=task)
    metrics = train_local_dp(
        module, data, spec.train, seed=1, noise_multiplier=0.5, max_grad_norm=1.0,
        delta=1e-5, secure=False, epochs=3, round=2, rounds=4, device=CPU,
    )  # fmt: skip
    assert np.isfinite(metrics["train_loss"]) and ("train_accuracy" in metrics) == (
        task == "binary"
    )


@needs_gpu
@pytest.mark.parametrize("precision", ["32", "bf16", "16"])
def test_training_on_the_gpu_matches_the_cpu(precision: str) -> None:
    spec = _spec("binary", {"device": "cuda", "precision": precision})
    gpu, data = _trained(spec)
    assert next(gpu.parameters()).device.type == "cuda"
    cpu, _ = _trained(_spec("binary", {"device": "cpu"}))
    gpu_state, cpu_state = get_state(gpu), get_state(cpu)
    assert all(np.isfinite(v).all() for v in gpu_state.values())
    result = evaluate(gpu, data, cfg=spec.train, classes=2, metrics=("auroc",))
    assert result.metrics["auroc"] > 0.95
    if precision == "32":
        for key, value in cpu_state.items():
            np.testing.assert_allclose(gpu_state[key], value, atol=1e-3)
    set_state(gpu, cpu_state)  # a global model (numpy, CPU) loads into a module on the GPU
    assert np.allclose(get_state(gpu)["0.weight"], cpu_state["0.weight"])


@needs_gpu
def test_dp_sgd_runs_on_the_gpu() -> None:
    spec = _spec("binary", {"optimizer": "sgd", "lr": 0.5, "device": "cuda"})
    data = ArrayDataset.checked(*_data("binary", n=400), spec.data)
    module = build_model(spec.model, spec.data, seed=0, task="binary")
    metrics = train_local_dp(
        module, data, spec.train, seed=1, noise_multiplier=0.5, max_grad_norm=1.0,
        delta=1e-5, secure=True, epochs=2,
    )  # fmt: skip
    assert next(module.parameters()).device.type == "cuda" and metrics["train_accuracy"] > 0.6
