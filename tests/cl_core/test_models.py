"""The growable head keeps every old weight and logit; specs rebuild models; importance survives growth."""

import pytest
import torch
from safetensors.torch import load, save

from cl_core.experience import Experience
from cl_core.methods import MAS
from cl_core.models import ModelSpec, architectures, build_model, grow_classes, register_architecture


def spec(arch: str = "mlp", classes: int = 3) -> ModelSpec:
    shape = (1, 8, 8) if arch == "cnn" else (8,)
    return ModelSpec(arch, shape, [f"c{i}" for i in range(classes)], {"hidden": [6]} if arch == "mlp" else {})


@pytest.mark.parametrize("arch", ["mlp", "cnn"])
def test_head_growth_keeps_old_logits_and_names(arch: str) -> None:
    s = spec(arch)
    model = build_model(s, seed=0)
    x = torch.rand(5, *s.input_shape)
    names = [n for n, _ in model.named_parameters()]
    before = model(x).detach()
    old_weight = model.head.weight.detach().clone()
    new = grow_classes(model, s, ["c1", "new-a", "new-b", "new-a"])
    assert new == [3, 4] and s.classes == ["c0", "c1", "c2", "new-a", "new-b"]
    after = model(x).detach()
    assert after.shape == (5, 5)
    assert torch.equal(model.head.weight[:3], old_weight)
    torch.testing.assert_close(after[:, :3], before, rtol=0, atol=1e-6)  # same weights; only summation order may differ
    assert [n for n, _ in model.named_parameters()] == names


def test_build_is_deterministic_and_round_trips_through_safetensors() -> None:
    s = spec()
    a, b = build_model(s, seed=4), build_model(s, seed=4)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert ka == kb and torch.equal(va, vb)
    c = build_model(ModelSpec.from_json(s.to_json()))
    c.load_state_dict(load(save(a.state_dict())))
    x = torch.rand(3, 8)
    assert torch.equal(a(x), c(x))


def test_importance_for_old_rows_is_kept_and_new_rows_start_free() -> None:
    s = spec()
    model = build_model(s, seed=0)
    mas = MAS(lam=1.0)
    mas.consolidate(model, Experience(torch.rand(10, 8)))
    old = mas.importance["head.weight"].clone()
    grow_classes(model, s, ["z"])
    assert float(mas.penalty(model).detach()) == 0.0  # growth alone moves nothing that mattered
    assert torch.equal(mas.importance["head.weight"][:3], old)
    assert torch.count_nonzero(mas.importance["head.weight"][3]) == 0
    mas.consolidate(model, Experience(torch.rand(10, 8)))
    assert mas.importance["head.weight"].shape == (4, 6)


def test_unknown_architecture_and_custom_registration() -> None:
    with pytest.raises(ValueError, match=r"known: .*mlp"):
        build_model(ModelSpec("resnet9000", (4,), ["a"]))
    register_architecture("tiny", lambda shape, width=3: torch.nn.Sequential(torch.nn.Linear(shape[0], width)))
    assert "tiny" in architectures()
    model = build_model(ModelSpec("tiny", (4,), ["a", "b"], {"width": 5}))
    assert model(torch.rand(2, 4)).shape == (2, 2)
    with pytest.raises(ValueError, match="bad options"):
        build_model(ModelSpec("tiny", (4,), ["a"], {"depth": 2}))


def test_spec_validation() -> None:
    with pytest.raises(ValueError, match="unique"):
        ModelSpec("mlp", (4,), ["a", "a"])
    with pytest.raises(ValueError, match="input_shape"):
        ModelSpec("mlp", (0,), [])
