"""`clbench service`: its data, its operator-registered architecture, its settings per arm and its table."""

from pathlib import Path

import pytest
import torch

from cl_core.models import ModelSpec, architectures, build_model
from clbench.architectures import lenet_body
from clbench.servicebench import Run, load_dataset, markdown, register_architectures, settings_for


def test_the_packaged_digits_are_split_into_a_posted_part_and_a_test_part() -> None:
    digits = load_dataset("digits8x8")
    assert digits.input_shape == [64] and len(digits.train) + len(digits.test) == 1797
    assert float(digits.train.inputs.max()) == 1.0 and float(digits.train.inputs.min()) == 0.0
    assert set(digits.test.labels.tolist()) == set(range(10))
    with pytest.raises(ValueError, match="unknown dataset"):
        load_dataset("imagenet")


@pytest.mark.parametrize("shape", [(784,), (64,), (1, 28, 28)])
def test_lenet_takes_flat_square_and_channel_first_images(shape: tuple[int, ...]) -> None:
    assert lenet_body(shape)(torch.zeros(2, *shape)).shape == (2, 84)
    with pytest.raises(ValueError):
        lenet_body((10,))


def test_lenet_is_registered_the_way_an_operator_registers_one() -> None:
    register_architectures()  # through service.runtime's loader of CL_ARCHITECTURES
    assert "lenet" in architectures()
    model = build_model(ModelSpec("lenet", (64,), ["a", "b"]), seed=0)
    assert model(torch.zeros(3, 64)).shape == (3, 2)


def test_the_arms_are_the_service_settings_with_one_difference(tmp_path: Path) -> None:
    fixed, adaptive = (settings_for(arm, 20, tmp_path, 0) for arm in ("fixed", "adaptive"))
    assert fixed.train_budget == "epochs" and fixed.epochs == 10
    assert adaptive.train_budget == "validation" and adaptive.selection and adaptive.memory_per_class == 20
    with pytest.raises(ValueError, match="unknown arm"):
        settings_for("magic", 20, tmp_path, 0)


def run(arm: str, memory: int | None, old: float, new: float, seconds: float, served: bool = True) -> Run:
    return Run(
        "digits8x8",
        "mlp",
        arm,
        memory,
        0,
        ["succeeded", "succeeded"],
        0.99,
        old,
        new,
        (old + new) / 2,
        old if served else 0.99,
        new if served else 0.0,
        1.0,
        seconds,
        100,
        10.0,
        1,
        2,
    )


def test_the_table_states_each_target_with_its_numbers() -> None:
    runs = [
        run("joint", None, 0.98, 0.98, 2.0),
        run("fixed", 20, 0.80, 0.85, 2.0),
        run("adaptive", 20, 0.93, 0.95, 5.0),
        run("fixed", 200, 0.95, 0.95, 2.0),
        run("adaptive", 200, 0.95, 0.95, 7.0, served=False),
    ]
    text = markdown(runs)
    assert "| digits8x8 | mlp | 20 | adaptive | succeeded, succeeded | 93.0 | 95.0 | 94.0 | 98.0 |" in text
    assert "- digits8x8 · mlp · 20/class: met: old 93.0 %, new 95.0 % (joint 98.0 %); cost met: 2.50×" in text
    assert "- digits8x8 · mlp · 200/class: NOT met: old 99.0 %, new 0.0 %" in text
    assert "cost NOT met: 3.50×" in text
