"""Growth laws of synthetic series: the verdict follows the law the series was made with."""

import math
import random

import pytest

from clbench.growth import fit


def xs(n: int = 200) -> list[float]:
    return [float(x) for x in range(1, n + 1)]


def test_a_constant_with_noise_is_flat() -> None:
    rng = random.Random(0)
    growth = fit(xs(), [10 + rng.uniform(-0.5, 0.5) for _ in xs()])
    assert growth.law == "flat"
    assert abs(growth.ratio - 1) < 0.1


def test_a_series_that_fills_a_window_then_stays_is_flat_after_warm_up() -> None:
    ys = [min(x, 20.0) for x in xs()]  # a retention window of 20 versions, then constant
    assert fit(xs(), ys, warmup=0.15).law == "flat"
    assert fit(xs(), ys, warmup=0.0).law != "superlinear"


def test_a_line_is_linear_with_its_slope() -> None:
    growth = fit(xs(), [3 + 12.5 * x for x in xs()])
    assert growth.law == "linear"
    assert growth.slope == pytest.approx(12.5)
    assert growth.r2 == pytest.approx(1.0)
    assert 0.8 <= growth.exponent <= 1.2


def test_a_square_is_superlinear_with_exponent_two() -> None:
    growth = fit(xs(), [x * x for x in xs()])
    assert growth.law == "superlinear"
    assert growth.exponent == pytest.approx(2.0, abs=0.05)


def test_a_square_root_is_sublinear() -> None:
    assert fit(xs(), [math.sqrt(x) for x in xs()]).law == "sublinear"


def test_one_outlier_does_not_decide_flatness() -> None:
    ys = [5.0] * 200
    ys[-1] = 500.0  # one scheduling delay at the very end
    assert fit(xs(), ys).law == "flat"


def test_too_few_points_say_so() -> None:
    assert fit([1, 2], [1, 2]).law == "too few points"


def test_mismatched_lengths_are_refused() -> None:
    with pytest.raises(ValueError, match="differ in length"):
        fit([1, 2, 3], [1, 2])
