"""The ``[train]`` and ``[evaluation]`` sections: tasks, their options, which metric fits which task."""

from __future__ import annotations

from typing import Any

import pytest

from fedaas.spec import SpecError, parse_spec
from fedaas.spec_train import DEFAULT_METRICS, job_metrics
from fixtures.specs import make_spec


def _spec(train: dict[str, Any], classes: int | None = 2, **evaluation: Any) -> dict[str, Any]:
    spec = make_spec("t", train=train, evaluation=evaluation)
    if classes is None:
        spec["data"].pop("classes")
    else:
        spec["data"]["classes"] = classes
    return spec


@pytest.mark.parametrize(
    ("train", "classes", "evaluation", "message"),
    [
        ({"task": "regression"}, 2, {}, "data.classes: a regression predicts one value"),
        ({"task": "binary"}, 3, {}, "task 'binary' has classes = 2"),
        ({}, None, {}, "data.classes: required for task 'classification'"),
        ({}, 3, {"metrics": ["auroc"]}, "auroc (needs task binary)"),
        ({"task": "binary"}, 2, {"metrics": ["r2"]}, "r2 (needs task regression)"),
        ({"task": "regression"}, None, {"metrics": ["f1"]}, "f1 (not for regression)"),
        ({}, 2, {"metrics": ["f1", "f1"]}, "a metric is named twice"),
        ({"pos_weight": 2.0}, 2, {}, "task 'classification' does not use pos_weight"),
        ({"task": "binary", "loss": "huber"}, 2, {}, "task 'binary' does not use loss"),
        ({"class_weights": [1.0, 2.0, 3.0]}, 2, {}, "3 weights for 2 classes"),
        ({"device": "gpu0"}, 2, {}, "use 'auto', 'cpu', 'cuda' or 'cuda:N'"),
        ({"precision": "8"}, 2, {}, "train.precision"),
        ({"train_step": "/tmp/evil.py"}, 2, {}, "name a function as 'package.module:function'"),
        ({"options": {"a": 1}}, 2, {}, "the job names neither"),
        ({"task": "regression", "huber_delta": 2.0}, None, {}, "huber_delta needs loss"),
    ],
)
def test_what_does_not_fit_is_one_clear_error(
    train: dict[str, Any], classes: int | None, evaluation: dict[str, Any], message: str
) -> None:
    with pytest.raises(SpecError) as caught:
        parse_spec(_spec(train, classes, **evaluation))
    assert message in str(caught.value), caught.value


def test_dp_sgd_refuses_mixed_precision_and_grad_clip() -> None:
    spec = _spec({"precision": "bf16", "grad_clip": 1.0})
    spec["privacy"] = {"mechanism": "gaussian", "unit": "record", "noise_multiplier": 1.0}
    with pytest.raises(SpecError) as caught:
        parse_spec(spec)
    assert "DP-SGD (record-level privacy) trains in float32" in str(caught.value)
    assert "already clips every record's gradient" in str(caught.value)


def test_defaults_and_a_regression_round_trip() -> None:
    spec = parse_spec(_spec({"task": "regression", "loss": "huber"}, None))
    assert spec.data.classes is None and job_metrics(spec) == DEFAULT_METRICS["regression"]
    assert parse_spec(spec.to_dict()) == spec
    binary = parse_spec(_spec({"task": "binary", "lr_schedule": "cosine"}, 2, metrics=["auroc"]))
    assert job_metrics(binary) == ("auroc",) and binary.train.device == "auto"
