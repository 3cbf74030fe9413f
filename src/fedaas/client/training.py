"""One round of local training as the round's privacy instructions say, and its update.

Plain local training (:func:`fedaas.train.train_local`, or the job's own
``train_step`` where this member's operator allowed its package,
:mod:`fedaas.train.custom`), or DP-SGD within the member's own record-level
budget (:func:`fedaas.train.dp_sgd.train_local_dp`, the round spent in the
ledger first); then the update ``local - global``, clipped and noised by
:class:`~fedaas.client.privacy.MemberPrivacy`. :func:`evaluate_round` is a
member's federated evaluation: the metric states of the job's metrics and
what its ``eval_step`` returns.

Both are plain functions without any HTTP: the member agent calls them, and
so does ``fedaas simulate`` in its worker processes.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import torch
from torch import nn

from fedaas.client.privacy import MemberPrivacy
from fedaas.data.dataset import Dataset
from fedaas.models import get_state
from fedaas.protocol import EvaluationReport, PrivacyInstructions, RecordPrivacy
from fedaas.spec import JobSpec, TrainSection
from fedaas.spec_train import job_metrics
from fedaas.train import EvalResult, evaluate, train_local
from fedaas.train.custom import BatchLoader, load_step, run_step, step_options
from fedaas.train.device import check_precision, resolve_device
from fedaas.train.schedule import round_lr


def _rounds(cfg: TrainSection, number: int, rounds: int | None) -> int:
    if rounds is not None:
        return rounds
    if cfg.lr_schedule != "constant":
        raise ValueError(f"lr_schedule '{cfg.lr_schedule}' needs the job's number of rounds")
    return max(number, 1)


def train_round(
    module: nn.Module,
    data: Dataset,
    cfg: TrainSection,
    start: dict[str, np.ndarray],
    instructions: PrivacyInstructions,
    privacy: MemberPrivacy,
    *,
    job_id: str,
    number: int,
    seed: Sequence[int],
    max_epsilon: float | None,
    rounds: int | None = None,
    allowed_code: Iterable[str] = (),
    device: torch.device | None = None,
) -> tuple[dict[str, np.ndarray], bool, dict[str, float]]:
    """Train ``module`` (starting from ``start``) for round ``number`` of ``rounds``.

    Returns ``(update, unclipped, metrics)``. ``rounds`` (the job's
    ``[job] rounds``) places the round on the learning-rate schedule; it may
    be left out only for a constant schedule. ``allowed_code``: the packages
    this member's operator allowed (for ``[train] train_step``). ``device``:
    default ``cfg.device`` resolved here.
    """
    total = _rounds(cfg, number, rounds)
    device = device or resolve_device(cfg.device)
    check_precision(cfg, device)
    if isinstance(instructions, RecordPrivacy):
        from fedaas.train.dp_sgd import train_local_dp  # Opacus: 1.5 s to import, DP-SGD only

        spent = privacy.start_record_round(  # BudgetSpent before any record is touched
            job_id, instructions, data.num_examples, cfg, max_epsilon=max_epsilon
        )
        metrics = train_local_dp(
            module,
            data,
            cfg,
            seed=list(seed),
            noise_multiplier=instructions.noise_multiplier,
            max_grad_norm=instructions.clip_norm,
            delta=instructions.delta,
            secure=not instructions.reproducible,
            accountant=instructions.accountant,
            round=number,
            rounds=total,
            device=device,
        )
        metrics.pop("record_epsilon", None)
        metrics.update(spent)
    elif cfg.train_step is not None:
        step = load_step(cfg.train_step, allowed_code, "train_step")
        module.to(device)
        module.train()
        loader = BatchLoader(data, cfg.batch_size, device, np.random.default_rng(list(seed)))
        options = step_options(cfg, number, total, round_lr(number, total, cfg))
        metrics = run_step(step, cfg.train_step, module, loader, options)
    else:
        metrics = train_local(
            module, data, cfg, seed=list(seed), round=number, rounds=total, device=device
        )
    trained = get_state(module)
    delta = {name: trained[name] - start[name] for name in start}
    update, unclipped = privacy.privatize(delta, instructions, job_id=job_id, number=number)
    return update, unclipped, metrics


def evaluate_round(
    module: nn.Module,
    data: Dataset,
    spec: JobSpec,
    *,
    number: int,
    allowed_code: Iterable[str] = (),
    device: torch.device | None = None,
) -> tuple[EvalResult, dict[str, float]]:
    """A member's federated evaluation of round ``number``'s model on its validation split.

    Returns the built-in evaluation (loss, accuracy and the states of the
    job's metrics, for the report: the coordinator computes the metrics from
    the members' summed states, so a member's own values are not computed)
    and the metrics of the job's ``eval_step`` (empty when it names none).
    """
    cfg = spec.train
    device = device or resolve_device(cfg.device)
    module.to(device)
    result = evaluate(
        module,
        data,
        batch_size=max(cfg.batch_size, 256),
        cfg=cfg,
        classes=spec.data.classes,
        metrics=job_metrics(spec),
        device=device,
        states_only=True,
    )
    custom: dict[str, float] = {}
    if cfg.eval_step is not None:
        step = load_step(cfg.eval_step, allowed_code, "eval_step")
        module.eval()
        loader = BatchLoader(data, cfg.batch_size, device)
        options = step_options(cfg, number, spec.job.rounds, round_lr(number, spec.job.rounds, cfg))
        with torch.no_grad():
            custom = run_step(step, cfg.eval_step, module, loader, options)
    return result, custom


def evaluation_report(
    module: nn.Module,
    data: Dataset,
    spec: JobSpec,
    number: int,
    allowed_code: Iterable[str] = (),
) -> EvaluationReport:
    """What a member sends after :func:`evaluate_round`: its metric states and own metrics."""
    result, custom = evaluate_round(module, data, spec, number=number, allowed_code=allowed_code)
    return EvaluationReport(
        num_examples=result.examples,
        loss=result.loss,
        accuracy=None if spec.train.task == "regression" else result.accuracy,
        states=result.states,
        metrics=custom,
    )
