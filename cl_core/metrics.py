"""Continual-learning metrics from an accuracy matrix a[t][j] (accuracy on task j after training task t).

* ACC  = mean_j a[T][j]                                     (after the last task T)
* BWT  = mean_{j<T} a[T][j] − a[j][j]                       (Lopez-Paz & Ranzato 2017, eq. 2)
* Forgetting = mean_{j<T} max_{j≤t<T} a[t][j] − a[T][j]     (Chaudhry et al. 2018, eq. 4 averaged)

A matrix with one row (joint training, or a single task) has no BWT or forgetting: they are None.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

Matrix = Sequence[Sequence[float]]


def _check(matrix: Matrix) -> int:
    if not matrix or not matrix[-1]:
        raise ValueError("the accuracy matrix is empty")
    return len(matrix) - 1


def average_accuracy(matrix: Matrix) -> float:
    """Mean accuracy over the tasks of the last row."""
    last = matrix[_check(matrix)]
    return sum(last) / len(last)


def backward_transfer(matrix: Matrix) -> float | None:
    """How much learning later tasks changed earlier ones (negative = forgetting); None for one row."""
    final = _check(matrix)
    if final == 0:
        return None
    return sum(matrix[final][j] - matrix[j][j] for j in range(final)) / final


def forgetting(matrix: Matrix) -> float | None:
    """Mean drop from each earlier task's best accuracy to its final accuracy; None for one row."""
    final = _check(matrix)
    if final == 0:
        return None
    drops = [max(matrix[t][j] for t in range(j, final)) - matrix[final][j] for j in range(final)]
    return sum(drops) / final


@dataclass(frozen=True)
class Summary:
    acc: float
    bwt: float | None
    forgetting: float | None


def summarize(matrix: Matrix) -> Summary:
    return Summary(average_accuracy(matrix), backward_transfer(matrix), forgetting(matrix))
