"""Build the ``torch.nn.Module`` a job names, and move its weights in and out.

Built-ins: ``logreg`` (one linear layer, multinomial logistic regression) and
``mlp`` (linear layers with ReLU between them, sizes from ``hidden``). Any
other name of the form ``package.module:factory`` names user code, which a job
spec would otherwise run on the coordinator and on every member: it is
imported and called only if the operator of *this* process allowed its
package (``--allow-code PKG``, :func:`code_allowed`), matched on the module
name from the spec (never on a path), before anything is imported. The
factory must also be defined in an allowed module (a re-exported
``torch.hub.load`` or ``logging.basicConfig`` is refused), and it receives
``features=``, ``classes=`` and only the ``[model].options`` its signature
names (no ``**kwargs`` catch-all). It must return a ``torch.nn.Module``.
Models over :data:`MAX_PARAMETERS` are refused before any memory is
allocated (plugins are first built on PyTorch's ``meta`` device).

The wire state of a model is every floating-point entry of its
``state_dict`` as float32; integer buffers (e.g. BatchNorm's batch counter)
stay local.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch
from torch import nn

from fedaas.models.cnn import cnn_parameters, small_cnn
from fedaas.spec import BUILTIN_MODELS, DataSection, ModelSection

MAX_PARAMETERS = 250_000_000
"""1 GB of float32: the coordinator refuses larger models at submission, members by default."""


class ModelError(ValueError):
    """The job's model cannot be built (or may not be: code not allowed, too large)."""


def code_allowed(name: str, allowed_code: Iterable[str]) -> bool:
    """Whether model ``name`` may be built here: a built-in, or code in an allowed package.

    ``allowed_code`` holds package or module names (``mypkg``, ``mypkg.models``);
    ``mypkg.models.vision:Net`` is allowed by either, never by ``my`` or ``mypkg.mod``.
    """
    if name in BUILTIN_MODELS:
        return True
    module = name.partition(":")[0]
    return _in_packages(module, allowed_code)


def _in_packages(module: str, packages: Iterable[str]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in packages if p)


def _mlp(features: int, hidden: list[int], classes: int) -> nn.Module:
    layers: list[nn.Module] = []
    width = features
    for size in hidden:
        layers += [nn.Linear(width, size), nn.ReLU()]
        width = size
    layers.append(nn.Linear(width, classes))
    return nn.Sequential(*layers)


def load_code(
    name: str, allowed: Iterable[str], what: str = "model", noun: str | None = None
) -> Callable[..., Any]:
    """The function ``package.module:attr`` names, imported only if its module is allowed.

    The allowlist is checked on the module name first (nothing is imported
    otherwise), then the function must be defined in an allowed module.
    ``what`` names it in errors (``model``, ``train_step``, ``eval_step``),
    ``noun`` (default ``what``) where it is loaded.
    """
    allowed, noun = tuple(allowed), noun or what
    if not code_allowed(name, allowed):
        shown = ", ".join(allowed) if allowed else "none"
        raise ModelError(
            f"{what} {name!r} is code this node's operator has not allowed "
            f"(allowed packages: {shown}; the operator adds one with --allow-code PKG)"
        )
    module_name, _, attr = name.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ModelError(f"cannot load {noun} {name!r}: {exc}") from None
    home = getattr(factory, "__module__", None)
    if not callable(factory) or not isinstance(home, str) or not _in_packages(home, allowed):
        raise ModelError(
            f"{noun} {name!r} is not defined in an allowed package "
            f"(it comes from {home or 'nowhere'}): only code the operator allowed is run"
        )
    return factory


def _factory(name: str, allowed: tuple[str, ...]) -> Callable[..., Any]:
    """Import the factory ``name`` names, only if its module is allowed (checked first)."""
    return load_code(name, allowed, "model", "model factory")


def _factory_options(name: str, factory: Callable[..., Any], options: dict[str, Any]) -> None:
    """Refuse options the factory does not name: no ``**kwargs`` pass-through."""
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        raise ModelError(f"model factory {name!r} has no inspectable signature") from None
    named = {
        key
        for key, p in params.items()
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        and key not in ("features", "classes")
    }
    unknown = sorted(set(options) - named)
    if unknown:
        raise ModelError(
            f"model factory {name!r} takes no option {', '.join(unknown)} "
            f"(its options: {', '.join(sorted(named)) or 'none'})"
        )


def _call(name: str, factory: Callable[..., Any], data: DataSection, options: dict) -> nn.Module:
    try:
        built = factory(features=data.features, classes=data.classes, **options)
    except Exception as exc:
        raise ModelError(f"model factory {name!r} failed: {exc}") from None
    if not isinstance(built, nn.Module):
        raise ModelError(
            f"model factory {name!r} returned {type(built).__name__}, not a torch.nn.Module"
        )
    return built


def _check_size(count: int, limit: int) -> None:
    if count > limit:
        raise ModelError(f"the model has {count:,} parameters; this node accepts at most {limit:,}")


def build_model(
    model: ModelSection,
    data: DataSection,
    seed: int | None = None,
    *,
    task: str = "classification",
    allowed_code: Iterable[str] = (),
    max_parameters: int = MAX_PARAMETERS,
) -> nn.Module:
    """Instantiate the job's model; with ``seed``, initialization is reproducible.

    The model has ``[data] classes`` outputs for a classification and ONE
    for ``task`` binary (a logit) or regression (a value); a factory receives
    that count as ``classes=``.

    Raises :class:`ModelError` for code outside ``allowed_code`` (nothing is
    imported then) and for a model over ``max_parameters`` (nothing is allocated).
    """
    data = data.model_copy(update={"classes": output_size(task, data.classes)})
    size = parameter_count(model, data)
    if size is not None:
        _check_size(size, max_parameters)
    if seed is not None:
        torch.manual_seed(seed)
    if model.name == "logreg":
        return nn.Sequential(nn.Linear(data.features, data.classes))
    if model.name == "mlp":
        return _mlp(data.features, model.hidden, data.classes)
    if model.name == "cnn":  # models/cnn.py: images given as flat pixel rows
        return small_cnn(data, model.hidden, data.classes)
    factory = _factory(model.name, tuple(allowed_code))
    _factory_options(model.name, factory, dict(model.options))
    try:
        with torch.device("meta"):  # count first, without allocating a byte
            shadow = _call(model.name, factory, data, dict(model.options))
        _check_size(sum(p.numel() for p in shadow.parameters()), max_parameters)
    except ModelError as exc:
        if "parameters;" in str(exc):
            raise
    if seed is not None:
        torch.manual_seed(seed)
    built = _call(model.name, factory, data, dict(model.options))
    _check_size(sum(p.numel() for p in built.parameters()), max_parameters)
    return built


def output_size(task: str, classes: int | None) -> int:
    """How many outputs the task's model has: one per class, or one (binary, regression)."""
    if task == "classification":
        if classes is None:
            raise ModelError("a classification needs data.classes")
        return classes
    return 1


def parameter_count(
    model: ModelSection, data: DataSection, task: str = "classification"
) -> int | None:
    """Parameters of a built-in model without building it (``None`` for plugins)."""
    data = data.model_copy(update={"classes": output_size(task, data.classes)})
    if model.name == "logreg":
        return data.features * data.classes + data.classes
    if model.name == "mlp":
        widths = [data.features, *model.hidden, data.classes]
        return sum(a * b + b for a, b in zip(widths, widths[1:], strict=False))
    if model.name == "cnn":
        return cnn_parameters(data, model.hidden, data.classes)
    return None


def get_state(module: nn.Module) -> dict[str, np.ndarray]:
    """The module's floating-point state as float32 numpy arrays (copies)."""
    state = {}
    for name, value in module.state_dict().items():
        if not value.is_floating_point():
            continue
        if value.dtype != torch.float32 or value.device.type != "cpu":
            value = value.to(torch.float32).cpu()
        state[name] = value.detach().numpy().copy()
    return state


def set_state(module: nn.Module, state: dict[str, np.ndarray]) -> None:
    """Load float32 arrays into the module's floating-point state."""
    current = module.state_dict()
    with torch.no_grad():
        for name, array in state.items():
            target = current[name]
            target.copy_(torch.from_numpy(np.asarray(array)))  # copy_ casts as .to() does
