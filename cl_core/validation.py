"""Input checks shared by the learning core, the store and the service.

Every failure is a `ValueError` whose message names the problem and the offending sample's index, so that the
service can turn it into a 4xx answer that points at the bad item.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

ECHO_LIMIT = 200
"""At most this many characters of a caller's value are repeated in an error message."""


def shown(value: object, limit: int = ECHO_LIMIT) -> str:
    """``repr(value)`` for an error message, cut to ``limit`` characters (a 1 MB label is not echoed whole)."""
    if isinstance(value, str) and len(value) > limit:
        return f"{value[:limit]!r}… ({len(value)} characters)"
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 3 * limit:
        # not str(): it is slow for huge integers, and refused beyond 4300 digits
        return f"an integer of magnitude beyond 10^{int((value.bit_length() - 1) * 0.30103)}"
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text)} characters)"


class InvalidData(ValueError):
    """A ValueError that also carries the offending field and index, for clear API errors."""

    def __init__(self, message: str, *, field: str | None = None, index: int | None = None) -> None:
        super().__init__(message)
        self.field = field
        self.index = index


def check_inputs(inputs: Tensor, input_shape: Sequence[int] | None = None, *, field: str = "inputs") -> None:
    """A non-empty float batch of the expected per-sample shape, with no NaN or Inf."""
    if not isinstance(inputs, Tensor):
        raise InvalidData(f"{field} must be a tensor, got {type(inputs).__name__}", field=field)
    if inputs.dim() == 0 or inputs.shape[0] == 0:
        raise InvalidData(f"{field} is empty: at least one sample is needed", field=field)
    if input_shape is not None and tuple(inputs.shape[1:]) != tuple(input_shape):
        raise InvalidData(
            f"{field} have shape {tuple(inputs.shape[1:])} per sample, expected {tuple(input_shape)}",
            field=field,
        )
    if inputs.is_floating_point():
        finite = torch.isfinite(inputs.reshape(inputs.shape[0], -1)).all(dim=1)
        if not bool(finite.all()):
            index = int((~finite).nonzero()[0, 0])
            raise InvalidData(f"{field}[{index}] contains NaN or Inf", field=field, index=index)


def check_targets(targets: Tensor, num_samples: int, num_classes: int | None = None, *, field: str = "targets") -> None:
    """Integer class indices, one per sample, within [0, num_classes)."""
    if not isinstance(targets, Tensor) or targets.dtype not in (
        torch.int64,
        torch.int32,
        torch.int16,
        torch.uint8,
    ):
        raise InvalidData(f"{field} must be an integer tensor of class indices", field=field)
    if targets.dim() != 1 or targets.shape[0] != num_samples:
        raise InvalidData(
            f"{field} must have one label per sample: got shape {tuple(targets.shape)} for {num_samples} samples",
            field=field,
        )
    bad = targets < 0
    if num_classes is not None:
        bad |= targets >= num_classes
    if bool(bad.any()):
        index = int(bad.nonzero()[0, 0])
        limit = f"[0, {num_classes})" if num_classes is not None else "non-negative"
        raise InvalidData(
            f"{field}[{index}] = {int(targets[index])} is not a valid class index ({limit})",
            field=field,
            index=index,
        )


LABEL_MAX_LENGTH = 64


def normalize_label(label: object, index: int, *, field: str = "label") -> str:
    """A class name: a non-empty printable string of at most 64 characters; an integer is taken as its decimal."""
    if isinstance(label, bool):
        raise InvalidData(
            f"{field} of sample {index} must be a string or an integer, got a boolean",
            field=field,
            index=index,
        )
    if isinstance(label, float) and label.is_integer():
        label = int(label)
    if isinstance(label, int):  # the bit length first: str() of a huge integer is slow, or refused
        if label.bit_length() > 4 * LABEL_MAX_LENGTH or len(str(label)) > LABEL_MAX_LENGTH:
            raise InvalidData(
                f"{field} of sample {index} must be 1-{LABEL_MAX_LENGTH} characters, got {shown(label)}",
                field=field,
                index=index,
            )
        return str(label)
    if not isinstance(label, str):
        raise InvalidData(
            f"{field} of sample {index} must be a string or an integer, got {type(label).__name__}",
            field=field,
            index=index,
        )
    text = label.strip()
    if not text or len(text) > LABEL_MAX_LENGTH or not text.isprintable():
        raise InvalidData(
            f"{field} of sample {index} must be 1-{LABEL_MAX_LENGTH} printable characters, got {shown(label)}",
            field=field,
            index=index,
        )
    return text
