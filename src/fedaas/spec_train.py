"""The ``[train]`` and ``[evaluation]`` sections of a job spec, and how they fit the rest.

``[train]`` says how every member trains locally: the task and its loss
(``classification``: cross-entropy with optional ``class_weights``;
``binary``: one logit, BCE-with-logits with optional ``pos_weight``;
``regression``: one output, MSE or Huber), the optimizer with
``weight_decay`` and gradient-norm clipping (``grad_clip``), the learning
rate's schedule across rounds (:mod:`fedaas.train.schedule`), the member's
device and precision, and optional user code (``train_step``/``eval_step``,
``package.module:function``, run only where the member's operator allowed the
package). ``[evaluation]`` names the metrics every evaluation reports
(:mod:`fedaas.train.metrics`); which metric fits which task is checked here,
with the other sections, by :func:`train_problems`.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import Field, field_validator, model_validator

from fedaas.spec_section import Section as _Section

if TYPE_CHECKING:
    from fedaas.spec import JobSpec

_CODE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
_DEVICE = re.compile(r"^(auto|cpu|cuda|cuda:\d{1,3})$")

Task = Literal["classification", "binary", "regression"]
Metric = Literal[
    "accuracy",
    "balanced_accuracy",
    "f1",
    "auroc",
    "sensitivity",
    "specificity",
    "mae",
    "rmse",
    "r2",
]
TASK_METRICS: dict[str, tuple[str, ...]] = {
    "classification": ("accuracy", "balanced_accuracy", "f1", "sensitivity", "specificity"),
    "binary": ("accuracy", "balanced_accuracy", "f1", "auroc", "sensitivity", "specificity"),
    "regression": ("mae", "rmse", "r2"),
}
"""The metrics that are defined for each task's predictions."""
DEFAULT_METRICS: dict[str, tuple[str, ...]] = {
    "classification": ("accuracy",),
    "binary": ("accuracy", "auroc"),
    "regression": ("rmse",),
}
RESERVED_OPTIONS = ("lr", "epochs", "batch_size", "round", "rounds", "weight_decay")
"""Keys fedaas adds to the ``options`` a custom step receives; ``[train.options]`` may not use them."""

_Option = int | float | str | bool | list[int] | list[float]


class TrainSection(_Section):
    """Local training on each member (the same for every member)."""

    task: Task = "classification"
    optimizer: Literal["sgd", "adam"] = "sgd"
    lr: Annotated[float, Field(gt=0, le=10)] = 0.05
    momentum: Annotated[float, Field(ge=0, lt=1)] = 0.0
    weight_decay: Annotated[float, Field(ge=0, le=10)] = 0.0
    """L2 weight decay of the local optimizer (``torch.optim``'s ``weight_decay``)."""
    grad_clip: Annotated[float, Field(gt=0, le=1e6)] | None = None
    """Largest L2 norm of a step's gradient (``clip_grad_norm_``); unset: off. Not DP clipping."""
    batch_size: Annotated[int, Field(ge=1, le=1_000_000)] = 32
    epochs: Annotated[int, Field(ge=1, le=10_000)] = 1
    mu: Annotated[float, Field(ge=0, le=100)] = 0.0
    """FedProx proximal weight (Li et al. 2020); 0 is plain FedAvg local training."""
    loss: Literal["mse", "huber"] | None = None
    """Regression only: ``mse`` (the default) or ``huber`` (``huber_delta``)."""
    huber_delta: Annotated[float, Field(gt=0, le=1e6)] = 1.0
    class_weights: list[Annotated[float, Field(gt=0, le=1e6)]] | None = None
    """Classification only: one cross-entropy weight per class."""
    pos_weight: Annotated[float, Field(gt=0, le=1e6)] | None = None
    """Binary only: the weight of positive examples in BCE-with-logits."""
    lr_schedule: Literal["constant", "step", "cosine"] = "constant"
    """How ``lr`` changes with the ROUND (:func:`fedaas.train.schedule.round_lr`)."""
    lr_step_rounds: Annotated[int, Field(ge=1, le=100_000)] = 10
    lr_gamma: Annotated[float, Field(gt=0, le=1)] = 0.5
    lr_min: Annotated[float, Field(ge=0, le=10)] = 0.0
    device: str = "auto"
    """``auto`` (a GPU when the member has one), ``cpu``, ``cuda`` or ``cuda:N``."""
    precision: Literal["32", "bf16", "16"] = "32"
    """``32``: float32; ``bf16``/``16``: ``torch.autocast`` mixed precision (``16``: GradScaler)."""
    train_step: str | None = None
    """User code ``package.module:function`` that trains one round (:mod:`fedaas.train.custom`)."""
    eval_step: str | None = None
    """User code ``package.module:function`` that evaluates on a member's validation split."""
    options: dict[str, _Option] = Field(default_factory=dict)
    """Passed to ``train_step``/``eval_step`` (with the reserved keys fedaas adds)."""

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        if not _DEVICE.match(value):
            raise ValueError("use 'auto', 'cpu', 'cuda' or 'cuda:N'")
        return value

    @field_validator("train_step", "eval_step")
    @classmethod
    def _code(cls, value: str | None) -> str | None:
        if value is not None and not _CODE.match(value):
            raise ValueError("name a function as 'package.module:function'")
        return value

    @field_validator("options")
    @classmethod
    def _options(cls, value: dict[str, _Option]) -> dict[str, _Option]:
        taken = sorted(set(value) & set(RESERVED_OPTIONS))
        if taken:
            raise ValueError(f"{', '.join(taken)} are set by fedaas itself (reserved)")
        if len(value) > 64:
            raise ValueError("at most 64 options")
        return value

    @model_validator(mode="after")
    def _fits_task(self) -> TrainSection:
        only = {"loss": "regression", "class_weights": "classification", "pos_weight": "binary"}
        wrong = [
            k for k, task in only.items() if getattr(self, k) is not None and task != self.task
        ]
        if wrong:
            raise ValueError(f"task '{self.task}' does not use {', '.join(wrong)}")
        if self.huber_delta != 1.0 and self.loss != "huber":
            raise ValueError("huber_delta needs loss = 'huber'")
        if self.options and self.train_step is None and self.eval_step is None:
            raise ValueError("options are for train_step/eval_step; the job names neither")
        return self


class EvaluationSection(_Section):
    """How the global model is evaluated after every round.

    ``holdout``: a dataset on the coordinator (path or URL) for centralized
    evaluation. ``validation_split``: the share of each member's data kept
    aside for federated evaluation; 0 disables it. ``metrics``: what both
    report besides the loss (default: by task, :data:`DEFAULT_METRICS`).
    Members send metric STATES (counts, sums, binned confusion matrices) and
    the coordinator sums them before computing a metric
    (:mod:`fedaas.train.metrics`): never an average of members' AUROCs.
    """

    holdout: Annotated[str, Field(min_length=1, max_length=4096)] | None = None
    validation_split: Annotated[float, Field(ge=0, lt=1)] = 0.0
    metrics: list[Metric] | None = None

    @field_validator("metrics")
    @classmethod
    def _unique(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and len(set(value)) != len(value):
            raise ValueError("a metric is named twice")
        return value


def job_metrics(spec: JobSpec) -> tuple[str, ...]:
    """The metrics the job's evaluations report (besides the loss)."""
    chosen = spec.evaluation.metrics
    return tuple(chosen) if chosen is not None else DEFAULT_METRICS[spec.train.task]


def train_problems(spec: JobSpec) -> list[str]:
    """How ``[train]`` and ``[evaluation]`` fail to fit ``[data]`` and ``[privacy]``."""
    from fedaas.spec_privacy import PrivacyRecord

    train, classes = spec.train, spec.data.classes
    found: list[str] = []
    if train.task == "regression" and classes is not None:
        found.append("data.classes: a regression predicts one value: remove classes")
    if train.task != "regression" and classes is None:
        found.append(f"data.classes: required for task '{train.task}'")
    if train.task == "binary" and classes not in (None, 2):
        found.append(f"data.classes: task 'binary' has classes = 2 (labels 0 and 1), got {classes}")
    if (
        train.class_weights is not None
        and classes is not None
        and len(train.class_weights) != classes
    ):
        found.append(
            f"train.class_weights: {len(train.class_weights)} weights for {classes} classes"
        )
    unfit = [m for m in spec.evaluation.metrics or () if m not in TASK_METRICS[train.task]]
    if unfit:
        need = {"auroc": "binary", "mae": "regression", "rmse": "regression", "r2": "regression"}
        why = ", ".join(
            f"{m} ({'needs task ' + need[m] if m in need else 'not for regression'})" for m in unfit
        )
        found.append(
            f"evaluation.metrics: {why}; task '{train.task}' reports "
            f"{', '.join(TASK_METRICS[train.task])}"
        )
    if isinstance(spec.privacy, PrivacyRecord):
        if train.precision != "32":
            found.append(
                "train.precision: DP-SGD (record-level privacy) trains in float32: use '32'"
            )
        if train.grad_clip is not None:
            found.append(
                "train.grad_clip: DP-SGD already clips every record's gradient "
                "(privacy.clip_norm): remove grad_clip"
            )
        if train.train_step is not None:
            found.append(
                "train.train_step: DP-SGD (record-level privacy) runs fedaas's own loop, "
                "whose steps the accountant covers; a custom train_step is not accounted"
            )
    return found
