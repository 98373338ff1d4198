"""The order in which class names are shown to people: natural order, so that digits read 0, 1, 2, …, 10 (not
0, 1, 10, 2) and names in the order of their numbers (`class-2` before `class-10`).

Only listings use it; a model's head keeps its classes in the order they were added (each class's output index
never changes), so sorting here changes no prediction.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

_NUMBER = re.compile(r"([0-9]+)")


def natural_key(label: str) -> tuple[tuple[tuple[int, int, str], ...], str]:
    """Sort key: runs of ASCII digits compare by value, everything else as text; ties (``7`` and ``007``) are
    broken by the text itself, so the order is total and the same on every machine."""
    parts = tuple(
        (0, int(part), "") if index % 2 else (1, 0, part) for index, part in enumerate(_NUMBER.split(label)) if part
    )
    return parts, label


def natural_order(labels: Iterable[str]) -> list[str]:
    """``labels`` sorted by `natural_key`."""
    return sorted(labels, key=natural_key)
