"""Turning JSON inputs and labels into checked tensors, so that nothing of a bad request is ever stored."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from cl_core.validation import InvalidData, normalize_label


def to_tensor(values: Sequence[Any], input_shape: Sequence[int], field: str, where: str = "{field}[{index}]") -> Tensor:
    """(N, *input_shape) float32 from nested lists; a wrong shape is an error naming the first bad item.

    ``where`` formats an item's place in messages (e.g. "samples[{index}].input")."""
    shape = tuple(input_shape)
    try:
        with np.errstate(over="ignore"):  # values beyond float32 become ±Inf and are rejected below
            array = np.asarray(values, dtype=np.float32)
    except (ValueError, TypeError, OverflowError):  # OverflowError: an integer beyond float's range (1e400)
        array = None
    if array is None or array.shape[1:] != shape:
        for index, value in enumerate(values):
            try:
                with np.errstate(over="ignore"):
                    item = np.asarray(value, dtype=np.float32)
            except OverflowError:
                place = where.format(field=field, index=index)
                raise InvalidData(
                    f"{place} contains values beyond the range of float32 (about ±3.4e38)", field=field, index=index
                ) from None
            except (ValueError, TypeError):
                raise InvalidData(
                    f"{field}[{index}] is ragged: nested lists of unequal length", field=field, index=index
                ) from None
            if item.shape != shape:
                place = where.format(field=field, index=index)
                raise InvalidData(
                    f"{place} has shape {list(item.shape)}, the model expects {list(shape)}",
                    field=field,
                    index=index,
                )
        raise InvalidData(f"{field} do not form a batch of shape {list(shape)}", field=field)
    check_finite(array, field, where)
    return torch.from_numpy(array)


def check_finite(array: np.ndarray, field: str, where: str = "{field}[{index}]") -> None:
    """InvalidData naming the first input (row) with NaN or ±Inf, as values beyond float32's range become."""
    finite = np.isfinite(array.reshape(len(array), -1)).all(axis=1)
    if not finite.all():
        index = int(np.argmin(finite))
        place = where.format(field=field, index=index)
        raise InvalidData(f"{place} contains values that are not finite in float32", field=field, index=index)


def labels_of(raw: Sequence[Any]) -> list[str | None]:
    """Class names from JSON labels (null: unlabeled; a number: its decimal string)."""
    return [None if label is None else normalize_label(label, i) for i, label in enumerate(raw)]
