"""An operator's own architecture, registered by import path (CL_ARCHITECTURES) in the tests."""

from collections.abc import Sequence

from torch import nn


def tiny_body(input_shape: Sequence[int], width: int = 4) -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(input_shape[0], width), nn.Tanh())
