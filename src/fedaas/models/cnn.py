"""``cnn``: a small convolutional network for images that arrive as flat rows of pixels.

Image folders (:mod:`fedaas.data.images`) give each image as one row of
``width * height * channels`` floats in [0, 1], row-major (height, width,
channel). This model puts the row back into an image and runs a LeNet-style
stack (LeCun et al., "Gradient-based learning applied to document
recognition", Proc. IEEE 1998): per entry of ``[model] hidden`` (default
``[16, 32]``) a 3x3 convolution with that many channels, ReLU and 2x2 max
pooling (while the image is at least 2 pixels on a side), then one linear
layer to the outputs. No batch normalization: its running statistics are
per member and would not average meaningfully under FedAvg.

The image's size and mode come from ``[data]`` exactly as the member reads
the folder: ``image_size`` and ``image_mode`` when given, else a square
grayscale (``s*s`` features) or RGB (``3*s*s``) image.
"""

from __future__ import annotations

import torch
from torch import nn

from fedaas.data.images import image_shape
from fedaas.spec import DataSection

DEFAULT_CHANNELS = (16, 32)


def _layout(data: DataSection) -> tuple[int, int, int]:
    """``(channels, height, width)`` of the job's images (``ModelError`` when none fits)."""
    size = (data.image_size[0], data.image_size[1]) if data.image_size else None
    try:
        width, height, mode = image_shape(data.features, size, data.image_mode)
    except ValueError as exc:
        from fedaas.models.registry import ModelError  # registry imports this module

        raise ModelError(f"model cnn: {exc}") from None
    return (1 if mode == "L" else 3), height, width


def _plan(data: DataSection, hidden: list[int]) -> tuple[tuple[int, int, int], list[bool], int]:
    """The image layout, whether each block pools, and the flattened size after the blocks."""
    channels, height, width = _layout(data)
    pools = []
    for _ in hidden or DEFAULT_CHANNELS:
        pool = height >= 2 and width >= 2
        pools.append(pool)
        if pool:
            height, width = height // 2, width // 2
    last = (hidden or list(DEFAULT_CHANNELS))[-1]
    return (channels, height, width), pools, last * height * width


class FlatImageCNN(nn.Module):
    """Convolution blocks over a flat pixel row reshaped to ``(channels, height, width)``."""

    def __init__(self, data: DataSection, hidden: list[int], outputs: int) -> None:
        super().__init__()
        self.channels, self.height, self.width = _layout(data)
        _, pools, flat = _plan(data, hidden)
        blocks: list[nn.Module] = []
        width = self.channels
        for size, pool in zip(hidden or DEFAULT_CHANNELS, pools, strict=True):
            blocks += [nn.Conv2d(width, size, kernel_size=3, padding=1), nn.ReLU()]
            if pool:
                blocks.append(nn.MaxPool2d(2))
            width = size
        self.features = nn.Sequential(*blocks)
        self.head = nn.Linear(flat, outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        image = x.reshape(-1, self.height, self.width, self.channels).permute(0, 3, 1, 2)
        return self.head(torch.flatten(self.features(image), 1))


def small_cnn(data: DataSection, hidden: list[int], outputs: int) -> nn.Module:
    """The ``cnn`` built-in for the job's images, with ``outputs`` outputs."""
    return FlatImageCNN(data, list(hidden), outputs)


def cnn_parameters(data: DataSection, hidden: list[int], outputs: int) -> int:
    """How many parameters :func:`small_cnn` has, without building it."""
    (channels, _, _), _, flat = _plan(data, list(hidden))
    count, width = 0, channels
    for size in hidden or DEFAULT_CHANNELS:
        count += width * size * 9 + size
        width = size
    return count + flat * outputs + outputs
