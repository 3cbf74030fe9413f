"""Job spec validation: every problem reported, each naming its key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from fedaas.spec import JobSpec, SpecError, load_spec, loads_spec, parse_spec
from fixtures.specs import make_spec

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "digits.toml"


def _problems(data: dict[str, Any]) -> list[str]:
    with pytest.raises(SpecError) as info:
        parse_spec(data)
    problems = info.value.problems
    assert problems and all(isinstance(p, str) and p for p in problems)
    assert str(info.value).startswith("invalid job spec: ")
    return problems


def test_example_is_accepted_as_written() -> None:
    spec = load_spec(EXAMPLE)
    assert isinstance(spec, JobSpec)
    assert spec.job.name == "digits-fedavg" and spec.job.rounds == 30 and spec.job.seed == 0
    assert spec.model.name == "mlp" and spec.model.hidden == [64]
    assert (spec.data.features, spec.data.classes) == (64, 10)
    assert spec.train.optimizer == "sgd" and spec.train.lr == 0.05
    assert spec.federation.clients_per_round == 10 and spec.federation.min_clients == 10
    assert spec.strategy.name == "fedavg"
    # what the coordinator stores and sends to members parses back to the same spec
    assert parse_spec(spec.to_dict()) == spec


def test_defaults_fill_missing_sections() -> None:
    spec = loads_spec(
        '[job]\nname = "x"\nrounds = 2\n[model]\nname = "logreg"\n[data]\nfeatures = 3\nclasses = 2\n'
    )
    assert spec.train.optimizer == "sgd" and spec.train.epochs == 1
    assert spec.federation.clients_per_round is None and spec.federation.min_clients == 1
    assert spec.evaluation.validation_split == 0.0
    assert spec.clients_for_round(7) == 7


def test_clients_for_round() -> None:
    base = make_spec("x", features=2, classes=2, train=None, federation=None)
    assert parse_spec(base | {"federation": {"clients_per_round": 3}}).clients_for_round(10) == 3
    assert parse_spec(base | {"federation": {"fraction": 0.25}}).clients_for_round(10) == 2
    assert parse_spec(base | {"federation": {"fraction": 0.01}}).clients_for_round(10) == 1
    assert parse_spec(base | {"federation": {"min_clients": 4}}).clients_for_round(2) == 4


def test_unknown_key_at_top_level(spec_data: dict[str, Any]) -> None:
    spec_data["trian"] = {"lr": 0.1}
    assert _problems(spec_data) == ["trian: unknown key"]


@pytest.mark.parametrize("section", ["job", "model", "data", "train", "federation", "strategy"])
def test_unknown_key_in_a_section_is_named(spec_data: dict[str, Any], section: str) -> None:
    spec_data[section]["lr_rate"] = 0.1
    assert _problems(spec_data) == [f"{section}.lr_rate: unknown key"]


def test_every_problem_is_reported_at_once(spec_data: dict[str, Any]) -> None:
    spec_data["train"]["lr_rate"] = 0.1
    spec_data["train"]["lr"] = -1
    spec_data["data"].pop("features")  # (classes may be missing: a regression has none)
    spec_data["extra"] = 1
    problems = _problems(spec_data)
    assert len(problems) == 4
    joined = "\n".join(problems)
    for where in ("train.lr_rate: unknown key", "train.lr:", "data.features: required", "extra:"):
        assert where in joined


@pytest.mark.parametrize(
    ("section", "key", "value", "expected"),
    [
        ("train", "lr", -0.1, "train.lr: Input should be greater than 0 (got -0.1)"),
        ("train", "lr", 0, "train.lr: Input should be greater than 0"),
        ("train", "optimizer", "rmsprop", "train.optimizer: Input should be 'sgd' or 'adam'"),
        ("train", "batch_size", 0, "train.batch_size: Input should be greater than or equal to 1"),
        ("train", "momentum", 1.0, "train.momentum: Input should be less than 1"),
        ("job", "rounds", 0, "job.rounds: Input should be greater than or equal to 1"),
        ("job", "name", "", "job.name: String should have at least 1 character"),
        ("job", "name", "a/b", "job.name: String should match pattern"),
        ("job", "seed", -1, "job.seed: Input should be greater than or equal to 0"),
        ("data", "classes", 1, "data.classes: Input should be greater than or equal to 2"),
        ("data", "features", 0, "data.features: Input should be greater than or equal to 1"),
        ("federation", "fraction", 1.5, "federation.fraction: Input should be less than or equal"),
        ("federation", "round_timeout", 0, "federation.round_timeout: Input should be greater"),
        ("strategy", "name", "fedprox", "strategy.name: Input should be 'fedavg'"),
        ("model", "name", "resnet", "model.name: unknown model 'resnet'"),
        ("model", "name", "plugin_model", "model.name: unknown model 'plugin_model'"),
        ("model", "name", "a:b:c", "model.name: unknown model"),
        ("model", "name", "1pkg.mod:f", "model.name: unknown model"),
        ("model", "hidden", [64, 0], "model.hidden.1: Input should be greater than or equal to 1"),
        # wrong types are errors, not silently coerced
        ("job", "rounds", True, "job.rounds: Input should be a valid integer (got True)"),
        ("job", "rounds", "10", "job.rounds: Input should be a valid integer"),
        ("train", "batch_size", 32.5, "train.batch_size: Input should be a valid integer"),
        ("train", "lr", "0.1", "train.lr: Input should be a valid number"),
        ("model", "hidden", [64.5], "model.hidden.0: Input should be a valid integer"),
    ],
)
def test_bad_value_is_named(
    spec_data: dict[str, Any], section: str, key: str, value: Any, expected: str
) -> None:
    spec_data[section][key] = value
    problems = _problems(spec_data)
    assert len(problems) == 1, problems
    assert problems[0].startswith(expected), problems


def test_min_clients_above_clients_per_round(spec_data: dict[str, Any]) -> None:
    spec_data["federation"].update(clients_per_round=2, min_clients=5)
    (problem,) = _problems(spec_data)
    assert problem.startswith("federation: min_clients (5) exceeds clients_per_round (2)")


def test_fraction_and_clients_per_round_together(spec_data: dict[str, Any]) -> None:
    spec_data["federation"]["fraction"] = 0.5
    (problem,) = _problems(spec_data)
    assert problem.startswith("federation: give clients_per_round or fraction, not both")


def test_mlp_without_hidden(spec_data: dict[str, Any]) -> None:
    del spec_data["model"]["hidden"]
    (problem,) = _problems(spec_data)
    assert problem.startswith("model: mlp needs at least one hidden size")


def test_logreg_with_hidden(spec_data: dict[str, Any]) -> None:
    spec_data["model"]["name"] = "logreg"
    (problem,) = _problems(spec_data)
    assert problem.startswith("model: logreg has no hidden layers")


def test_missing_section_and_not_a_table() -> None:
    assert "job: required key is missing" in _problems(
        {"model": {"name": "logreg"}, "data": {"features": 2, "classes": 2}}
    )
    with pytest.raises(SpecError, match="table of sections"):
        parse_spec([1, 2])  # type: ignore[arg-type]
    with pytest.raises(SpecError) as info:
        parse_spec({"job": 3, "model": {"name": "logreg"}, "data": {"features": 2, "classes": 2}})
    assert info.value.problems[0].startswith("job: ")


def test_long_inputs_are_shortened_in_the_message(spec_data: dict[str, Any]) -> None:
    spec_data["train"]["optimizer"] = "x" * 500
    (problem,) = _problems(spec_data)
    assert len(problem) < 200 and problem.endswith("...)")


def test_bad_toml_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="not valid TOML"):
        loads_spec("[job\nname=")
    with pytest.raises(SpecError, match="cannot read"):
        load_spec(tmp_path / "nope.toml")
    binary = tmp_path / "model.bin"
    binary.write_bytes(b"\xff\xfe\x00junk")
    with pytest.raises(SpecError, match="is not UTF-8 text"):
        load_spec(binary)


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_a_number_that_is_not_finite_is_named_as_such(value: str) -> None:
    text = EXAMPLE.read_text().replace("lr = 0.05", f"lr = {value}", 1)
    assert text != EXAMPLE.read_text()
    with pytest.raises(SpecError, match="train.lr: Input should be a finite number"):
        loads_spec(text)


def test_spec_is_immutable(spec_data: dict[str, Any]) -> None:
    spec = parse_spec(spec_data)
    with pytest.raises(ValueError):
        spec.train.lr = 1.0  # type: ignore[misc]


ROBUST_CASES = [
    ({"aggregator": "krum"}, {"min_clients": 4}, None, "krum with byzantine = 1 needs more than 4"),
    ({"aggregator": "median", "trim": 0.1}, {}, None, "aggregator 'median' does not use trim"),
    ({"aggregator": "mean", "byzantine": 2}, {}, None, "aggregator 'mean' does not use byzantine"),
    ({"aggregator": "trimmed_mean", "trim": 0.5}, {}, None, "strategy.trim"),
    ({"aggregator": "bulyan"}, {}, None, "strategy.aggregator"),
    (
        {"aggregator": "median"},
        {},
        {"mechanism": "gaussian", "noise_multiplier": 1.0, "clip_norm": 1.0},
        "placement 'central' makes only their sum private",
    ),
]


@pytest.mark.parametrize(("strategy", "federation", "privacy", "message"), ROBUST_CASES)
def test_robust_rules_are_checked_against_the_rest_of_the_spec(
    spec_data: dict[str, Any],
    strategy: dict[str, Any],
    federation: dict[str, Any],
    privacy: dict[str, Any] | None,
    message: str,
) -> None:
    spec_data["strategy"] = strategy
    spec_data["federation"].update(federation)
    if privacy is not None:
        spec_data["privacy"] = privacy
    with pytest.raises(SpecError) as info:
        parse_spec(spec_data)
    assert any(message in problem for problem in info.value.problems), info.value.problems


def test_robust_rules_that_fit_are_accepted(spec_data: dict[str, Any]) -> None:
    spec_data["federation"].update(min_clients=7, clients_per_round=10)
    spec_data["strategy"] = {"aggregator": "krum", "byzantine": 2, "krum_select": 4}
    assert parse_spec(spec_data).strategy.krum_select == 4
    spec_data["strategy"] = {"aggregator": "median", "norm_bound": 2.5}
    spec_data.pop("evaluation")  # the example's federated evaluation is not for a DP job
    spec_data["privacy"] = {
        "mechanism": "gaussian",
        "noise_multiplier": 1.0,
        "clip_norm": 1.0,
        "placement": "local",
    }
    assert parse_spec(spec_data).strategy.norm_bound == 2.5  # each update private on its own
    spec_data["federation"]["max_examples_per_member"] = 5000
    assert parse_spec(spec_data).federation.max_examples_per_member == 5000
