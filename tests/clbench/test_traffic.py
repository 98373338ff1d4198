"""`clbench drift`: the benchmark measures what it says (small and fast: one epoch, a few windows)."""

from __future__ import annotations

import pytest

from clbench.traffic import measure_drift


def test_the_drift_benchmark_flags_permuted_pixels_and_not_the_test_split() -> None:
    report = measure_drift(
        windows=3,
        sizes=(100,),
        shifts=("none", "permuted pixels"),
        reference=100,
        permutations=99,
        alpha=0.05,
        epochs=1,
    )
    cells = {(c.shift, c.window): c for c in report.cells}
    assert report.reference == 100 and 0.5 < report.test_accuracy <= 1
    assert cells["permuted pixels", 100].detected == 3
    assert cells["none", 100].detected <= 1  # at most 5 % per window: 3 windows rarely see one
    with pytest.raises(ValueError, match="unknown shifts"):
        measure_drift(windows=1, shifts=("gamma rays",))
