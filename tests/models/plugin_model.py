"""Model factories for the plugin tests (``plugin_model:<factory>`` in a job spec)."""

from __future__ import annotations

from torch import nn
from torch.hub import load as reexported  # noqa: F401  (a factory from elsewhere: refused)


def tiny(features: int, classes: int, width: int = 8, dropout: float = 0.0) -> nn.Module:
    """A small MLP with options from ``[model].options``."""
    return nn.Sequential(
        nn.Linear(features, width), nn.ReLU(), nn.Dropout(dropout), nn.Linear(width, classes)
    )


def broken(features: int, classes: int) -> nn.Module:
    raise RuntimeError("no GPU here")


def not_a_module(features: int, classes: int) -> object:
    return {"features": features, "classes": classes}
