"""Local training (FedAvg, FedProx) and evaluation loops, shared by members and the coordinator.

The loop follows the job's ``[train]`` section: the task's loss
(:mod:`fedaas.train.losses`), the round's learning rate
(:func:`fedaas.train.schedule.round_lr`), weight decay, gradient-norm
clipping, the device and mixed precision (:mod:`fedaas.train.device`).
Evaluation accumulates metric states (:mod:`fedaas.train.metrics`), so a
member's report and the coordinator's held-out evaluation use the same code.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from fedaas.data.dataset import Dataset
from fedaas.spec_train import TrainSection
from fedaas.train.device import autocast, check_precision, grad_scaler, on_device, resolve_device
from fedaas.train.losses import correct, prepare, task_loss
from fedaas.train.metrics import MetricStates, States, compute_metrics
from fedaas.train.optim import make_optimizer
from fedaas.train.schedule import round_lr


@dataclass(frozen=True)
class EvalResult:
    """Mean loss, accuracy (NaN for a regression), examples, the metrics and their states."""

    loss: float
    accuracy: float
    examples: int
    metrics: dict[str, float] = field(default_factory=dict)
    states: States = field(default_factory=dict)


def _fast_sgd(cfg: TrainSection, scaler: object) -> bool:
    """Plain SGD (no momentum, no decay) is stepped directly as ``p -= lr * g``.

    On the small models of cross-silo jobs ``torch.optim``'s per-step
    bookkeeping (profiler hooks, ``zero_grad``) costs a fifth of a step.
    """
    return cfg.optimizer == "sgd" and cfg.momentum == 0 and cfg.weight_decay == 0 and scaler is None


def ready(module: nn.Module, device: torch.device) -> list[nn.Parameter]:
    """``module.to(device)`` and ``module.train()``, each unless it would change nothing;
    returns the trainable parameters in ``module.parameters()`` order.

    ``to`` and ``train`` rebuild or reset every submodule even when nothing
    changes: for a small model trained for one step they cost as much as the
    step. One walk over the submodules' own tensors and flags tells whether
    they are needed.
    """
    placed, training = True, True
    params: list[nn.Parameter] = []
    seen: set[int] = set()
    for sub in module.modules():
        training = training and sub.training
        for p in sub._parameters.values():
            if p is None or id(p) in seen:
                continue
            seen.add(id(p))
            placed = placed and p.device == device
            if p.requires_grad:
                params.append(p)
        placed = placed and all(b is None or b.device == device for b in sub._buffers.values())
    if not placed:
        module.to(device)
        params = [p for p in module.parameters() if p.requires_grad]
    if not training:
        module.train()
    return params


_LOSSES: dict[tuple[object, ...], nn.Module] = {}


def _loss(cfg: TrainSection, device: torch.device) -> nn.Module:
    """:func:`task_loss` for this task and device, built once (a loss module holds no state)."""
    weights = None if cfg.class_weights is None else tuple(cfg.class_weights)
    key = (cfg.task, cfg.loss, cfg.huber_delta, weights, cfg.pos_weight, str(device))
    loss = _LOSSES.get(key)
    if loss is None:
        if len(_LOSSES) >= 16:
            _LOSSES.clear()
        loss = _LOSSES[key] = task_loss(cfg, device)
    return loss


def train_local(
    module: nn.Module,
    data: Dataset,
    cfg: TrainSection,
    seed: int | Sequence[int],
    epochs: int | None = None,
    *,
    round: int = 1,
    rounds: int = 1,
    device: torch.device | None = None,
) -> dict[str, float]:
    """Train in place for ``cfg.epochs`` epochs of shuffled mini-batch SGD/Adam.

    The module is moved to ``device`` (default: ``cfg.device`` resolved on
    this machine) and stays there. With ``cfg.mu > 0`` this is FedProx local
    training (Li et al., MLSys 2020, arXiv:1812.06127): every step adds
    ``mu * (w - w_start)`` to the gradient, pulling the local model towards
    the global one it started from. ``cfg.grad_clip`` bounds the L2 norm of
    the loss's gradient before that term. Returns the mean training loss (and
    accuracy, for classification and binary) over the last epoch.
    """
    device = device or resolve_device(cfg.device)
    check_precision(cfg, device)
    params = ready(module, device)
    lr = round_lr(round, rounds, cfg)
    scaler = grad_scaler(cfg, device)
    optimizer = None if _fast_sgd(cfg, scaler) else make_optimizer(module, cfg, lr=lr)
    loss_fn = _loss(cfg, device)
    anchor = [p.detach().clone() for p in params] if cfg.mu > 0 else None
    rng = np.random.default_rng(seed)
    zero = torch.zeros((), device=device)
    loss_sum, hits, seen = zero.clone(), zero.clone(), 0
    for _ in range(epochs if epochs is not None else cfg.epochs):
        loss_sum, hits, seen = zero.clone(), zero.clone(), 0
        for xb, yb in on_device(data.batches(cfg.batch_size, rng), device):
            with autocast(cfg, device):
                output = module(xb)
            output, target = prepare(cfg.task, output, yb)
            loss = loss_fn(output, target)
            scaled = scaler.scale(loss) if scaler is not None else loss
            grads = torch.autograd.grad(scaled, params, allow_unused=True)
            with torch.no_grad():
                if scaler is not None or cfg.grad_clip is not None:
                    for p, g in zip(params, grads, strict=True):
                        p.grad = g
                    if scaler is not None:
                        assert optimizer is not None
                        scaler.unscale_(optimizer)
                    if cfg.grad_clip is not None:
                        nn.utils.clip_grad_norm_(params, cfg.grad_clip)
                    grads = tuple(p.grad for p in params)
                for i, (p, g) in enumerate(zip(params, grads, strict=True)):
                    if g is None:  # not used by the forward pass: left as it is
                        continue
                    if anchor is not None:
                        g.add_(p - anchor[i], alpha=cfg.mu)
                    if optimizer is None:
                        p.add_(g, alpha=-lr)
                    else:
                        p.grad = g
                if scaler is not None:
                    scaler.step(optimizer)
                    scaler.update()
                elif optimizer is not None:
                    optimizer.step()
                # accumulate as tensors: no per-step host round trips
                loss_sum += loss.detach().float() * len(target)
                right = correct(cfg.task, output.detach(), target)
                if right is not None:
                    hits += right
            seen += len(target)
    for p in params:
        if p.grad is not None:
            p.grad = None
    n = max(seen, 1)
    out = {"train_loss": float(loss_sum) / n}
    if cfg.task != "regression":
        out["train_accuracy"] = float(hits) / n
    return out


@torch.no_grad()
def evaluate(
    module: nn.Module,
    data: Dataset,
    batch_size: int = 4096,
    *,
    cfg: TrainSection | None = None,
    classes: int | None = None,
    metrics: tuple[str, ...] = ("accuracy",),
    device: torch.device | None = None,
    states_only: bool = False,
) -> EvalResult:
    """The task's mean loss, accuracy and ``metrics`` of ``module`` on ``data``.

    ``cfg`` gives the task and its loss (default: classification with plain
    cross-entropy); ``classes`` is ``[data] classes``. The loss is the
    unweighted mean over examples (class and positive weights shape training,
    not the reported loss). The states behind every metric come back too
    (:mod:`fedaas.train.metrics`), for a member to report; with
    ``states_only`` the values of ``metrics`` are not computed (a member's
    report carries the states, and the coordinator computes the metrics from
    their sum), only the loss and accuracy.
    """
    cfg = cfg or TrainSection()
    device = device or next((p.device for p in module.parameters()), torch.device("cpu"))
    module.eval()
    plain = cfg.model_copy(update={"class_weights": None, "pos_weight": None})
    loss_fn = task_loss(plain, device, reduction="sum")
    names = tuple(metrics)
    scored = names if cfg.task == "regression" or "accuracy" in names else (*names, "accuracy")
    states: MetricStates | None = None
    for xb, yb in on_device(data.batches(batch_size), device):
        output, target = prepare(cfg.task, module(xb), yb)
        if states is None:  # a classification's class count: the model's outputs by default
            width = output.shape[1] if cfg.task == "classification" else None
            states = MetricStates(cfg.task, classes or width, scored, device)
        states.update(output, target, loss_fn(output, target))
    if states is None:
        raise ValueError("cannot evaluate on an empty dataset")
    raw = states.states()
    wanted = tuple(n for n in scored if n == "accuracy") if states_only else scored
    values = compute_metrics(raw, cfg.task, states.classes, wanted)
    return EvalResult(
        loss=values["loss"],
        accuracy=values.get("accuracy", float("nan")),
        examples=data.num_examples,
        metrics={k: values[k] for k in names if k in values},
        states=raw,
    )
