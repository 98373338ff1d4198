"""The trainer is deterministic, reports progress, stops between batches and masks inactive outputs."""

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from cl_core.experience import Experience
from cl_core.methods import EWC, FineTune
from cl_core.models import ModelSpec, build_model
from cl_core.trainer import Progress, TrainConfig, masked_cross_entropy, train


def data(n: int = 64, seed: int = 0) -> Experience:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 8, generator=g)
    return Experience(x, (x[:, 0] > 0.5).long() + 2 * (x[:, 1] > 0.5).long())


def model(seed: int = 0) -> torch.nn.Module:
    return build_model(ModelSpec("mlp", (8,), ["a", "b", "c", "d"], {"hidden": [16]}), seed=seed)


def test_deterministic_under_a_seed() -> None:
    a, b = model(), model()
    config = TrainConfig(epochs=2, batch_size=16, seed=3)
    train(a, FineTune(), data(), config)
    train(b, FineTune(), data(), config)
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)
    c = model()
    train(c, FineTune(), data(), TrainConfig(epochs=2, batch_size=16, seed=4))
    assert not all(torch.equal(pa, pc) for pa, pc in zip(a.parameters(), c.parameters(), strict=True))


def test_learns_reports_progress_and_stops_between_batches() -> None:
    m = model()
    seen: list[Progress] = []
    result = train(m, FineTune(), data(), TrainConfig(epochs=3, batch_size=16), progress=seen.append)
    assert result.steps == 12 and result.epochs == 3 and not result.stopped
    assert [p.step for p in seen] == list(range(1, 13)) and seen[-1].fraction == 1.0
    calls: list[int] = []

    def stop_after_five_batches() -> bool:
        calls.append(1)
        return len(calls) > 5

    stopped = train(
        m,
        FineTune(),
        data(),
        TrainConfig(epochs=3, batch_size=16),
        should_stop=stop_after_five_batches,
    )
    assert stopped.stopped and stopped.steps == 5


def test_penalty_pulls_towards_anchor() -> None:
    free, held = model(), model()
    ewc = EWC(lam=1e4)
    ewc.consolidate(held, data(seed=1))
    start = {k: v.clone() for k, v in held.state_dict().items()}
    other = Experience(data().inputs, torch.full((64,), 3))
    train(free, FineTune(), other, TrainConfig(epochs=2, batch_size=16))
    train(held, ewc, other, TrainConfig(epochs=2, batch_size=16))
    drift = lambda m: sum(float((v - start[k]).abs().sum()) for k, v in m.state_dict().items())  # noqa: E731
    assert drift(held) < 0.5 * drift(free)


def test_accepts_a_dataloader() -> None:
    d = data()
    assert d.targets is not None
    loader = DataLoader(TensorDataset(d.inputs, d.targets), batch_size=32)
    result = train(model(), FineTune(), loader, TrainConfig(epochs=2))
    assert result.steps == 4


def test_masked_cross_entropy_ignores_inactive_outputs() -> None:
    logits = torch.tensor([[5.0, 0.0, 1.0], [0.0, 2.0, 9.0]], requires_grad=True)
    mask = torch.tensor([[False, True, True], [True, True, False]])
    loss = masked_cross_entropy(logits, torch.tensor([2, 1]), mask)
    expected = torch.nn.functional.cross_entropy(torch.tensor([[0.0, 1.0], [0.0, 2.0]]), torch.tensor([1, 1]))
    assert float(loss.detach()) == pytest.approx(float(expected))
    loss.backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()
    assert logits.grad[0, 0] == 0 and logits.grad[1, 2] == 0


def test_unlabeled_data_cannot_train() -> None:
    with pytest.raises(ValueError, match="unlabeled"):
        train(model(), FineTune(), Experience(torch.rand(4, 8)), TrainConfig(epochs=1))
