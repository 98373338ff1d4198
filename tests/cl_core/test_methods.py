"""The quadratic penalties match their definitions; state folds exactly and round-trips through safetensors."""

import pytest
import torch
from safetensors.torch import load, save
from torch import nn

from cl_core.experience import Experience
from cl_core.importance import fisher_diagonal
from cl_core.methods import EWC, MAS, FineTune, OnlineEWC, build_method
from tests.cl_core.models_zoo import build, inputs_for


def experience(seed: int, n: int = 16) -> Experience:
    g = torch.Generator().manual_seed(seed)
    return Experience(torch.randn(n, 6, generator=g, dtype=torch.float64), torch.randint(0, 4, (n,), generator=g))


def perturb(model: nn.Module, scale: float, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))


@pytest.mark.parametrize("cls", [EWC, OnlineEWC, MAS])
def test_penalty_is_zero_at_anchor_quadratic_and_has_closed_form_gradient(cls: type) -> None:
    model = build("mlp")
    method = cls(lam=3.0)
    method.consolidate(model, experience(0))
    assert float(method.penalty(model).detach()) == 0.0
    anchor = {k: v.clone() for k, v in model.state_dict().items()}
    perturb(model, 0.1, 1)
    direction = {k: v - anchor[k] for k, v in model.state_dict().items()}
    base = float(method.penalty(model).detach())
    assert base > 0
    with torch.no_grad():
        for k, p in model.named_parameters():
            p.copy_(anchor[k] + 2.5 * direction[k])
    assert float(method.penalty(model).detach()) == pytest.approx(2.5**2 * base, rel=1e-12)
    # gradient: λ Ω (θ − θ*), by autograd and by the closed form the trainer uses
    grads = torch.autograd.grad(method.penalty(model), list(model.parameters()))
    for (name, p), g in zip(model.named_parameters(), grads, strict=True):
        expected = 3.0 * method.importance[name] * (p.detach() - method.anchor[name])
        torch.testing.assert_close(g, expected)
        p.grad = torch.ones_like(p)
    method.add_penalty_grad(model)
    for p, g in zip(model.parameters(), grads, strict=True):
        torch.testing.assert_close(p.grad, 1 + g)


def test_ewc_fold_equals_sum_of_separate_penalties_up_to_a_constant() -> None:
    model = build("mlp")
    ewc = EWC(lam=2.0)
    separate = []
    for k in range(4):
        ewc.consolidate(model, experience(k))
        fisher = fisher_diagonal(model, experience(k).inputs, mode="true")
        separate.append((fisher, {n: p.detach().clone() for n, p in model.named_parameters()}))
        perturb(model, 0.2, 10 + k)

    def summed() -> torch.Tensor:
        params = dict(model.named_parameters())
        terms = [(f[n] * (params[n] - a[n]).square()).sum() for f, a in separate for n in f]
        return torch.stack(terms).sum()  # λ/2 = 1

    folded_a, summed_a = ewc.penalty(model).detach(), summed().detach()
    perturb(model, 0.3, 99)
    folded_b, summed_b = ewc.penalty(model).detach(), summed().detach()
    assert float(folded_b - folded_a) == pytest.approx(float(summed_b - summed_a), rel=1e-9)
    g_fold = torch.autograd.grad(ewc.penalty(model), list(model.parameters()))
    g_sum = torch.autograd.grad(summed(), list(model.parameters()))
    for a, b in zip(g_fold, g_sum, strict=True):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("cls", [EWC, OnlineEWC, MAS])
def test_memory_is_constant_over_ten_experiences(cls: type) -> None:
    model = build("mlp")
    method = cls()
    sizes = []
    for k in range(10):
        method.consolidate(model, experience(k))
        perturb(model, 0.05, k)
        sizes.append(sum(t.numel() for t in method.state_dict().values()))
    assert len(set(sizes)) == 1


def test_online_ewc_decays_running_fisher() -> None:
    model = build("mlp")
    online = OnlineEWC(gamma=0.5)
    online.consolidate(model, experience(0))
    first = {k: v.clone() for k, v in online.importance.items()}
    online.consolidate(model, experience(1))
    second = fisher_diagonal(model, experience(1).inputs, mode="true")
    for name in first:
        torch.testing.assert_close(online.importance[name], 0.5 * first[name] + second[name])
    for name, p in model.named_parameters():
        assert torch.equal(online.anchor[name], p.detach())


def test_mas_mean_option_weights_experiences_by_sample_count() -> None:
    model = build("mlp")
    mas = MAS(accumulate="mean")
    small, large = experience(0, n=4), experience(1, n=12)
    mas.consolidate(model, small)
    a = {k: v.clone() for k, v in mas.importance.items()}
    mas.consolidate(model, large)
    b = MAS()
    b.consolidate(model, large)
    for name in a:
        torch.testing.assert_close(mas.importance[name], (4 * a[name] + 12 * b.importance[name]) / 16)
    assert mas.seen_samples == 16


@pytest.mark.parametrize("cls", ["mas", "slnid"])
def test_mas_accumulates_like_the_paper_k_identical_tasks_give_k_times_one(cls: str) -> None:
    """Aljundi et al. 2018 (official code: acc_omega = prev_omega + new_omega): after K identical tasks Ω = K Ω₁,
    where Ω₁ = (1/N) Σₙ |∂‖f(xₙ)‖²/∂θ| is checked against a per-sample loop."""
    model = build("mlp")
    data = experience(0, n=5)
    one = build_method(cls)
    assert isinstance(one, MAS)
    one.consolidate(model, data)
    for name, p in model.named_parameters():  # one task's Ω by its definition, sample by sample
        total = torch.zeros_like(p)
        for x in data.inputs:
            model.zero_grad()
            model(x[None]).square().sum().backward()
            total += p.grad.abs()  # type: ignore[union-attr]
        torch.testing.assert_close(one.importance[name], total / len(data))
    k = 4
    summed = build_method(cls)
    assert isinstance(summed, MAS)
    for _ in range(k):
        summed.consolidate(model, data)
    for name, omega in one.importance.items():
        torch.testing.assert_close(summed.importance[name], k * omega)
    mean = build_method(cls, accumulate="mean")
    assert isinstance(mean, MAS)
    for _ in range(k):
        mean.consolidate(model, data)
    for name, omega in one.importance.items():
        torch.testing.assert_close(mean.importance[name], omega)
    with pytest.raises(ValueError, match="accumulate"):
        build_method(cls, accumulate="max")


def test_online_ewc_penalty_is_progress_and_compress_formula() -> None:
    """Schwarz et al. 2018, eq. 8: F*ₖ = γF*ₖ₋₁ + Fₖ and the penalty λ/2 ‖θ − θ*ₖ‖²_{γF*ₖ}, computed by hand from
    the exact Fisher of each experience (`fisher_diagonal`), against the method's penalty and its gradient."""
    model = build("mlp")
    lam, gamma = 7.0, 0.6
    online = OnlineEWC(lam=lam, gamma=gamma)
    running: dict[str, torch.Tensor] = {}
    for seed in range(3):
        perturb(model, 0.2, 10 + seed)
        data = experience(seed)
        fisher = fisher_diagonal(model, data.inputs, mode="true")
        running = {k: gamma * running[k] + f if k in running else f for k, f in fisher.items()}
        anchor = {k: p.detach().clone() for k, p in model.named_parameters()}
        online.consolidate(model, data)
    perturb(model, 0.3, 99)
    expected = sum((gamma * running[k] * (p.detach() - anchor[k]).square()).sum() for k, p in model.named_parameters())
    assert float(online.penalty(model).detach()) == pytest.approx(lam / 2 * float(expected), rel=1e-10)
    model.zero_grad()
    online.add_penalty_grad(model)
    for k, p in model.named_parameters():
        torch.testing.assert_close(p.grad, lam * gamma * running[k] * (p.detach() - anchor[k]))
    forgetful = OnlineEWC(lam=lam, gamma=0.0)  # γ = 0: the paper keeps no protection at all
    forgetful.consolidate(model, experience(0))
    perturb(model, 0.3, 100)
    assert float(forgetful.penalty(model).detach()) == 0.0


def test_mas_needs_no_labels() -> None:
    mas = MAS()
    report = mas.consolidate(build("mlp"), Experience(inputs_for("mlp", 5)))
    assert report.samples == 5 and mas.importance


@pytest.mark.parametrize("name", ["finetune", "ewc", "online-ewc", "mas"])
def test_state_round_trips_through_safetensors_bytes(name: str) -> None:
    model = build("mlp")
    method = build_method(name, lam=1.5)
    method.consolidate(model, experience(0))
    method.consolidate(model, experience(1))
    restored = build_method(name, **method.hparams())
    restored.load_state_dict(load(save(method.state_dict())))
    assert restored.state_dict().keys() == method.state_dict().keys()
    for k, v in method.state_dict().items():
        assert torch.equal(restored.state_dict()[k], v)
    perturb(model, 0.1, 5)
    assert float(restored.penalty(model).detach()) == pytest.approx(float(method.penalty(model).detach()), rel=1e-12)


def test_finetune_has_no_penalty() -> None:
    model = build("mlp")
    method = FineTune()
    method.consolidate(model, experience(0))
    perturb(model, 1.0, 0)
    assert float(method.penalty(model).detach()) == 0.0 and method.state_dict() == {}


def test_unknown_method_and_bad_hparams() -> None:
    with pytest.raises(ValueError, match="known"):
        build_method("sgd")
    with pytest.raises(ValueError, match="hyper-parameters"):
        build_method("ewc", lam=1.0, temperature=3)
    with pytest.raises(ValueError, match="non-negative"):
        build_method("mas", lam=-1.0)
