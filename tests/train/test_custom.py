"""A job's own train_step/eval_step: run only where the operator allowed its package."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from fedaas.client.policy import MemberPolicy
from fedaas.client.privacy import MemberPrivacy
from fedaas.client.training import evaluate_round, evaluation_report, train_round
from fedaas.data.dataset import ArrayDataset
from fedaas.models import build_model, get_state
from fedaas.protocol import NoPrivacy
from fedaas.spec import JobSpec, SpecError, parse_spec
from fedaas.train.custom import StepError, load_step
from fedaas.train.local import evaluate

HERE = Path(__file__).resolve().parent  # steps_pkg lives here


@pytest.fixture(autouse=True)
def _steps_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(HERE))


def _spec(**train: Any) -> JobSpec:
    return parse_spec(
        {
            "job": {"name": "custom", "rounds": 3},
            "model": {"name": "logreg"},
            "data": {"features": 4, "classes": 2},
            "train": {
                "train_step": "steps_pkg.steps:train_step",
                "eval_step": "steps_pkg.steps:eval_step",
                "options": {"scale": 2.0},
                "lr": 0.1,
                "epochs": 2,
                "batch_size": 10,
                **train,
            },
            "evaluation": {"validation_split": 0.2, "metrics": ["f1"]},
        }
    )


def _data(spec: JobSpec) -> ArrayDataset:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 4)).astype(np.float32)
    return ArrayDataset.checked(x, (x[:, 0] > 0).astype(np.int64), spec.data)


def test_a_step_outside_the_allowed_packages_is_never_imported() -> None:
    with pytest.raises(StepError, match="train_step 'steps_pkg.absent:f' is code this node's"):
        load_step("steps_pkg.absent:f", ["other"], "train_step")  # refused before any import
    with pytest.raises(StepError, match="not defined in an allowed package"):
        load_step("steps_pkg.steps:nn", ["steps_pkg"], "train_step")  # torch's, re-exported
    policy = MemberPolicy()
    problems = policy.problems(_spec())
    assert any("train_step 'steps_pkg.steps:train_step' is code" in p for p in problems)
    assert any("eval_step" in p and "--allow-code" in p for p in problems)
    assert policy.with_code(["steps_pkg"]).problems(_spec()) == []


def test_the_custom_step_trains_the_round_with_its_options(tmp_path: Path) -> None:
    spec = _spec()
    data = _data(spec)
    module = build_model(spec.model, spec.data, seed=0)
    start = get_state(module)
    update, _, metrics = train_round(
        module, data, spec.train, start, NoPrivacy(), MemberPrivacy(tmp_path, "mem://x"),
        job_id="j", number=2, seed=[1, 2], max_epsilon=None, rounds=3,
        allowed_code=["steps_pkg"],
    )  # fmt: skip
    assert metrics["batches"] == 5 and metrics["round"] == 2 and metrics["l1"] > 0
    assert any(np.abs(v).sum() > 0 for v in update.values())
    with pytest.raises(StepError, match="has not allowed"):
        train_round(
            module, data, spec.train, start, NoPrivacy(), MemberPrivacy(tmp_path, "mem://x"),
            job_id="j", number=2, seed=[1, 2], max_epsilon=None, rounds=3,
        )  # fmt: skip


def test_eval_step_runs_without_gradients_next_to_the_metric_states() -> None:
    spec = _spec()
    module = build_model(spec.model, spec.data, seed=0)
    result, custom = evaluate_round(
        module, _data(spec), spec, number=1, allowed_code=["steps_pkg"], device=torch.device("cpu")
    )
    assert custom["grad_enabled"] == 0.0 and custom["val_l1"] > 0
    assert set(result.states) == {"loss", "stats"}  # what f1 is computed from, once summed
    whole = evaluate(module, _data(spec), cfg=spec.train, classes=spec.data.classes,
                     metrics=("f1",), device=torch.device("cpu"))  # fmt: skip
    assert result.states == whole.states and result.loss == whole.loss
    assert result.accuracy == whole.accuracy and "f1" in whole.metrics
    report = evaluation_report(module, _data(spec), spec, 1, ["steps_pkg"])
    assert report.metrics == custom and report.states == result.states


def test_what_a_step_returns_is_checked() -> None:
    spec = _spec(train_step="steps_pkg.steps:not_metrics")
    module = build_model(spec.model, spec.data, seed=0)
    with pytest.raises(StepError, match="bad = nan: metrics are finite numbers"):
        train_round(
            module, _data(spec), spec.train, get_state(module), NoPrivacy(),
            MemberPrivacy(Path("/nonexistent"), "mem://x"), job_id="j", number=1, seed=[1],
            max_epsilon=None, rounds=3, allowed_code=["steps_pkg"],
        )  # fmt: skip


def test_reserved_options_and_dp_sgd_with_a_custom_step_are_spec_errors() -> None:
    with pytest.raises(SpecError, match="lr are set by fedaas itself"):
        _spec(options={"lr": 1.0})
    with pytest.raises(SpecError, match="a custom train_step is not accounted"):
        parse_spec(
            _spec().to_dict()
            | {"privacy": {"mechanism": "gaussian", "unit": "record", "noise_multiplier": 1.0}}
            | {"evaluation": {}}
        )
