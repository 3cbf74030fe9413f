"""Local-training throughput of a member on the CPU and on a GPU, side by side (examples/s).

A small CNN (two 3x3 convolutions, max-pooling, a linear head) trains on
scikit-learn's digits, as 8x8 images or upsampled to 28x28 (``--size 28``),
through the member's own loop (:func:`fedaas.train.train_local`: batches
moved to the device once each, ``torch.autocast`` for ``bf16``/``16``). Each
configuration runs one warm-up epoch, then ``--epochs`` timed epochs; the
table reports examples per second and the ratio to float32 on the CPU. On a
machine without CUDA the GPU rows say "not available".

    .venv/bin/python bench/bench_gpu_train.py [--size 28] [--epochs 3] [--batch-size 128]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fedaas.data.dataset import ArrayDataset
from fedaas.data.digits import digits_split
from fedaas.spec_train import TrainSection
from fedaas.train import train_local


class SmallCNN(nn.Module):
    """Flat pixels -> 1 x size x size image -> conv(16) -> conv(32) -> pool -> linear."""

    def __init__(self, size: int, classes: int = 10) -> None:
        super().__init__()
        self.size = size
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.head = nn.Linear(32 * (size // 2) ** 2, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.view(-1, 1, self.size, self.size)
        x = F.max_pool2d(F.relu(self.conv2(F.relu(self.conv1(x)))), 2)
        return self.head(x.flatten(1))


def images(size: int) -> tuple[np.ndarray, np.ndarray]:
    x, y, _, _ = digits_split()
    if size != 8:
        t = F.interpolate(torch.from_numpy(x).view(-1, 1, 8, 8), size=(size, size), mode="bilinear")
        x = t.flatten(1).numpy()
    x = np.tile(x, (4, 1))  # ~5,700 examples: long enough epochs to time
    return np.ascontiguousarray(x, dtype=np.float32), np.tile(y, 4)


def throughput(data: ArrayDataset, size: int, device: str, precision: str, args) -> float:
    cfg = TrainSection(
        optimizer="sgd", lr=0.05, momentum=0.9, batch_size=args.batch_size, epochs=1,
        device=device, precision=precision,  # type: ignore[arg-type]
    )  # fmt: skip
    torch.manual_seed(0)
    module = SmallCNN(size)
    train_local(module, data, cfg, seed=0)  # warm-up: kernels, allocator, autotuning
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    began = time.perf_counter()
    train_local(module, data, cfg, seed=1, epochs=args.epochs)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return data.num_examples * args.epochs / (time.perf_counter() - began)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, choices=(8, 28), default=28)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=128)
    args = parser.parse_args()
    x, y = images(args.size)
    data = ArrayDataset(x, y)
    print(
        f"small CNN on {args.size}x{args.size} digits, {data.num_examples} examples, "
        f"batch {args.batch_size}, {args.epochs} timed epochs; torch {torch.__version__}, "
        f"{torch.get_num_threads()} CPU threads"
    )
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    rows = [("cpu", "32"), ("cpu", "bf16"), ("cuda", "32"), ("cuda", "bf16"), ("cuda", "16")]
    base = None
    print(f"{'device':<28} {'precision':<10} {'examples/s':>12} {'vs CPU fp32':>12}")
    for device, precision in rows:
        name = device if device == "cpu" else f"cuda ({gpu or 'not available'})"
        if device == "cuda" and gpu is None:
            print(f"{name:<28} {precision:<10} {'not available':>12} {'-':>12}")
            continue
        rate = throughput(data, args.size, device, precision, args)
        base = base or rate
        print(f"{name:<28} {precision:<10} {rate:>12,.0f} {rate / base:>11.1f}x")


if __name__ == "__main__":
    main()
