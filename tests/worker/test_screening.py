"""Label screening's neighbour search on a bounded reference: the trusted samples of a class it compares against are
at most `MAX_REFERENCE`, whatever the held-out reservoir holds, and the verdict on a clear flip does not change."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from registry import SampleSet
from worker import screening
from worker.screening import MAX_REFERENCE, ScreeningRules, _References, screen

CLASSES = ["a", "b", "c"]


def _cluster(label: int, n: int, generator: torch.Generator) -> torch.Tensor:
    centre = torch.zeros(8)
    centre[label] = 4.0
    return centre + 0.5 * torch.randn(n, 8, generator=generator)


def _model() -> nn.Module:
    model = nn.Linear(8, 3, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.eye(3, 8) * 3.0)  # confident: the logit of a class is 3× the matching coordinate
    return model


def _case() -> tuple[SampleSet, SampleSet]:
    g = torch.Generator().manual_seed(0)
    per_class = 1200  # well above the cap: the reservoir of a long-running model
    labels: list[str | None] = [CLASSES[k] for k in range(3) for _ in range(per_class)]
    trusted = SampleSet(
        torch.cat([_cluster(k, per_class, g) for k in range(3)]),
        labels,
        [str(i) for i in range(3 * per_class)],
    )
    flips = _cluster(0, 40, g)  # images of "a" posted as "b"
    given: list[str | None] = [*(["b"] * 200), *(["a"] * 100)]
    claim = SampleSet(
        torch.cat([flips, _cluster(1, 160, g), _cluster(0, 100, g)]),
        given,
        [str(10_000 + i) for i in range(300)],
    )
    return trusted, claim


def test_the_reference_of_a_class_is_bounded_and_evenly_spread() -> None:
    rows = {"a": list(range(1000)), "b": list(range(1000, 1100))}
    references = _References(torch.randn(1100, 8), rows)
    assert 0 < len(references.of("a")) <= MAX_REFERENCE and len(references.of("b")) == 100
    assert len(references.of("c")) == 0 and references.count("a") == 1000  # the count is the whole class
    assert set(references._vectors) == {"a", "b", "c"}  # only the classes asked for were flattened


def test_a_clear_flip_is_quarantined_with_the_bounded_reference_as_with_every_trusted_sample(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    trusted, claim = _case()
    bounded = screen(_model(), CLASSES, claim, trusted, set(), ScreeningRules())
    monkeypatch.setattr(screening, "MAX_REFERENCE", 10**9)
    whole = screen(_model(), CLASSES, claim, trusted, set(), ScreeningRules())
    flipped = {str(10_000 + i) for i in range(40)}
    assert set(bounded.quarantined) == set(whole.quarantined) == flipped
    assert bounded.thresholds == whole.thresholds  # thresholds read every trusted sample either way
