"""Exemplar memory, weight aligning and the learner that composes them with a penalty."""

from typing import Literal

import pytest
import torch
from safetensors.torch import load, save
from torch import nn

from cl_core.data import build_scenario, load_mnist5k
from cl_core.experience import Experience
from cl_core.learner import Learner
from cl_core.memory import ExemplarMemory
from cl_core.models import ModelSpec, build_model, grow_classes
from cl_core.protocol import run_scenario
from cl_core.trainer import TrainConfig
from cl_core.weight_align import align_weights, clip_nonnegative


class Identity(nn.Module):
    """A 'model' whose features are its inputs, so herding can be checked by hand."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return x


def labeled(n_per_class: dict[int, int], seed: int = 0, dim: int = 4) -> Experience:
    g = torch.Generator().manual_seed(seed)
    labels = torch.cat([torch.full((n,), c) for c, n in n_per_class.items()])
    return Experience(torch.rand(len(labels), dim, generator=g) + labels[:, None].float(), labels)


def test_budget_per_class_and_total() -> None:
    memory = ExemplarMemory(per_class=3, total=8, selection="reservoir")
    memory.update(Identity(), labeled({0: 10, 1: 2}))
    assert sorted(memory.targets.tolist()) == [0, 0, 0, 1, 1]
    memory.update(Identity(), labeled({2: 10, 3: 10}, seed=1))
    # 4 classes share a total of 8: two each
    assert torch.bincount(memory.targets).tolist() == [2, 2, 2, 2]


def test_herding_picks_samples_whose_running_mean_tracks_the_class_mean() -> None:
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.71, 0.71], [1.0, 0.1]])
    memory = ExemplarMemory(per_class=2, selection="herding")
    memory.update(Identity(), Experience(x, torch.zeros(4, dtype=torch.long)))
    normed = x / x.norm(dim=1, keepdim=True)
    mean = normed.mean(0)
    first = int((mean - normed).norm(dim=1).argmin())
    assert memory.inputs is not None
    assert torch.equal(memory.inputs[0], x[first])  # the sample nearest the class mean comes first
    second = int(((mean - (normed[first] + normed) / 2).norm(dim=1) + 1e9 * (torch.arange(4) == first)).argmin())
    assert torch.equal(memory.inputs[1], x[second])


def test_reservoir_samples_a_class_arriving_over_experiences() -> None:
    """Protocol 1's per-class budget: one reservoir per class over every experience that brought it."""
    memory = ExemplarMemory(per_class=5, selection="reservoir", seed=3, balance="class")
    for k in range(4):
        memory.update(Identity(), labeled({7: 50}, seed=k))
    assert len(memory) == 5 and memory.seen[7] == 200
    # later experiences got a fair share of the slots over many seeds
    late = 0
    for seed in range(40):
        m = ExemplarMemory(per_class=5, selection="reservoir", seed=seed, balance="class")
        first, second = labeled({7: 50}, seed=0), labeled({7: 50}, seed=1)
        m.update(Identity(), first)
        m.update(Identity(), second)
        assert m.inputs is not None
        late += sum(bool((second.inputs == row).all(dim=1).any()) for row in m.inputs)
    assert 70 < late < 130  # expectation 100 of 200 slots


def test_memory_state_round_trips_and_replays_with_masks() -> None:
    memory = ExemplarMemory(per_class=2)
    memory.update(Identity(), Experience(torch.rand(6, 4), torch.tensor([0, 0, 1, 1, 0, 1]), (0, 1)))
    memory.update(Identity(), Experience(torch.rand(4, 4), torch.tensor([2, 3, 2, 3]), (2, 3)))
    restored = ExemplarMemory(**memory.hparams())
    restored.load_state_dict(load(save(memory.state_dict())))
    assert restored.inputs is not None and memory.inputs is not None
    assert torch.equal(restored.inputs, memory.inputs) and restored.active == memory.active
    batch = restored.replay_batch(50, 5, torch.Generator().manual_seed(0))
    assert batch is not None
    _, y, mask = batch
    assert mask is not None and mask.shape == (len(y), 5)
    for target, row in zip(y.tolist(), mask, strict=True):
        task = (0, 1) if target < 2 else (2, 3)
        assert row.nonzero().flatten().tolist() == list(task)
    restored.keep_only(restored.targets != 0)
    assert 0 not in restored.targets.tolist()


def test_weight_aligning_matches_norms_and_clipping_keeps_weights_nonnegative() -> None:
    head = nn.Linear(3, 4)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[1.0, 0, 0], [0, 2.0, 0], [0, 0, 6.0], [8.0, 0, 0]]))
    bias = head.bias.detach().clone()
    gamma = align_weights(head, [2, 3])
    assert gamma == pytest.approx(1.5 / 7.0)
    norms = head.weight.norm(dim=1)
    assert float(norms[2:].mean().detach()) == pytest.approx(float(norms[:2].mean().detach()))
    assert torch.equal(head.bias, bias)
    assert align_weights(head, []) is None
    with torch.no_grad():
        head.weight[0, 0] = -3.0
    clip_nonnegative(head)
    assert float(head.weight.min().detach()) >= 0


def test_learner_state_round_trips_and_warns_without_memory() -> None:
    spec = ModelSpec("mlp", (4,), ["a", "b"], {"hidden": [8]})
    model = build_model(spec, seed=0)
    learner = Learner.build("ewc+replay+wa", method_hparams={"lam": 5.0}, memory_hparams={"per_class": 3})
    learner.learn(model, labeled({0: 6, 1: 6}), TrainConfig(epochs=1))
    new = grow_classes(model, spec, ["c"])
    report = learner.learn(
        model, Experience(torch.rand(6, 4) + 2, torch.full((6,), 2), new_classes=tuple(new)), TrainConfig(epochs=1)
    )
    assert report.retention_protected and report.gamma is not None
    restored = Learner.from_hparams(learner.hparams())
    restored.load_state_dict(load(save(learner.state_dict())))
    assert restored.state_dict().keys() == learner.state_dict().keys()
    assert float(restored.method.penalty(model).detach()) == pytest.approx(
        float(learner.method.penalty(model).detach())
    )
    bare = Learner.build("mas")
    grow_classes(model, spec, ["d"])
    report = bare.learn(
        model, Experience(torch.rand(4, 4), torch.full((4,), 3), new_classes=(3,)), TrainConfig(epochs=1)
    )
    assert not report.retention_protected and "not protected" in (report.note or "")


@pytest.fixture(scope="module")
def two_class_tasks():  # type: ignore[no-untyped-def]
    d = load_mnist5k()
    return build_scenario("split-class", d.train, d.test, tasks=2)


def test_replay_keeps_old_classes_where_fine_tuning_forgets_them(two_class_tasks) -> None:  # type: ignore[no-untyped-def]
    """Protocol settings (10 epochs), two class-incremental tasks: regularisation alone cannot keep digits 0-1."""
    first_after = {
        name: run_scenario(two_class_tasks, name, method_hparams=hp).acc_matrix[1][0]
        for name, hp in [("finetune", None), ("finetune+replay", None), ("ewc+replay+wa", {"lam": 100.0})]
    }
    assert first_after["finetune"] < 0.1, first_after
    assert first_after["finetune+replay"] > first_after["finetune"] + 0.6, first_after
    assert first_after["ewc+replay+wa"] > first_after["finetune"] + 0.6, first_after


def test_batch_replay_protects_even_short_training(two_class_tasks) -> None:  # type: ignore[no-untyped-def]
    replayed = run_scenario(
        two_class_tasks, "finetune+replay", config=TrainConfig(epochs=2), memory_hparams={"replay": "batch"}
    )
    plain = run_scenario(two_class_tasks, "finetune", config=TrainConfig(epochs=2))
    assert replayed.acc_matrix[1][0] > plain.acc_matrix[1][0] + 0.6


def test_companion_mas_learns_importance_from_unlabeled_data_only() -> None:
    spec = ModelSpec("mlp", (4,), ["a", "b"], {"hidden": [8]})
    model = build_model(spec, seed=0)
    learner = Learner.build("online-ewc+replay+wa", method_hparams={"lam": 2.0}, unlabeled_hparams={"lam": 3.0})
    learner.learn(model, labeled({0: 6, 1: 6}), TrainConfig(epochs=1))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    report = learner.observe(model, torch.rand(7, 4))
    assert report.samples == 7 and learner.unlabeled is not None and learner.unlabeled.importance
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # never trains the weights
    with torch.no_grad():
        model.get_parameter("body.fc1.weight").add_(0.1)
    total = learner._training_method().penalty(model)
    assert float(total.detach()) == pytest.approx(
        float(learner.method.penalty(model).detach() + learner.unlabeled.penalty(model).detach())
    )
    restored = Learner.from_hparams(learner.hparams())
    restored.load_state_dict(load(save(learner.state_dict())))
    assert restored.experiences == 1 and restored.unlabeled is not None
    assert torch.equal(
        restored.unlabeled.importance["body.fc1.weight"], learner.unlabeled.importance["body.fc1.weight"]
    )


def test_weight_aligning_is_skipped_for_a_head_trained_without_its_constraint() -> None:
    spec = ModelSpec("mlp", (4,), ["a", "b"], {"hidden": [8]})
    model = build_model(spec, seed=0)
    plain = Learner.build("ewc+replay")
    plain.learn(model, labeled({0: 6, 1: 6}), TrainConfig(epochs=1))
    assert bool((model.head.weight < 0).any())
    learner = Learner.build("ewc+replay+wa")
    learner.load_state_dict({**plain.state_dict()})
    head_before = model.head.weight.detach().clone()
    new = grow_classes(model, spec, ["c"])
    report = learner.learn(
        model, Experience(torch.rand(6, 4), torch.full((6,), 2), new_classes=tuple(new)), TrainConfig(epochs=1)
    )
    assert report.gamma is None and "skipped" in (report.note or "")
    assert bool((model.head.weight[:2] < 0).any()) and not torch.equal(model.head.weight[:2], head_before)


def test_memory_keeps_sample_ids_and_forgets_them_on_request() -> None:
    selections: tuple[Literal["herding", "reservoir"], ...] = ("herding", "reservoir")
    for selection in selections:
        memory = ExemplarMemory(per_class=3, selection=selection)
        data = labeled({0: 5, 1: 5})
        data.ids = torch.arange(100, 110)
        memory.update(Identity(), data)
        assert len(memory) == 6 and set(memory.ids.tolist()) <= set(range(100, 110))
        restored = ExemplarMemory(**memory.hparams())
        restored.load_state_dict(load(save(memory.state_dict())))
        assert torch.equal(restored.ids, memory.ids)
        victim = int(memory.ids[0])
        assert restored.forget({victim, 999}) == 1 and victim not in restored.ids.tolist() and len(restored) == 5
