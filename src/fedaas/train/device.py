"""Where a member trains: its device, mixed precision, and batches moved there once.

``[train] device = "auto"`` is a GPU when the member has one, else the CPU;
``cuda``/``cuda:N`` on a member without that GPU is an error with the
reason (the member then declines the job). The coordinator never calls
:func:`resolve_device`: it evaluates on the CPU. Mixed precision is
``torch.autocast`` (``bf16``: bfloat16, no loss scaling needed; ``16``:
float16 with a ``GradScaler``, CUDA only, as float16 autocast on the CPU is
not supported for training). A batch's numpy arrays become tensors without
a copy (``torch.from_numpy``); on CUDA they are pinned and copied with
``non_blocking=True``, on the CPU they are used as they are.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import torch

from fedaas.spec_train import TrainSection


class DeviceError(ValueError):
    """The job asks for a device this member does not have."""


def resolve_device(name: str) -> torch.device:
    """``auto`` -> ``cuda`` when available, else ``cpu``; a named GPU must exist."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(
                f"the job asks for device {name!r} and this member has no CUDA GPU "
                "(or a CPU-only build of torch)"
            )
        index = device.index or 0
        if index >= torch.cuda.device_count():
            raise DeviceError(
                f"the job asks for device {name!r}; this member has "
                f"{torch.cuda.device_count()} GPU(s)"
            )
    return device


def check_precision(cfg: TrainSection, device: torch.device) -> None:
    """Refuse a precision the device cannot train in (float16 needs CUDA)."""
    if cfg.precision == "16" and device.type != "cuda":
        raise DeviceError(
            "precision '16' (float16 with loss scaling) needs a CUDA GPU; "
            f"this member trains on {device.type}: use 'bf16' or '32'"
        )


def autocast(cfg: TrainSection, device: torch.device) -> contextlib.AbstractContextManager:
    """The forward pass's mixed-precision context (a no-op for ``precision = "32"``)."""
    if cfg.precision == "32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if cfg.precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def grad_scaler(cfg: TrainSection, device: torch.device) -> torch.amp.GradScaler | None:
    """A loss scaler for float16 training on CUDA; ``None`` otherwise."""
    if cfg.precision == "16" and device.type == "cuda":
        return torch.amp.GradScaler("cuda")
    return None


def to_device(array: np.ndarray, device: torch.device) -> torch.Tensor:
    """One batch array on ``device``: no copy on the CPU, pinned + async to a GPU."""
    tensor = torch.from_numpy(np.ascontiguousarray(array))
    if device.type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor if device.type == "cpu" else tensor.to(device)


def on_device(
    batches: Iterator[tuple[np.ndarray, np.ndarray]], device: torch.device
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Each ``(x, y)`` batch moved to ``device`` once."""
    for x, y in batches:
        yield to_device(x, device), to_device(y, device)
