"""The model registry: built-in architectures and user plugins."""

from fedaas.models.registry import build_model, get_state, set_state

__all__ = ["build_model", "get_state", "set_state"]
