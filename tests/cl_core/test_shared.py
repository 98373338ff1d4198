"""Shared pieces: metrics, the method-name parser, validation, the MNIST-5k protocol data."""

import numpy as np
import pytest
import torch

from cl_core import data
from cl_core.experience import Experience
from cl_core.metrics import average_accuracy, backward_transfer, forgetting, summarize
from cl_core.naming import BASES, parse_method_name
from cl_core.validation import InvalidData, check_inputs, check_targets, normalize_label


def test_metrics_match_hand_computed_values() -> None:
    a = [
        [0.9, 0.1, 0.0],
        [0.7, 0.8, 0.2],
        [0.6, 0.85, 0.95],
    ]
    assert average_accuracy(a) == pytest.approx((0.6 + 0.85 + 0.95) / 3)
    # BWT = ((0.6 − 0.9) + (0.85 − 0.8)) / 2
    assert backward_transfer(a) == pytest.approx((-0.3 + 0.05) / 2)
    # forgetting = ((max(0.9, 0.7) − 0.6) + (max(0.8) − 0.85)) / 2
    assert forgetting(a) == pytest.approx((0.3 - 0.05) / 2)
    joint = summarize([[0.9, 0.8]])
    assert joint.acc == pytest.approx(0.85) and joint.bwt is None and joint.forgetting is None
    with pytest.raises(ValueError):
        average_accuracy([])


def test_metrics_accept_a_lower_triangular_matrix() -> None:
    assert backward_transfer([[0.9], [0.8, 0.7]]) == pytest.approx(-0.1)


@pytest.mark.parametrize(
    ("name", "canonical"),
    [
        ("mas", "mas"),
        ("MAS+wa+replay", "mas+replay+wa"),
        ("finetune+replay", "finetune+replay"),
        ("joint", "joint"),
        ("online-ewc+replay", "online-ewc+replay"),
        ("rewc", "rewc"),
        ("slnid+wa", "slnid+wa"),
    ],
)
def test_method_names_parse(name: str, canonical: str) -> None:
    assert parse_method_name(name).name == canonical


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("sgd", "known bases: " + ", ".join(BASES)),
        ("mas+kd", "known suffixes"),
        ("mas+replay+replay", "repeated"),
        ("joint+replay", "no suffix"),
        ("", "empty"),
    ],
)
def test_bad_method_names_are_errors(name: str, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("+", r"\+")):
        parse_method_name(name)


def test_validation_names_problem_and_index() -> None:
    x = torch.zeros(4, 3)
    x[3, 0] = float("inf")
    with pytest.raises(InvalidData, match=r"inputs\[3\] contains NaN or Inf") as info:
        check_inputs(x)
    assert info.value.index == 3
    with pytest.raises(ValueError, match=r"shape \(2,\) per sample, expected \(3,\)"):
        check_inputs(torch.zeros(2, 2), (3,))
    with pytest.raises(ValueError, match="empty"):
        check_inputs(torch.zeros(0, 3))
    with pytest.raises(ValueError, match=r"targets\[1\] = 5"):
        check_targets(torch.tensor([0, 5]), 2, num_classes=3)
    with pytest.raises(ValueError, match="one label per sample"):
        check_targets(torch.tensor([0, 1, 2]), 2)
    with pytest.raises(ValueError, match="integer"):
        check_targets(torch.tensor([0.0, 1.0]), 2)
    assert normalize_label(7, 0) == "7" and normalize_label(" cat ", 0) == "cat"
    for bad in ("", "x" * 65, None, True, 1.5, "a\nb"):
        with pytest.raises(InvalidData, match="sample 4"):
            normalize_label(bad, 4)


def test_mnist5k_split_follows_the_protocol() -> None:
    d = data.load_mnist5k()
    assert len(d.train) == 4000 and len(d.test) == 1000
    assert d.train.inputs.shape == (4000, 784) and d.train.inputs.dtype == torch.float32
    assert float(d.train.inputs.min()) >= 0 and float(d.train.inputs.max()) == 1.0
    assert torch.bincount(d.train.labels).tolist() == [400] * 10
    assert torch.bincount(d.test.labels).tolist() == [100] * 10
    fit, val = data.validation_split(d.train)
    assert len(fit) == 3600 and len(val) == 400 and torch.bincount(val.labels).tolist() == [40] * 10
    # no test image is in the train split
    train_rows = {row.tobytes() for row in d.train.inputs.numpy()}
    assert not any(row.tobytes() in train_rows for row in d.test.inputs.numpy()[:200])


def labels_of(experience: Experience) -> list[int]:
    assert experience.targets is not None
    return [int(t) for t in experience.targets.tolist()]


def test_scenarios_follow_the_protocol() -> None:
    d = data.load_mnist5k()
    task = data.build_scenario("split-task", d.train, d.test)
    assert [t.train.active_outputs for t in task.tasks] == [(0, 1), (2, 3), (4, 5), (6, 7), (8, 9)]
    assert sorted(set(labels_of(task.tasks[2].train))) == [4, 5]
    domain = data.build_scenario("split-domain", d.train, d.test)
    assert domain.num_outputs == 2 and set(labels_of(domain.tasks[3].train)) == {0, 1}
    cls = data.build_scenario("split-class", d.train, d.test)
    assert [t.num_outputs for t in cls.tasks] == [2, 4, 6, 8, 10]
    assert cls.tasks[1].train.new_classes == (2, 3)
    perm = data.build_scenario("permuted", d.train, d.test)
    p1 = np.random.default_rng(1).permutation(784)
    assert torch.equal(perm.tasks[0].train.inputs, d.train.inputs)
    assert torch.equal(perm.tasks[1].train.inputs, d.train.inputs[:, torch.from_numpy(p1)])
    with pytest.raises(ValueError, match="known"):
        data.build_scenario("rotated", d.train, d.test)
