"""LwF, SI and DER++ match their papers' definitions, computed by hand beside them; the trainer's hooks run in the
order the methods rely on."""

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cl_core.experience import Experience
from cl_core.learner import Learner
from cl_core.methods import DERPP, SI, FineTune, LwF
from cl_core.models import Classifier, ModelSpec, build_model, grow_classes
from cl_core.trainer import Batch, TrainConfig, train


class Vector(nn.Module):
    """One parameter vector θ and nothing else: the path integral can be followed by hand."""

    def __init__(self, values: list[float]) -> None:
        super().__init__()
        self.theta = nn.Parameter(torch.tensor(values, dtype=torch.float64))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.theta


def classifier(classes: int = 2, seed: int = 0) -> Classifier:
    spec = ModelSpec("mlp", (5,), [str(c) for c in range(classes)], {"hidden": [7]})
    return build_model(spec, seed=seed).double()


def data(classes: tuple[int, ...], n: int = 16, seed: int = 0) -> Experience:
    g = torch.Generator().manual_seed(seed)
    labels = torch.tensor(classes).repeat(n // len(classes))
    return Experience(torch.randn(len(labels), 5, generator=g, dtype=torch.float64) + labels[:, None], labels)


# -- SI ------------------------------------------------------------------------------------------------------------
def test_si_path_integral_matches_a_hand_computed_trajectory() -> None:
    model = Vector([1.0, -2.0])
    si = SI(c=0.5, xi=0.1)
    trajectory = [[1.0, -2.0], [0.8, -1.5], [0.5, -1.0], [0.45, -1.1]]
    gradients = [[2.0, -1.0], [3.0, -0.5], [0.5, 4.0]]
    for t, g in enumerate(gradients):
        model.theta.grad = torch.tensor(g, dtype=torch.float64)
        si.after_backward(model)
        with torch.no_grad():
            model.theta.copy_(torch.tensor(trajectory[t + 1], dtype=torch.float64))
        si.after_step(model)
    # ω = −Σ g·Δθ: 0.4 + 0.9 + 0.025 and 0.5 + 0.25 + 0.4
    torch.testing.assert_close(si.path["theta"], torch.tensor([1.325, 1.15], dtype=torch.float64))
    si.consolidate(model, Experience(torch.zeros(1, 2)))
    # Ω = ω / (Δ² + ξ), Δ = θ_end − θ_start = (−0.55, 0.9)
    expected = torch.tensor([1.325 / (0.55**2 + 0.1), 1.15 / (0.9**2 + 0.1)], dtype=torch.float64)
    torch.testing.assert_close(si.importance["theta"], expected)
    assert si.path == {} and si.start == {}
    with torch.no_grad():
        model.theta.copy_(torch.tensor([0.0, 0.0], dtype=torch.float64))
    # c · Σ Ω (θ̃ − θ)²
    penalty = 0.5 * (expected[0] * 0.45**2 + expected[1] * 1.1**2)
    assert float(si.penalty(model).detach()) == pytest.approx(float(penalty), rel=1e-12)


def test_si_in_the_trainer_integrates_the_data_gradient_only() -> None:
    """With plain SGD, Δθ = −η (g + ∂penalty): ω = Σ −g·Δθ is recovered from the recorded trajectory, which shows that
    the penalty's gradient is not part of g, and Ω accumulates over tasks (eq. 5)."""
    eta, c, xi = 0.05, 2.0, 0.01
    model = classifier(seed=1)
    si = SI(c=c, xi=xi)
    config = TrainConfig(epochs=2, batch_size=4, lr=eta, optimizer="sgd", seed=2)
    omegas = []
    for k, classes in enumerate([(0, 1), (0, 1)]):
        path: list[dict[str, Tensor]] = []

        def record(path: list[dict[str, Tensor]] = path) -> None:
            path.append({n: p.detach().clone() for n, p in model.named_parameters()})

        record()
        train(model, si, data(classes, seed=k), config, after_step=record)
        anchor = {n: a.clone() for n, a in si.anchor.items()}
        scaled = {n: 2 * c * o for n, o in si.importance.items()}
        omega = {}
        for name in path[0]:
            total = torch.zeros_like(path[0][name])
            for before, after in itertools.pairwise(path):
                step = after[name] - before[name]
                penalty_grad = scaled[name] * (before[name] - anchor[name]) if name in scaled else 0.0
                g = -step / eta - penalty_grad
                total -= g * step
            omega[name] = total
            torch.testing.assert_close(si.path[name], total, rtol=1e-9, atol=1e-12)
        before_task = {n: o.clone() for n, o in si.importance.items()}
        si.consolidate(model, data(classes, seed=k))
        for name, total in omega.items():
            delta = path[-1][name] - path[0][name]
            new = total / (delta.square() + xi)
            expected = before_task[name] + new if name in before_task else new
            torch.testing.assert_close(si.importance[name], expected)
        omegas.append(omega)
    assert all(float(o.abs().sum()) > 0 for o in omegas[1].values())


def test_si_accumulates_through_a_combined_learner() -> None:
    learner = Learner.build("si", method_hparams={"c": 1.0}, unlabeled_hparams={"lam": 1.0})
    model = classifier()
    learner.learn(model, data((0, 1)), TrainConfig(epochs=1, batch_size=8))
    assert isinstance(learner.method, SI) and learner.method.importance
    assert any(float(o.abs().sum()) > 0 for o in learner.method.importance.values())


# -- LwF -----------------------------------------------------------------------------------------------------------
def paper_l_old(old: Tensor, new: Tensor, temperature: float) -> Tensor:
    """Li & Hoiem's L_old = −Σ y′_o log ŷ′_o with y′ = y^{1/T} / Σ y^{1/T} of the probabilities, batch mean."""
    y = F.softmax(old, dim=1) ** (1 / temperature)
    y = y / y.sum(1, keepdim=True)
    y_hat = F.softmax(new, dim=1) ** (1 / temperature)
    y_hat = y_hat / y_hat.sum(1, keepdim=True)
    return -(y * y_hat.log()).sum(1).mean()


def entropy(old: Tensor, temperature: float) -> Tensor:
    y = F.softmax(old, dim=1) ** (1 / temperature)
    y = y / y.sum(1, keepdim=True)
    return -(y * y.log()).sum(1).mean()


def test_lwf_class_incremental_distils_the_old_outputs_as_the_paper_defines() -> None:
    model = classifier(2)
    lwf = LwF(lam=0.7, temperature=2.0)
    lwf.consolidate(model, data((0, 1)))
    old_model = classifier(2)
    old_model.load_state_dict(model.state_dict())
    spec = ModelSpec("mlp", (5,), ["0", "1"], {"hidden": [7]})
    grow_classes(model, spec, ["2", "3"])
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    x = data((2, 3), seed=5).inputs
    outputs = model(x)
    loss = lwf.batch_loss(model, Batch(x, torch.zeros(len(x), dtype=torch.long)), outputs)
    assert loss is not None
    z_old = old_model(x).detach()
    expected = 0.7 * (paper_l_old(z_old, outputs[:, :2], 2.0) - entropy(z_old, 2.0))
    assert float(loss.detach()) == pytest.approx(float(expected.detach()), rel=1e-10)
    # the same gradient as the paper's cross-entropy
    (g_ours,) = torch.autograd.grad(loss, [model.head.weight])
    (g_paper,) = torch.autograd.grad(0.7 * paper_l_old(z_old, model(x)[:, :2], 2.0), [model.head.weight])
    torch.testing.assert_close(g_ours, g_paper)
    assert torch.equal(g_ours[2:], torch.zeros_like(g_ours[2:]))  # the new classes are not distilled


def test_lwf_task_incremental_sums_one_term_per_old_head() -> None:
    model = classifier(6)
    lwf = LwF(lam=1.0, temperature=3.0)
    for head in [(0, 1), (2, 3)]:
        lwf.consolidate(model, Experience(torch.zeros(2, 5, dtype=torch.float64), active_outputs=head))
    z_old = model(data((4, 5)).inputs).detach()
    with torch.no_grad():
        model.head.bias.add_(torch.linspace(-1, 1, 6, dtype=torch.float64))
    x = data((4, 5)).inputs
    outputs = model(x)
    loss = lwf.batch_loss(model, Batch(x, torch.zeros(len(x), dtype=torch.long)), outputs)
    assert loss is not None
    expected = torch.stack(
        [
            paper_l_old(z_old[:, list(h)], outputs[:, list(h)], 3.0) - entropy(z_old[:, list(h)], 3.0)
            for h in [(0, 1), (2, 3)]
        ]
    ).sum()
    assert float(loss.detach()) == pytest.approx(float(expected.detach()), rel=1e-10)
    assert lwf.heads == [(0, 1), (2, 3)]


# -- DER++ ---------------------------------------------------------------------------------------------------------
def test_derpp_loss_is_alpha_logit_regression_plus_beta_cross_entropy() -> None:
    model = classifier(2)
    derpp = DERPP(alpha=0.3, beta=0.8, buffer_size=50)
    first = data((0, 1), n=6, seed=1)
    assert first.targets is not None
    stored_logits = model(first.inputs).detach()
    assert derpp.batch_loss(model, Batch(first.inputs, first.targets), stored_logits) is None  # empty buffer
    assert derpp.stored_samples() == 6 and torch.equal(derpp.buffer["logits"], stored_logits.float())
    spec = ModelSpec("mlp", (5,), ["0", "1"], {"hidden": [7]})
    grow_classes(model, spec, ["2", "3"])  # class-incremental: the stored logits are narrower than the head
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    second = data((2, 3), n=8, seed=2)
    assert second.targets is not None
    loss = derpp.batch_loss(model, Batch(second.inputs, second.targets), model(second.inputs))
    assert loss is not None
    h = model(first.inputs)  # a memory batch of the current size (8) takes every stored sample (6)
    alpha_term = (stored_logits.float().double() - h[:, :2]).square().sum(1).mean()
    beta_term = F.cross_entropy(h, first.targets)  # stored unmasked: every output competes now
    assert float(loss.detach()) == pytest.approx(float((0.3 * alpha_term + 0.8 * beta_term).detach()), rel=1e-6)
    assert derpp.stored_samples() == 14 and torch.equal(derpp.buffer["widths"], torch.tensor([2] * 6 + [4] * 8))


def test_derpp_reservoir_keeps_a_uniform_sample_of_the_stream() -> None:
    late = 0
    for seed in range(40):
        derpp = DERPP(buffer_size=10, seed=seed)
        stream = torch.arange(40, dtype=torch.float64)[:, None].repeat(1, 5)
        for start in range(0, 40, 8):
            chunk = stream[start : start + 8]
            derpp.offer(chunk, torch.zeros(8, dtype=torch.long), torch.zeros(8, 2), None, None)
        assert derpp.stored_samples() == 10 and derpp.seen == 40
        late += int((derpp.buffer["inputs"][:, 0] >= 20).sum())
    assert (
        140 < late < 260
    )  # each sample kept with probability 10/40: expectation 200 of 400 slots from the second half


def test_derpp_offers_each_sample_once_per_experience_in_the_last_epoch() -> None:
    for offer, offered in (("last", 16), ("every", 48)):
        derpp = DERPP(buffer_size=100, offer=offer)
        train(classifier(), derpp, data((0, 1), n=16), TrainConfig(epochs=3, batch_size=8))
        assert derpp.seen == offered and derpp.stored_samples() == offered
    with pytest.raises(ValueError, match="offer"):
        DERPP(offer="sometimes")


def test_derpp_buffer_keeps_sample_ids_and_the_task_masks() -> None:
    derpp = DERPP(buffer_size=4)
    mask = torch.tensor([[True, True, False, False]] * 3)
    derpp.offer(torch.ones(3, 5), torch.tensor([0, 1, 0]), torch.zeros(3, 4), mask, torch.tensor([7, 8, 9]))
    assert torch.equal(derpp._masks(torch.arange(3), 4), mask)
    assert derpp.forget({8, 100}) == 1 and derpp.buffer["ids"].tolist() == [7, 9]


# -- the hooks -----------------------------------------------------------------------------------------------------
class Recorder(FineTune):
    """Records the order of the hooks and what the model's gradient and parameters were at each."""

    registered = False

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []
        self.grad_at_backward: Tensor | None = None

    def batch_loss(self, model: nn.Module, batch: Batch, outputs: Tensor) -> Tensor | None:
        assert outputs.shape == (len(batch.targets), 2) and batch.replayed == 0
        self.calls.append("batch_loss")
        return outputs.sum() * 0.0

    def after_backward(self, model: nn.Module) -> None:
        self.calls.append("after_backward")
        assert all(p.grad is not None for p in model.parameters())

    def after_step(self, model: nn.Module) -> None:
        self.calls.append("after_step")


def test_trainer_calls_the_hooks_once_per_step_in_order() -> None:
    recorder = Recorder()
    result = train(classifier(), recorder, data((0, 1), n=16), TrainConfig(epochs=2, batch_size=8))
    assert result.steps == 4
    assert recorder.calls == ["batch_loss", "after_backward", "after_step"] * 4


def test_every_new_method_learns_a_sequence_with_weight_aligning() -> None:
    for name in ("lwf+wa", "si+wa", "derpp+wa"):
        learner = Learner.build(name)
        model = classifier(2)
        learner.learn(model, data((0, 1)), TrainConfig(epochs=1, batch_size=8))
        spec = ModelSpec("mlp", (5,), ["0", "1"], {"hidden": [7]})
        grow_classes(model, spec, ["2", "3"])
        report = learner.learn(
            model,
            Experience(data((2, 3)).inputs, data((2, 3)).targets, new_classes=(2, 3)),
            TrainConfig(epochs=1, batch_size=8),
        )
        assert report.gamma is not None and math.isfinite(report.gamma)
        assert report.retention_protected == (name == "derpp+wa")
