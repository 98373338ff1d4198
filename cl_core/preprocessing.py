"""How an image becomes a model input: a model's preprocessing spec, and the one transform that applies it.

A spec ``{mode, size, scale, mean, std}`` says: convert the image to ``mode`` (``"L"``: one grey channel, ``"RGB"``:
three), resize it to ``size`` = [height, width], map the 8-bit pixel values p (0-255) linearly onto the range
``scale`` = [low, high], then normalise channel c as (x − mean[c]) / std[c]:

    x = (low + (high − low) · p / 255 − mean[c]) / std[c]          (float32)

The result is laid out channels first, (C, H, W) in row-major order, and reshaped to the model's input shape, so
an "L" image of 28×28 fits an input shape [784] (row by row), [28, 28] or [1, 28, 28]; an "RGB" image of 32×32 fits
[3072] (the red plane, then green, then blue) or [3, 32, 32].  The product of the input shape must be C·H·W.

The defaults (scale [0, 1], mean 0, std 1) give p / 255 exactly, the scaling of the protocol's MNIST data
(`cl_core.data`), so a PNG of a training digit decodes to the very float32 values the model was trained on.
Decoding and resizing (Pillow) belong to the service; this module is numpy only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from cl_core.validation import shown

MODES: dict[str, int] = {"L": 1, "RGB": 3}
"""Accepted modes and their channel counts."""
MAX_SIDE = 4096
"""Largest height or width an image is resized to."""
MAX_VALUE = 1e6
"""Largest magnitude of scale, mean and std values (keeps the results finite in float32)."""
FIELDS = ("mode", "size", "scale", "mean", "std")


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{what} must be a number, got {shown(value, 60)}")
    number = float(value)
    if not math.isfinite(number) or abs(number) > MAX_VALUE:
        raise ValueError(f"{what} must be a finite number of magnitude at most {MAX_VALUE:g}, got {shown(value, 60)}")
    return number


def _numbers(value: Any, what: str, lengths: Sequence[int]) -> tuple[float, ...]:
    items = value if isinstance(value, (list, tuple)) else [value]
    if len(items) not in lengths:
        allowed = " or ".join(str(n) for n in lengths)
        raise ValueError(f"{what} must have {allowed} values, got {len(items)}")
    return tuple(_number(v, f"{what}[{i}]") for i, v in enumerate(items))


@dataclass(frozen=True)
class Preprocessing:
    """A model's image preprocessing (see the module docstring); build it with `from_json` to have it checked."""

    mode: str
    size: tuple[int, int]  # (height, width)
    scale: tuple[float, float] = (0.0, 1.0)
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)

    @classmethod
    def from_json(cls, data: Any) -> Preprocessing:
        """A checked spec from its JSON form; ValueError naming the bad field otherwise."""
        if not isinstance(data, dict):
            raise ValueError(f"preprocessing must be an object with {', '.join(FIELDS)}, got {shown(data, 60)}")
        unknown = sorted(str(k) for k in data if k not in FIELDS)
        if unknown:
            raise ValueError(f"preprocessing has unknown fields {shown(unknown, 100)}; known: {', '.join(FIELDS)}")
        mode = data.get("mode")
        if mode not in MODES:
            raise ValueError(f"preprocessing.mode must be one of {', '.join(MODES)}, got {shown(mode, 60)}")
        size = data.get("size")
        if (
            not isinstance(size, (list, tuple))
            or len(size) != 2
            or not all(isinstance(s, int) and not isinstance(s, bool) and 1 <= s <= MAX_SIDE for s in size)
        ):
            raise ValueError(f"preprocessing.size must be [height, width], each 1-{MAX_SIDE}, got {shown(size, 60)}")
        low, high = _numbers(data.get("scale", [0.0, 1.0]), "preprocessing.scale", (2,))
        if low == high:
            raise ValueError("preprocessing.scale must be a range [low, high] with low ≠ high")
        channels = MODES[mode]
        lengths = (1,) if channels == 1 else (1, channels)
        mean = _numbers(data.get("mean", [0.0]), "preprocessing.mean", lengths)
        std = _numbers(data.get("std", [1.0]), "preprocessing.std", lengths)
        if any(s <= 0 for s in std):
            raise ValueError("preprocessing.std values must be positive")
        return cls(mode, (int(size[0]), int(size[1])), (low, high), mean, std)

    def to_json(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "size": list(self.size),
            "scale": list(self.scale),
            "mean": list(self.mean),
            "std": list(self.std),
        }

    @property
    def channels(self) -> int:
        return MODES[self.mode]

    @property
    def values(self) -> int:
        """Numbers per preprocessed image (C·H·W)."""
        return self.channels * self.size[0] * self.size[1]

    def check_input_shape(self, input_shape: Sequence[int]) -> None:
        """ValueError unless an image of this spec fills exactly ``input_shape``."""
        if math.prod(input_shape) != self.values:
            height, width = self.size
            raise ValueError(
                f"preprocessing gives {self.channels}×{height}×{width} = {self.values} values per image, but the "
                f"input shape {list(input_shape)} holds {math.prod(input_shape)}"
            )

    def apply(self, pixels: np.ndarray, input_shape: Sequence[int]) -> np.ndarray:
        """float32 model input from 8-bit pixels of shape (H, W) or (H, W, C), already converted and resized."""
        height, width = self.size
        if pixels.dtype != np.uint8 or pixels.shape[:2] != (height, width):
            raise ValueError(f"expected uint8 pixels of {height}×{width}, got {pixels.dtype} {pixels.shape}")
        planes = pixels.reshape(height, width, -1).transpose(2, 0, 1)  # (C, H, W)
        if planes.shape[0] != self.channels:
            raise ValueError(f"expected {self.channels} channels, got {planes.shape[0]}")
        x = planes.astype(np.float32) / np.float32(255)  # exactly the protocol's scaling
        low, high = self.scale
        if (low, high) != (0.0, 1.0):
            x = np.float32(low) + x * np.float32(high - low)
        if any(m != 0.0 for m in self.mean) or any(s != 1.0 for s in self.std):
            mean = np.asarray(self.mean, dtype=np.float32).reshape(-1, 1, 1)
            std = np.asarray(self.std, dtype=np.float32).reshape(-1, 1, 1)
            x = (x - mean) / std
        return np.ascontiguousarray(x, dtype=np.float32).reshape(tuple(input_shape))
