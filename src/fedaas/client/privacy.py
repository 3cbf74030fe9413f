"""The member's side of differential privacy: clip the update, add its noise.

Every private job clips the model delta to the coordinator's current clip
norm (McMahan et al. 2018). With ``local`` or ``distributed`` placement the
member also adds noise itself, with the standard deviation the coordinator
computed for the round: independent Gaussian, or Ornstein-Uhlenbeck noise
whose state is kept in the member's state folder so that a restarted agent
continues the same process instead of starting a fresh (cheaper-looking but
differently accounted) one.
"""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import Any

import numpy as np

from fedaas import tensors
from fedaas.algorithms.privacy import (
    NoiseSource,
    OUNoise,
    clip_update,
    gaussian_noise,
    reproducible_noise_source,
    secure_noise_source,
)


class BudgetSpent(Exception):
    """One more round of DP-SGD would take this member past the job's epsilon budget."""


def _source(info: dict[str, Any], number: int, member_key: str) -> NoiseSource:
    if info.get("reproducible"):
        stream = (zlib.crc32(member_key.encode()) << 20) + number
        return reproducible_noise_source(int(info["seed"]), stream=stream)
    return secure_noise_source()


def privatize(
    delta: dict[str, np.ndarray],
    info: dict[str, Any],
    number: int,
    state_dir: Path,
    job_id: str,
    member_key: str,
) -> tuple[dict[str, np.ndarray], bool]:
    """Apply the round's privacy instructions; returns ``(update, unclipped)``."""
    if info.get("mechanism", "none") == "none" or info.get("unit") == "record":
        return delta, True  # record-level DP already happened inside training (DP-SGD)
    clip_norm = float(info["clip_norm"])
    clipped, norm = clip_update(delta, clip_norm)
    std = float(info.get("noise_std") or 0.0)
    if info["placement"] == "central" or std == 0:
        return clipped, norm <= clip_norm
    source = _source(info, number, member_key)
    shapes = {name: values.shape for name, values in clipped.items()}
    if info["mechanism"] == "ou":
        path = state_dir / f"ou-{job_id}.safetensors"
        if path.exists():
            arrays, meta = tensors.load_state(path)
            process = OUNoise.from_state(arrays, meta)
        else:
            process = OUNoise(shapes, std, float(info["theta"]))
        noise = process.next(source)
        arrays, meta = process.state_dict()
        tensors.save_state(path, arrays, meta)
    else:
        noise = gaussian_noise(shapes, std, source)
    return {
        name: clipped[name] + noise[name].astype(np.float32) for name in clipped
    }, norm <= clip_norm


def train_record_level(
    ctx: Any, info: dict[str, Any], seed: list[int], ledger: Path
) -> dict[str, float]:
    """Record-level DP: train with DP-SGD (Abadi et al. 2016) and report cumulative epsilon.

    The count of rounds this member has trained in the job is saved *before*
    training, so a crash mid-round still counts the round as spent. A round
    that would take the member past the job's ``epsilon_budget`` is refused
    (:class:`BudgetSpent`) before any record is touched: the guarantee is
    enforced where the data is, whatever the coordinator asks.
    """
    import json
    import math

    from fedaas.train_dp import dp_sgd_schedule, record_epsilon_after, train_local_dp

    cfg, spec = ctx.spec.train, ctx.spec
    z, delta = float(info["noise_multiplier"]), float(info["delta"])
    budget, accountant = spec.privacy.epsilon_budget, spec.privacy.accountant
    rounds = json.loads(ledger.read_text())["rounds"] + 1 if ledger.exists() else 1
    q, steps = dp_sgd_schedule(ctx.train.num_examples, cfg.batch_size, cfg.epochs)
    eps = record_epsilon_after(rounds, steps, q, z, delta, accountant=accountant)
    if budget is not None and eps > budget:
        raise BudgetSpent(
            f"record-level privacy budget reached: after {rounds - 1} round(s) of DP-SGD, "
            f"one more would bring this member's epsilon to {eps:.3f} > {budget:g} "
            f"(delta {delta:g})"
        )
    ledger.parent.mkdir(parents=True, exist_ok=True)
    tmp = ledger.with_name(ledger.name + ".partial")
    tmp.write_text(json.dumps({"rounds": rounds}))
    tmp.replace(ledger)
    metrics = train_local_dp(
        ctx.module,
        ctx.train,
        cfg,
        seed=seed,
        noise_multiplier=z,
        max_grad_norm=float(info["clip_norm"]),
        delta=delta,
        secure=not info.get("reproducible", False),
        accountant=accountant,
    )
    metrics.pop("record_epsilon", None)
    if math.isfinite(eps):
        metrics["record_epsilon"] = eps
    if budget is not None:  # lets the coordinator stop the job before a round would exceed it
        metrics["record_epsilon_next"] = record_epsilon_after(
            rounds + 1, steps, q, z, delta, accountant=accountant
        )
    return metrics
