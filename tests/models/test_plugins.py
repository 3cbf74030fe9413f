"""Model plugins named ``module:factory`` in the spec: built with their options, clear errors.

Only code the operator allowed (``allowed_code``, from ``--allow-code``) is ever imported;
the attacks of issue 9 (``torch.hub:load``, ``logging:basicConfig``) are refused here and,
against real processes, in ``tests/client/test_member_policy.py`` and
``tests/server/test_code_allowlist.py``.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest
from torch import nn

from fedaas.models import build_model, get_state
from fedaas.models.registry import ModelError, code_allowed
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
    module = build_model(spec.model, spec.data, seed=0, allowed_code=ALLOWED)
    assert isinstance(module, nn.Module)
    shapes = {name: value.shape for name, value in get_state(module).items()}
    assert shapes == {"0.weight": (5, 64), "0.bias": (5,), "3.weight": (10, 5), "3.bias": (10,)}
    # the seed makes initialization reproducible, as the coordinator relies on
    again = get_state(build_model(spec.model, spec.data, seed=0, allowed_code=ALLOWED))
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
        ("plugin_model:tiny", {"depth": 3}, "'plugin_model:tiny' takes no option depth"),
        ("plugin_model:reexported", {}, "is not defined in an allowed package"),
        ("plugin_model:not_a_module", {}, "returned dict, not a torch.nn.Module"),
    ],
)
def test_plugin_errors_are_clear(
    spec_data: dict[str, Any], plugins: None, name: str, options: dict, message: str
) -> None:
    spec = _plugin_spec(spec_data, name, **options)
    with pytest.raises(ModelError, match=re.escape(message)):
        build_model(spec.model, spec.data, allowed_code=(*ALLOWED, "no_such_package"))


ALLOWED = ("plugin_model",)


@pytest.mark.parametrize(
    ("name", "allowed", "ok"),
    [
        ("mlp", (), True),
        ("logreg", (), True),
        ("mypkg.nets:small", ("mypkg",), True),
        ("mypkg.nets:small", ("mypkg.nets",), True),
        ("mypkg.nets:small", ("mypkg.netsx",), False),
        ("mypkgevil.nets:small", ("mypkg",), False),
        ("mypkg:small", ("mypkg.nets",), False),
        ("torch.hub:load", ("plugin_model",), False),
        ("logging:basicConfig", (), False),
    ],
)
def test_code_is_allowed_by_module_name_only(name: str, allowed: tuple, ok: bool) -> None:
    assert code_allowed(name, allowed) is ok


@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("torch.hub:load", {"repo_or_dir": "/tmp/evil", "model": "x", "source": "local"}),
        ("logging:basicConfig", {"filename": "/tmp/owned", "filemode": "w"}),
    ],
)
def test_code_not_allowed_is_never_imported(
    spec_data: dict[str, Any], name: str, options: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    imported: list[str] = []
    real = __import__("importlib").import_module
    monkeypatch.setattr("importlib.import_module", lambda n, *a: imported.append(n) or real(n, *a))
    spec = _plugin_spec(spec_data, name, **options)
    with pytest.raises(ModelError, match="has not allowed"):
        build_model(spec.model, spec.data, allowed_code=ALLOWED)
    assert imported == []


def test_a_model_over_the_parameter_cap_is_refused_before_it_is_allocated(
    spec_data: dict[str, Any], plugins: None
) -> None:
    data = copy.deepcopy(spec_data)
    data["model"] = {"name": "mlp", "hidden": [65536, 65536]}
    spec = parse_spec(data)
    with pytest.raises(ModelError, match="4,29[0-9],[0-9,]+ parameters; this node accepts at most"):
        build_model(spec.model, spec.data)
    small = _plugin_spec(spec_data, "plugin_model:tiny", width=5)
    with pytest.raises(ModelError, match="accepts at most 100"):
        build_model(small.model, small.data, allowed_code=ALLOWED, max_parameters=100)
