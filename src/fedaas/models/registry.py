"""Build the ``torch.nn.Module`` a job names, and move its weights in and out.

Built-ins: ``logreg`` (one linear layer, multinomial logistic regression) and
``mlp`` (linear layers with ReLU between them, sizes from ``hidden``). Any
other name of the form ``package.module:factory`` imports ``factory`` and calls
it with ``features=``, ``classes=`` and the job's ``[model].options``; it must
return a ``torch.nn.Module``. Factories run on the coordinator and on every
member, so a plugin must be installed on both.

The wire state of a model is every floating-point entry of its
``state_dict`` as float32; integer buffers (e.g. BatchNorm's batch counter)
stay local.
"""

from __future__ import annotations

import importlib

import numpy as np
import torch
from torch import nn

from fedaas.spec import DataSection, ModelSection


class ModelError(ValueError):
    """The job's model cannot be built."""


def _mlp(features: int, hidden: list[int], classes: int) -> nn.Module:
    layers: list[nn.Module] = []
    width = features
    for size in hidden:
        layers += [nn.Linear(width, size), nn.ReLU()]
        width = size
    layers.append(nn.Linear(width, classes))
    return nn.Sequential(*layers)


def build_model(model: ModelSection, data: DataSection, seed: int | None = None) -> nn.Module:
    """Instantiate the job's model; with ``seed``, initialization is reproducible."""
    if seed is not None:
        torch.manual_seed(seed)
    if model.name == "logreg":
        return nn.Sequential(nn.Linear(data.features, data.classes))
    if model.name == "mlp":
        return _mlp(data.features, model.hidden, data.classes)
    module_name, _, attr = model.name.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ModelError(f"cannot load model factory {model.name!r}: {exc}") from None
    try:
        built = factory(features=data.features, classes=data.classes, **model.options)
    except Exception as exc:
        raise ModelError(f"model factory {model.name!r} failed: {exc}") from None
    if not isinstance(built, nn.Module):
        raise ModelError(
            f"model factory {model.name!r} returned {type(built).__name__}, not a torch.nn.Module"
        )
    return built


def parameter_count(model: ModelSection, data: DataSection) -> int | None:
    """Parameters of a built-in model without building it (``None`` for plugins)."""
    if model.name == "logreg":
        return data.features * data.classes + data.classes
    if model.name == "mlp":
        widths = [data.features, *model.hidden, data.classes]
        return sum(a * b + b for a, b in zip(widths, widths[1:], strict=False))
    return None


def get_state(module: nn.Module) -> dict[str, np.ndarray]:
    """The module's floating-point state as float32 numpy arrays (copies)."""
    return {
        name: value.detach().to(torch.float32).cpu().numpy().copy()
        for name, value in module.state_dict().items()
        if value.is_floating_point()
    }


def set_state(module: nn.Module, state: dict[str, np.ndarray]) -> None:
    """Load float32 arrays into the module's floating-point state."""
    current = module.state_dict()
    with torch.no_grad():
        for name, array in state.items():
            target = current[name]
            target.copy_(torch.from_numpy(np.asarray(array)).to(target.dtype))
