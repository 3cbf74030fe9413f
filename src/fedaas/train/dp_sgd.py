"""Record-level differential privacy: DP-SGD inside one member (privacy unit ``record``).

DP-SGD (Abadi et al., "Deep Learning with Differential Privacy", CCS 2016,
arXiv:1607.00133): every step samples a lot by Poisson sampling (each record
independently with probability ``q = batch_size / n``), clips each record's
gradient to L2 norm ``C`` (``max_grad_norm``), adds ``N(0, (z*C)^2)`` to the
sum of the clipped gradients and divides by the expected lot size
``batch_size``. Neighbouring datasets differ in one record of one member
(add/remove), so every step is a Poisson-subsampled Gaussian mechanism and the
steps compose; accounting is Google's ``dp-accounting`` (RDP by default,
through :mod:`fedaas.algorithms.accounting`, which also holds the
schedule :func:`dp_sgd_schedule` and :func:`record_epsilon_after`, re-exported here).

Per-example gradients and their clipping come from Opacus 1.6
(:class:`opacus.grad_sample.GradSampleHooks`, which attaches to the module
without wrapping it, so ``module.state_dict()`` keeps its names, and
:class:`opacus.optimizers.DPOptimizer`). Opacus's ``PrivacyEngine`` is not
used: its ``secure_mode`` needs ``torchcsprng``, which has no build for this
Python/torch (last release 0.2.1, 2021), and without it both its noise and
its Poisson sampler draw from torch's Mersenne Twister, which is not a
cryptographic generator whatever it is seeded with. Here instead, with
``secure=True`` (private runs):

- the noise comes from :class:`fedaas.algorithms.privacy.SecureNoise`
  (``os.urandom``, the OS CSPRNG, Box-Muller in float64), and like Opacus's
  secure mode each coordinate is ``(g1 + g2 + g3 + g4) / 2`` of four such
  draws, against floating-point attacks on Gaussian samplers (Jin et al.
  2021, arXiv:2112.05307; Mironov, CCS 2012);
- the Poisson sampling draws its uniforms from ``os.urandom`` too (the
  amplification by subsampling assumes nobody can predict the lots).

``secure=False`` draws both from numpy generators seeded with ``seed``: runs
repeat exactly, and they are NOT private (the project's ``reproducible`` mode).

FedProx (``cfg.mu > 0``) adds ``mu * (w - w_start)`` to the noised gradient:
that term does not touch the data, so it is post-processing. The loop runs on
the job's device (``[train] device``; the member's data is moved there once,
the noise is drawn on the CPU and moved), with the task's loss
(:mod:`fedaas.train.losses`), in float32 (the spec refuses mixed precision
and ``grad_clip`` under DP-SGD).
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
from opacus.grad_sample import GradSampleHooks
from opacus.optimizers import DPOptimizer
from opacus.optimizers.optimizer import _check_processed_flag, _mark_as_processed
from torch import nn

from fedaas.algorithms.accounting import Accountant, dp_sgd_schedule, record_epsilon_after
from fedaas.algorithms.privacy import SecureNoise
from fedaas.data.dataset import Dataset
from fedaas.spec_train import TrainSection
from fedaas.train.device import resolve_device
from fedaas.train.losses import correct, prepare, task_loss
from fedaas.train.optim import make_optimizer
from fedaas.train.schedule import round_lr

__all__ = [
    "dp_sgd_schedule",
    "poisson_lot",
    "record_epsilon_after",
    "train_local_dp",
]  # the schedule and its epsilon are pure accounting (fedaas.algorithms.accounting)

Uniform = Callable[[int], np.ndarray]  # count -> float64 uniforms in (0, 1]
Normal = Callable[[int], np.ndarray]  # count -> float64 N(0, 1) draws

_TWO_POW_M53 = 2.0**-53
_HOOK_WARNINGS = (
    # Opacus's hooks on the first layer (whose input needs no gradient) and on
    # tensors that require grad: expected and harmless, torch warns every step.
    "Full backward hook is firing when gradients are computed",
    "Converting a tensor with requires_grad=True to a scalar",
)


# ------------------------------------------------------------- randomness


def _secure_uniform(count: int) -> np.ndarray:
    bits = np.frombuffer(os.urandom(8 * count), dtype="<u8") >> np.uint64(11)
    return (bits + 1.0) * _TWO_POW_M53  # 53 random bits, in (0, 1]


def _secure_normal(count: int) -> np.ndarray:
    # Opacus's secure mode (n = 2): the sum of 2n = 4 standard normals over sqrt(4).
    return SecureNoise().standard_normal((4, count)).sum(axis=0) / 2.0


def _sources(secure: bool, seed: int | Sequence[int]) -> tuple[Uniform, Normal]:
    if secure:
        return _secure_uniform, _secure_normal
    sequence = np.random.SeedSequence(seed if isinstance(seed, int) else list(seed))
    sampling, noise = (np.random.Generator(np.random.PCG64DXSM(s)) for s in sequence.spawn(2))
    return (lambda count: 1.0 - sampling.random(count)), noise.standard_normal


def poisson_lot(n: int, q: float, uniform: Uniform) -> np.ndarray:
    """Sorted indices of one Poisson-sampled lot: each of ``n`` records kept with probability ``q``.

    Draws the gaps between kept records, ``Geometric(q)``, by inversion
    (``1 + floor(log U / log(1 - q))``), so a lot costs about ``q*n`` draws
    instead of ``n``.
    """
    if q >= 1.0:
        return np.arange(n, dtype=np.int64)
    log_keep = math.log1p(-q)
    parts: list[np.ndarray] = []
    position = -1  # index of the last kept record
    expected = q * n
    while True:
        count = int(expected + 6.0 * math.sqrt(expected) + 16)
        gaps = 1 + np.floor(np.log(uniform(count)) / log_keep)
        positions = position + np.cumsum(gaps)
        inside = positions[positions < n]
        parts.append(inside.astype(np.int64))
        if inside.size < count:
            return np.concatenate(parts)
        position = int(inside[-1])


# ---------------------------------------------------------------- optimizer


class _NoiseDPOptimizer(DPOptimizer):
    """Opacus's DPOptimizer (clipping, scaling) with the noise drawn from ``normal``."""

    def __init__(
        self, optimizer: torch.optim.Optimizer, *, normal: Normal, **kwargs: float
    ) -> None:
        super().__init__(optimizer, **kwargs)  # type: ignore[arg-type]
        self._normal = normal

    def add_noise(self) -> None:
        params = self.params
        std = self.noise_multiplier * self.max_grad_norm
        sizes = [p.numel() for p in params]
        noise = None
        if std > 0:
            noise = torch.from_numpy(std * self._normal(sum(sizes))).split(sizes)
        for i, p in enumerate(params):
            _check_processed_flag(p.summed_grad)
            grad = p.summed_grad
            if noise is not None:
                grad = grad + noise[i].to(dtype=grad.dtype, device=grad.device).view_as(grad)
            p.grad = grad.view_as(p)
            _mark_as_processed(p.summed_grad)


# ------------------------------------------------------------------ training


def _arrays(data: Dataset) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = getattr(data, "x", None), getattr(data, "y", None)
    if not (isinstance(x, np.ndarray) and isinstance(y, np.ndarray)):
        # Poisson sampling needs random access: materialize a streaming dataset.
        pieces = list(data.batches(65536, None))
        if not pieces:
            raise ValueError("DP-SGD needs at least one example")
        x = np.concatenate([p[0] for p in pieces])
        y = np.concatenate([p[1] for p in pieces])
    labels = np.float32 if np.issubdtype(y.dtype, np.floating) else np.int64  # regression: real
    return (
        torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)),
        torch.from_numpy(np.ascontiguousarray(y, dtype=labels)),
    )


def _lots(n: int, q: float, steps: int, uniform: Uniform) -> Iterator[np.ndarray]:
    for _ in range(steps):
        yield poisson_lot(n, q, uniform)


def train_local_dp(
    module: nn.Module,
    data: Dataset,
    cfg: TrainSection,
    seed: int | Sequence[int],
    *,
    noise_multiplier: float,
    max_grad_norm: float,
    delta: float,
    secure: bool = True,
    epochs: int | None = None,
    accountant: Accountant = "rdp",
    round: int = 1,
    rounds: int = 1,
    device: torch.device | None = None,
) -> dict[str, float]:
    """Train ``module`` in place with DP-SGD for ``epochs`` (default ``cfg.epochs``) epochs.

    An epoch is ``ceil(n / cfg.batch_size)`` steps on Poisson lots of expected
    size ``cfg.batch_size``; per-record gradients are clipped to
    ``max_grad_norm`` and the sum gets ``N(0, (noise_multiplier *
    max_grad_norm)^2)``. The optimizer (SGD with momentum or Adam) and FedProx
    ``mu`` come from ``cfg``. ``seed`` is used only when ``secure`` is false
    (reproducible, NOT private). Returns the mean loss and accuracy on the
    last epoch's lots (computed on private data, before each step, without
    noise) and ``record_epsilon``: epsilon at ``delta`` of this call's steps
    alone (``inf`` when ``noise_multiplier == 0``); for the cumulative value
    over rounds use :func:`record_epsilon_after`. The learning rate is round
    ``round`` of ``rounds``'s (:func:`fedaas.train.schedule.round_lr`).
    """
    if not (math.isfinite(noise_multiplier) and noise_multiplier >= 0):
        raise ValueError(f"noise_multiplier must be finite and >= 0, got {noise_multiplier}")
    if not (math.isfinite(max_grad_norm) and max_grad_norm > 0):
        raise ValueError(f"max_grad_norm must be finite and > 0, got {max_grad_norm}")
    if not 0 < delta < 1:
        raise ValueError(f"delta must lie in (0, 1), got {delta}")
    device = device or resolve_device(cfg.device)
    x, y = _arrays(data)
    n = int(y.shape[0])
    x, y = x.to(device), y.to(device)  # once: the lots are gathered on the device
    q, steps = dp_sgd_schedule(n, cfg.batch_size, epochs if epochs is not None else cfg.epochs)
    steps_per_epoch = math.ceil(n / cfg.batch_size)
    uniform, normal = _sources(secure, seed)

    module.to(device)
    module.train()
    params = [p for p in module.parameters() if p.requires_grad]
    anchor = [p.detach().clone() for p in params] if cfg.mu > 0 else None
    loss_fn = task_loss(cfg, device, reduction="sum")
    try:
        hooks = GradSampleHooks(module, batch_first=True, loss_reduction="sum", strict=True)
    except NotImplementedError as exc:
        raise ValueError(
            f"this model cannot be trained with DP-SGD (per-record gradients): {exc}"
        ) from None
    optimizer = _NoiseDPOptimizer(
        make_optimizer(module, cfg, lr=round_lr(round, rounds, cfg)),
        normal=normal,
        noise_multiplier=float(noise_multiplier),
        max_grad_norm=float(max_grad_norm),
        expected_batch_size=q * n,
        loss_reduction="mean",  # divide by the expected lot size, as Abadi et al.
    )
    loss_sum, hits, seen = 0.0, 0, 0
    try:
        with warnings.catch_warnings():
            for message in _HOOK_WARNINGS:
                warnings.filterwarnings("ignore", message=message)
            for step, lot in enumerate(_lots(n, q, steps, uniform)):
                if step % steps_per_epoch == 0:
                    loss_sum, hits, seen = 0.0, 0, 0
                index = torch.from_numpy(lot).to(device)
                xb, yb = x[index], y[index]
                optimizer.zero_grad(set_to_none=True)
                output, target = prepare(cfg.task, module(xb), yb)
                loss = loss_fn(output, target)
                loss.backward()
                if optimizer.pre_step():  # clip, noise, scale
                    if anchor is not None:
                        with torch.no_grad():
                            for p, p0 in zip(params, anchor, strict=True):
                                if p.grad is not None:
                                    p.grad.add_(p.detach() - p0, alpha=cfg.mu)
                    optimizer.original_optimizer.step()
                loss_sum += float(loss.detach())
                right = correct(cfg.task, output.detach(), target)
                hits += 0 if right is None else int(right)
                seen += len(yb)
    finally:
        optimizer.zero_grad(set_to_none=True)
        hooks.cleanup()
        for p in module.parameters():
            for attr in ("summed_grad", "grad_sample"):
                if hasattr(p, attr):
                    delattr(p, attr)
            p.grad = None
    epsilon = record_epsilon_after(1, steps, q, noise_multiplier, delta, accountant=accountant)
    out = {"train_loss": loss_sum / max(seen, 1), "record_epsilon": epsilon}
    if cfg.task != "regression":
        out["train_accuracy"] = hits / max(seen, 1)
    return out
