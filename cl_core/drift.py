"""Input drift: is a window of traffic drawn from the distribution of the model's reference data?

Two statistics of the same two samples (the reference: held-out data in the model's feature space; the window: the
latest traffic in it), each with a **permutation** p-value over the same random re-partitions of the pooled
sample:

* **MMD²** (Gretton et al., JMLR 2012), the biased V-statistic, with the Gaussian RBF kernel
  k(x, y) = exp(−‖x − y‖² / h) and h the median of the pooled sample's pairwise squared distances (the median
  heuristic: a symmetric function of the pooled sample, so the permutation test stays exact).  It sees any change
  of the feature distribution: new styles, noise, corruptions, classes the model never saw.
* **χ² of homogeneity** of the predicted classes (a 2 × K table: reference against window): a change of the class
  mix (prior shift), which a feature-space MMD sees only weakly when the features themselves look familiar.

Why a permutation test: under "no drift" the pooled rows are exchangeable, so p = (1 + #{T_b ≥ T}) / (B + 1) is a
valid p-value whatever the kernel, dimension or class counts; P(p ≤ a) ≤ a exactly, with no asymptotic
approximation (the χ² distribution is wrong for small expected counts, MMD's null distribution has no closed form).
Drift is declared when min(p_MMD, p_χ²) ≤ α / 2 (Bonferroni over the two tests): the false-positive rate per window
is at most α.  B permutations cost one (N × N)·(N × B) product: for B = 200 (p-values down to 1/201, below α / 2 =
0.005 at α = 0.01) and N = 600 features of 400 dimensions, about 0.1 s on one core.

Why not per-dimension KS: 400 features, Bonferroni-corrected to α / 400 each, is blind to a shift spread thinly over
many dimensions, and the features of a ReLU network are far from independent.  Why not alibi-detect (whose MMDDrift
runs this very test): its 0.13 requirements pin numpy < 2 (this project runs numpy 2) and bring opencv,
scikit-image, numba, transformers and pandas into a serving image, for about 100 lines of torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class DriftTest:
    """One window's verdict.  ``mmd2`` and ``chi2`` are the statistics, ``*_threshold`` the permutation quantile at
    α / 2 (the statistic beyond which that test alone detects), ``*_p`` their permutation p-values."""

    mmd2: float
    mmd_threshold: float
    mmd_p: float
    chi2: float
    chi2_threshold: float
    chi2_p: float
    alpha: float
    bandwidth: float

    @property
    def detected(self) -> bool:
        return min(self.mmd_p, self.chi2_p) <= self.alpha / 2

    @property
    def score(self) -> float:
        """MMD² over its threshold (≥ 1: the feature distribution alone shows drift); finite (JSON has no
        infinity), even when every permuted statistic is 0."""
        return self.mmd2 / max(self.mmd_threshold, 1e-12)


def min_permutations(alpha: float) -> int:
    """The fewest permutations whose smallest p-value, 1 / (B + 1), reaches α / 2."""
    return max(1, math.ceil(2 / alpha - 1 - 1e-9))


def squared_distances(z: Tensor) -> Tensor:
    norms = (z * z).sum(dim=1)
    return (norms[:, None] + norms[None, :] - 2.0 * z @ z.T).clamp_min_(0.0)


def median_heuristic(d2: Tensor) -> float:
    """The median of the off-diagonal squared distances (1.0 when every point coincides)."""
    n = d2.shape[0]
    off = d2[~torch.eye(n, dtype=torch.bool)]
    h = float(off.median()) if off.numel() else 0.0
    return h if h > 0 else 1.0


def class_shares(labels: Tensor, num_classes: int) -> Tensor:
    """The share of each class among ``labels`` (integers in [0, num_classes))."""
    counts = torch.bincount(labels, minlength=num_classes).to(torch.float64)
    return counts / max(1, labels.numel())


def two_sample_test(
    reference: Tensor,
    reference_labels: Tensor,
    window: Tensor,
    window_labels: Tensor,
    num_classes: int,
    *,
    permutations: int = 500,
    alpha: float = 0.01,
    generator: torch.Generator | None = None,
) -> DriftTest:
    """Test whether ``window`` (n × d features, with predicted classes) comes from the distribution of
    ``reference`` (m × d, with predicted classes), by MMD² and by χ² of the class mix, each against ``permutations``
    random re-partitions of the pooled sample."""
    m, n = reference.shape[0], window.shape[0]
    if m < 2 or n < 2:
        raise ValueError(f"a two-sample test needs at least 2 rows on each side, got {m} and {n}")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    if permutations < min_permutations(alpha):
        raise ValueError(
            f"{permutations} permutations cannot reach p ≤ α / 2 = {alpha / 2:g} (the smallest p-value is "
            f"1 / (permutations + 1)): use at least {min_permutations(alpha)}"
        )
    z = torch.cat([reference, window]).to(torch.float32)
    total = m + n
    d2 = squared_distances(z)
    bandwidth = median_heuristic(d2)
    kernel = torch.exp(-d2 / bandwidth)
    # column 0: the observed split (reference first); columns 1…B: random splits of the pooled rows
    order = torch.argsort(torch.rand(permutations, total, generator=generator), dim=1)
    first = torch.cat([torch.arange(m)[None, :], order[:, :m]])
    inside = torch.zeros(total, permutations + 1).scatter_(0, first.T, 1.0)
    mmd2 = _mmd2(kernel, inside, m, n).double()
    onehot = torch.nn.functional.one_hot(torch.cat([reference_labels, window_labels]).long(), num_classes)
    chi2 = _chi2(onehot.to(torch.float64), inside.double(), m, n)
    mmd_p, mmd_thr = _p_and_threshold(mmd2, alpha / 2)
    chi_p, chi_thr = _p_and_threshold(chi2, alpha / 2)
    return DriftTest(
        mmd2=float(mmd2[0]),
        mmd_threshold=mmd_thr,
        mmd_p=mmd_p,
        chi2=float(chi2[0]),
        chi2_threshold=chi_thr,
        chi2_p=chi_p,
        alpha=alpha,
        bandwidth=bandwidth,
    )


def _mmd2(kernel: Tensor, inside: Tensor, m: int, n: int) -> Tensor:
    """MMD²_b = a/m² + b/n² − 2c/(mn) per column of ``inside`` (1: the row is on the first side), where a, b and c
    are the kernel sums within each side and across."""
    spread = kernel @ inside  # (N, B+1): each row's kernel sum over the first side
    a = (inside * spread).sum(dim=0)
    c = spread.sum(dim=0) - a
    b = kernel.sum() - a - 2 * c
    return a / m**2 + b / n**2 - 2 * c / (m * n)  # float32 sums: relative error ~1e-6, far below the spread


def _chi2(onehot: Tensor, inside: Tensor, m: int, n: int) -> Tensor:
    """Pearson's χ² of the 2 × K table (first side, second side) × class, per column of ``inside``, over the classes
    present in the pooled sample."""
    column = onehot.sum(dim=0)
    present = column > 0
    observed_first = (onehot[:, present].T @ inside).T  # (B+1, K')
    observed_second = column[present] - observed_first
    total = m + n
    expected_first = m * column[present] / total
    expected_second = n * column[present] / total
    return ((observed_first - expected_first) ** 2 / expected_first).sum(dim=1) + (
        (observed_second - expected_second) ** 2 / expected_second
    ).sum(dim=1)


def _p_and_threshold(statistics: Tensor, level: float) -> tuple[float, float]:
    """The permutation p-value of statistics[0] against statistics[1:], and the (1 − level) quantile of the latter
    (with a relative tolerance, so that ties from floating-point noise count as ties)."""
    observed, permuted = statistics[0], statistics[1:]
    tolerance = 1e-9 * max(1.0, float(observed.abs()))
    exceed = int((permuted >= observed - tolerance).sum())
    p = (1 + exceed) / (1 + permuted.numel())
    threshold = float(torch.quantile(permuted, 1 - level))
    return p, threshold
