"""The drift test (`cl_core.drift`): its statistics match their definitions, its false-positive rate is what it
claims, and shifted traffic in a small trained MLP's feature space is found."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import Tensor

from cl_core.drift import _chi2, _mmd2, median_heuristic, min_permutations, squared_distances, two_sample_test
from cl_core.models import ModelSpec, build_model


def test_mmd2_is_the_biased_statistic_of_its_definition() -> None:
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(7, 3, generator=g), torch.randn(5, 3, generator=g) + 0.5
    z = torch.cat([x, y])
    h = median_heuristic(squared_distances(z))
    pairs = sorted(float(((a - b) ** 2).sum()) for a, b in itertools.combinations(z, 2))
    assert h == pytest.approx(torch.tensor(pairs).median().item(), rel=1e-5)  # the lower median of the pairs

    def k(a: Tensor, b: Tensor) -> float:
        return float(torch.exp(-((a - b) ** 2).sum() / h))

    naive = (sum(k(a, b) for a in x for b in x) / 49 + sum(k(a, b) for a in y for b in y) / 25) - 2 * sum(
        k(a, b) for a in x for b in y
    ) / 35
    kernel = torch.exp(-squared_distances(z) / h)
    inside = torch.zeros(12, 1)
    inside[:7] = 1
    assert float(_mmd2(kernel, inside, 7, 5)[0]) == pytest.approx(naive, rel=1e-5, abs=1e-7)


def test_the_class_statistic_is_pearsons_chi2_of_the_two_by_k_table() -> None:
    labels = torch.tensor([0, 0, 1, 2, 2, 2, 0, 1, 1, 1])
    onehot = torch.nn.functional.one_hot(labels, 4).double()  # class 3 absent: left out of the table
    inside = torch.zeros(10, 1, dtype=torch.float64)
    inside[:6] = 1
    table = [[2, 1, 3], [1, 3, 0]]
    rows, cols, n = [6, 4], [3, 4, 3], 10
    naive = sum((table[r][c] - rows[r] * cols[c] / n) ** 2 / (rows[r] * cols[c] / n) for r in (0, 1) for c in range(3))
    assert float(_chi2(onehot, inside, 6, 4)[0]) == pytest.approx(naive)


def test_the_permutation_p_value_is_calibrated_under_no_drift() -> None:
    g = torch.Generator().manual_seed(1)
    trials, below = 300, {0.05: 0, 0.2: 0}
    for _ in range(trials):
        a, b = torch.randn(30, 4, generator=g), torch.randn(20, 4, generator=g)
        la, lb = torch.randint(0, 3, (30,), generator=g), torch.randint(0, 3, (20,), generator=g)
        result = two_sample_test(a, la, b, lb, 3, permutations=99, alpha=0.1, generator=g)
        for level in below:
            below[level] += result.mmd_p <= level
    # P(p ≤ a) ≤ a for a valid p-value (binomial sd at 300 trials: 3.8 and 6.9)
    assert below[0.05] <= 0.05 * trials + 12 and below[0.2] <= 0.2 * trials + 21
    assert below[0.2] >= 0.2 * trials - 21  # and not uselessly conservative


def test_bad_arguments_are_refused() -> None:
    one = torch.zeros(1, 2)
    two = torch.zeros(2, 2)
    labels = torch.zeros(2, dtype=torch.long)
    with pytest.raises(ValueError):
        two_sample_test(one, labels[:1], two, labels, 1)
    with pytest.raises(ValueError):
        two_sample_test(two, labels, two, labels, 1, alpha=0)
    with pytest.raises(ValueError):
        two_sample_test(two, labels, two, labels, 1, permutations=0)
    with pytest.raises(ValueError, match="at least 199"):  # 1/100 > 0.005: it could never detect
        two_sample_test(two, labels, two, labels, 1, permutations=99, alpha=0.01)
    assert min_permutations(0.01) == 199 and min_permutations(0.05) == 39


# -- a small trained MLP and shifted traffic ------------------------------------------------------------------
DIM, CLASSES = 20, 5


def _means(g: torch.Generator) -> Tensor:
    return torch.randn(CLASSES + 1, DIM, generator=g) * 1.5  # the last class: never seen in training


def _draw(means: Tensor, n: int, g: torch.Generator, classes: range = range(CLASSES)) -> tuple[Tensor, Tensor]:
    labels = torch.tensor(list(classes))[torch.randint(0, len(classes), (n,), generator=g)]
    return means[labels] + torch.randn(n, DIM, generator=g), labels


def test_shifted_traffic_is_detected_and_in_distribution_traffic_is_not() -> None:
    """200-input windows against a reference of 300 held-out inputs, in the features of an MLP trained on five
    classes: ≥ 90 % of shifted windows detected, ≥ 95 % of in-distribution windows below the threshold."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    means = _means(g)
    model = build_model(ModelSpec("mlp", (DIM,), [str(c) for c in range(CLASSES)], {"hidden": [32]}), seed=0)
    x, y = _draw(means, 1000, g)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(30):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    model.eval()

    def seen(inputs: Tensor) -> tuple[Tensor, Tensor]:
        with torch.no_grad():
            return model.features(inputs), model(inputs).argmax(dim=1)

    reference = seen(_draw(means, 300, g)[0])  # held out: never trained on
    pixels = torch.randperm(DIM, generator=g)
    shifts = {
        "permuted inputs": lambda n: _draw(means, n, g)[0][:, pixels],
        # Gaussian noise of 2.5 × the classes' own spread (the features of a confident MLP shrug off less)
        "added noise": lambda n: _draw(means, n, g)[0] + 2.5 * torch.randn(n, DIM, generator=g),
        "a class never seen": lambda n: _draw(means, n, g, range(CLASSES, CLASSES + 1))[0],
    }

    def detected(inputs: Tensor) -> bool:
        return two_sample_test(*reference, *seen(inputs), CLASSES, permutations=200, alpha=0.01, generator=g).detected

    quiet = sum(not detected(_draw(means, 200, g)[0]) for _ in range(40))
    found = {name: sum(detected(shifted(200)) for _ in range(20)) for name, shifted in shifts.items()}
    print(f"in-distribution windows below the threshold: {quiet} of 40; shifted windows detected (of 20): {found}")
    assert quiet >= 38, f"in-distribution windows below the threshold: {quiet} of 40"
    assert all(n >= 18 for n in found.values()), f"shifted windows detected (of 20): {found}"
