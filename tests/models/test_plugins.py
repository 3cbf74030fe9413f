"""Model plugins named ``module:factory`` in the spec: built with their options, clear errors."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest
from torch import nn

from fedaas.models import build_model, get_state
from fedaas.models.registry import ModelError
from fedaas.spec import JobSpec, parse_spec

# plugins ---------------------------------------------------------------------


@pytest.fixture
def plugins(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make ``tests/models/plugin_model.py`` importable as ``plugin_model``."""
    monkeypatch.syspath_prepend(str(Path(__file__).parent))


def _plugin_spec(spec_data: dict[str, Any], name: str, **options: Any) -> JobSpec:
    data = copy.deepcopy(spec_data)
    data["model"] = {"name": name, "options": options}
    return parse_spec(data)


@pytest.mark.parametrize("name", ["plugin_model:tiny", "my_org.models.vision:ResNet18"])
def test_plugin_name_is_accepted_by_the_spec(spec_data: dict[str, Any], name: str) -> None:
    assert _plugin_spec(spec_data, name).model.name == name


def test_plugin_model_is_built_with_options(spec_data: dict[str, Any], plugins: None) -> None:
    spec = _plugin_spec(spec_data, "plugin_model:tiny", width=5, dropout=0.1)
    module = build_model(spec.model, spec.data, seed=0)
    assert isinstance(module, nn.Module)
    shapes = {name: value.shape for name, value in get_state(module).items()}
    assert shapes == {"0.weight": (5, 64), "0.bias": (5,), "3.weight": (10, 5), "3.bias": (10,)}
    # the seed makes initialization reproducible, as the coordinator relies on
    again = get_state(build_model(spec.model, spec.data, seed=0))
    for name, value in get_state(module).items():
        assert (again[name] == value).all()


@pytest.mark.parametrize(
    ("name", "options", "message"),
    [
        ("plugin_model:missing", {}, "cannot load model factory 'plugin_model:missing'"),
        (
            "no_such_package.models:net",
            {},
            "cannot load model factory 'no_such_package.models:net'",
        ),
        ("plugin_model:broken", {}, "model factory 'plugin_model:broken' failed: no GPU here"),
        ("plugin_model:tiny", {"depth": 3}, "model factory 'plugin_model:tiny' failed"),
        ("plugin_model:not_a_module", {}, "returned dict, not a torch.nn.Module"),
    ],
)
def test_plugin_errors_are_clear(
    spec_data: dict[str, Any], plugins: None, name: str, options: dict, message: str
) -> None:
    spec = _plugin_spec(spec_data, name, **options)
    with pytest.raises(ModelError, match=re.escape(message)):
        build_model(spec.model, spec.data)
