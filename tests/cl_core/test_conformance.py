"""Every registered method passes the same checks, the way the store contract tests run every store: the registry
derives the names, the state survives safetensors bytes, the penalty vanishes at the anchor, a growing head is
handled, and memory stays within its bound.  A new method file is picked up here without a change."""

import inspect
import itertools

import pytest
import torch
from safetensors.torch import load, save

from cl_core.experience import Experience
from cl_core.learner import Learner
from cl_core.methods import METHODS, ContinualMethod, build_method
from cl_core.models import Classifier, ModelSpec, build_model, grow_classes
from cl_core.naming import BASES, parse_method_name
from cl_core.trainer import Batch, TrainConfig

NAMES = sorted(METHODS)
CONFIG = TrainConfig(epochs=2, batch_size=8)


def small_model(classes: int = 2, seed: int = 0) -> Classifier:
    spec = ModelSpec("mlp", (6,), [str(c) for c in range(classes)], {"hidden": [8]})
    return build_model(spec, seed=seed).double()


def task(classes: tuple[int, ...], seed: int, n: int = 12, new: bool = True) -> Experience:
    g = torch.Generator().manual_seed(seed)
    labels = torch.tensor(classes).repeat(n // len(classes))
    x = torch.randn(len(labels), 6, generator=g, dtype=torch.float64) + labels[:, None].double()
    return Experience(x, labels, new_classes=classes if new else (), ids=torch.arange(len(labels)) + 100 * seed)


def state_size(method: ContinualMethod) -> int:
    return sum(t.numel() for t in method.state_dict().values())


def grow(model: Classifier, to: int) -> None:
    spec = ModelSpec("mlp", (6,), [str(c) for c in range(model.head.out_features)], {"hidden": [8]})
    grow_classes(model, spec, [str(c) for c in range(model.head.out_features, to)])


def test_the_names_derive_from_the_registry() -> None:
    assert set(BASES) == {*METHODS, "joint"} and BASES[:2] == ("finetune", "joint")
    assert {"lwf", "si", "derpp"} <= set(METHODS)
    for name, cls in METHODS.items():
        assert cls.name == name and parse_method_name(name).base == name
        accepted = inspect.signature(cls).parameters
        for argument in (cls.strength, cls.memory_argument, *(cls.tuning_grid or {})):
            assert argument is None or argument in accepted, (name, argument)
        if cls.memory_argument is not None:
            with pytest.raises(ValueError, match="own memory"):
                parse_method_name(f"{name}+replay")


@pytest.mark.parametrize("name", NAMES)
def test_hparams_rebuild_an_equivalent_method(name: str) -> None:
    method = build_method(name)
    assert type(method) is METHODS[name]
    assert build_method(name, **method.hparams()).hparams() == method.hparams()


@pytest.mark.parametrize("name", NAMES)
def test_state_round_trips_through_safetensors_bytes(name: str) -> None:
    model = small_model()
    learner = Learner.build(f"{name}+wa")
    learner.learn(model, task((0, 1), 0), CONFIG)
    grow(model, 4)
    learner.learn(model, task((2, 3), 1), CONFIG)
    method = learner.method
    restored = build_method(name, **method.hparams())
    restored.load_state_dict(load(save(method.state_dict())))
    assert restored.state_dict().keys() == method.state_dict().keys()
    for key, value in method.state_dict().items():
        assert torch.equal(restored.state_dict()[key], value), key
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05)
    assert float(restored.penalty(model).detach()) == pytest.approx(float(method.penalty(model).detach()), rel=1e-12)
    batch = task((0, 1, 2, 3), 7, n=8)
    assert batch.targets is not None
    outputs = model(batch.inputs)
    a = method.batch_loss(model, Batch(batch.inputs, batch.targets), outputs)
    b = restored.batch_loss(model, Batch(batch.inputs, batch.targets), outputs)
    assert (a is None) == (b is None)
    if a is not None and b is not None:
        assert float(a.detach()) == pytest.approx(float(b.detach()), rel=1e-12)


@pytest.mark.parametrize("name", NAMES)
def test_penalty_is_zero_at_the_anchor_and_the_grown_rows_are_free(name: str) -> None:
    model = small_model()
    learner = Learner.build(name)
    learner.learn(model, task((0, 1), 0), CONFIG)
    method = learner.method
    assert abs(float(method.penalty(model).detach())) <= 1e-10
    data = task((0, 1), 3, n=8)
    assert data.targets is not None
    loss = method.batch_loss(model, Batch(data.inputs, data.targets), model(data.inputs))
    if name == "lwf":  # the distillation is the only loss LwF adds: zero at the old network too
        assert loss is not None and abs(float(loss.detach())) <= 1e-12
    grow(model, 4)  # two classes join the head
    penalty = method.penalty(model)
    assert abs(float(penalty.detach())) <= 1e-10
    head = model.head.weight
    if penalty.requires_grad:
        (grad,) = torch.autograd.grad(penalty, [head], allow_unused=True)
        assert grad is None or torch.equal(grad[2:], torch.zeros_like(grad[2:]))
    report = learner.learn(model, task((2, 3), 1), CONFIG)  # training with the grown head works
    assert report.train.steps > 0 and model.head.out_features == 4


@pytest.mark.parametrize("name", NAMES)
def test_memory_is_bounded(name: str) -> None:
    """The state stops growing once the head does, unless the method keeps something per experience (then it grows
    by the same amount each time); a method's own sample memory never exceeds its budget."""
    cls = METHODS[name]
    hparams = {cls.memory_argument: 10} if cls.memory_argument is not None else {}
    model = small_model()
    learner = Learner.build(name, method_hparams=hparams)
    sizes = []
    for k in range(6):
        learner.learn(model, task((0, 1), k, new=k == 0), TrainConfig(epochs=1, batch_size=8))
        sizes.append(state_size(learner.method))
        assert learner.method.stored_samples() <= (10 if cls.memory_argument is not None else 0)
    if cls.memory_argument is not None:
        assert learner.method.stored_samples() == 10 and len(set(sizes[1:])) == 1
    elif cls.grows_with_experiences:
        steps = {b - a for a, b in itertools.pairwise(sizes[1:])}
        assert len(steps) == 1, sizes
    else:
        assert len(set(sizes[1:])) == 1, sizes


@pytest.mark.parametrize("name", NAMES)
def test_deleted_samples_leave_the_methods_memory(name: str) -> None:
    cls = METHODS[name]
    hparams = {cls.memory_argument: 10} if cls.memory_argument is not None else {}
    model = small_model()
    learner = Learner.build(name, method_hparams=hparams)
    learner.learn(model, task((0, 1), 0), CONFIG)
    held = learner.method.stored_samples()
    removed = learner.forget(set(range(0, 100)))
    assert removed == held and learner.method.stored_samples() == 0
    assert learner.stores_samples == (cls.memory_argument is not None)
