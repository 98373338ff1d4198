"""Architectures an operator registers by import path, e.g.
``CL_ARCHITECTURES='{"lenet": "clbench.architectures:lenet_body"}'``, as `clbench service` does to run the service's
update path on a body the service does not ship."""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence

from torch import nn


def lenet_body(
    input_shape: Sequence[int], channels: Sequence[int] = (6, 16), hidden: Sequence[int] = (120, 84)
) -> nn.Module:
    """LeNet-5's shape (LeCun et al. 1998) for (C, H, W) or flat square grey images: (conv 5×5, padding 2 → ReLU →
    max-pool 2)×2 → fully connected layers with ReLU.  Features: the last hidden layer."""
    shape = tuple(input_shape)
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    if len(shape) == 1:
        side = math.isqrt(shape[0])
        if side * side != shape[0]:
            raise ValueError(f"lenet needs (C, H, W) inputs or a flat square image, got shape {shape}")
        shape = (1, side, side)
        layers["unflatten"] = nn.Unflatten(1, shape)
    if len(shape) != 3:
        raise ValueError(f"lenet needs (C, H, W) inputs, got shape {tuple(input_shape)}")
    c, h, w = shape
    for i, out in enumerate(channels, start=1):
        layers[f"conv{i}"] = nn.Conv2d(c, out, kernel_size=5, padding=2)
        layers[f"relu{i}"] = nn.ReLU()
        layers[f"pool{i}"] = nn.MaxPool2d(2)
        c, h, w = out, max(1, h // 2), max(1, w // 2)
    layers["flatten"] = nn.Flatten()
    width = c * h * w
    for i, out in enumerate(hidden, start=1):
        layers[f"fc{i}"] = nn.Linear(width, out)
        layers[f"relu_fc{i}"] = nn.ReLU()
        width = out
    return nn.Sequential(layers)
