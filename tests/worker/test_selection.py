"""The stability–plasticity choice per update: the gate's criterion, the record, the bounds, the fixed values."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch

from cl_core.experience import Experience
from cl_core.learner import Learner
from cl_core.models import ModelSpec, build_model, grow_classes
from cl_core.trainer import TrainConfig
from registry import LocalStore, ModelRecord, UpdateRecord
from worker.config import WorkerSettings
from worker.evaluation import GateRules, gate
from worker.pipeline import run_update
from worker.scheduling import new_update_id
from worker.selection import (
    Candidate,
    CandidateResult,
    Fixed,
    SelectionSplit,
    TrainingRecord,
    check_update_hparams,
    choose,
    fit_update,
    plan,
    rank,
    stratified_share,
    within_bound,
)

# small and fast: blobs in 8 dimensions, a tiny MLP, a short budget
FAST: dict[str, Any] = {
    "device": "cpu",
    "batch_size": 16,
    "lr": 0.01,
    "train_budget": "validation",
    "selection": True,
    "budget_min_steps": 10,
    "budget_max_steps": 60,
    "budget_eval_every": 5,
    "budget_patience": 3,
    "memory_per_class": 20,
}


def blobs(classes: list[int], n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    targets = torch.tensor([c for c in classes for _ in range(n)])
    inputs = torch.eye(8)[targets] * 3 + 0.4 * torch.randn(len(targets), 8, generator=generator)
    return inputs, targets


def figures(new: float, drop: float, within: bool, lam: float = 1.0) -> CandidateResult:
    return CandidateResult(lam, 1, 10, 20, "plateau", 0.1, 0.1, new, 1 - drop, 1.0, drop, within)


# -- the choice follows the gate's criterion -------------------------------------------------------------------------
def test_the_most_plastic_candidate_that_breaks_the_forgetting_bound_is_not_chosen() -> None:
    """Three candidates on the same selection split, judged by the gate's own function: the weakest penalty learns
    the new classes best but loses a fifth of an old class, which the bound forbids."""
    rules = GateRules(max_forgetting=0.05, max_class_drop=0.10, min_class_samples=30)
    labels = ["a"] * 40 + ["b"] * 40
    parent = list(labels)  # the parent knew every old sample
    plastic = ["c" if i < 16 else y for i, y in enumerate(labels)]  # 16 of a's 40 now called the new class
    middle = ["c" if i < 2 else y for i, y in enumerate(labels)]
    stiff = list(labels)
    results = []
    for lam, candidate, new_accuracy in ((1.0, plastic, 0.99), (10.0, middle, 0.93), (100.0, stiff, 0.80)):
        verdict = gate(parent, candidate, labels, ["a", "b"], 1, rules)
        within, _ = within_bound(verdict, parent, candidate, labels, rules)
        results.append(
            CandidateResult(
                lam,
                1,
                10,
                20,
                "plateau",
                0.1,
                0.2,
                new_accuracy,
                verdict.candidate_accuracy,
                verdict.parent_accuracy,
                verdict.drop,
                within,
                verdict.failed_classes,
            )
        )
    assert not results[0].within_bound and results[0].failed_classes == ["a"]  # the per-class rule, too
    assert results[1].within_bound and results[2].within_bound
    assert choose(results) == 1  # the best new-data accuracy among those within the bound
    assert rank(results) == [1, 2, 0]


def test_the_average_rule_on_a_small_split_needs_evidence_as_the_gate_demands_for_small_classes() -> None:
    rules = GateRules(max_forgetting=0.05, max_class_drop=0.10, min_class_samples=30)
    labels = ["a"] * 15 + ["b"] * 15
    two_lost = ["c", "c", *labels[2:]]  # a drop of 0.067, but 2 of 30 proves little
    ten_lost = ["c"] * 10 + labels[10:]
    for candidate, expected in ((two_lost, True), (ten_lost, False)):
        verdict = gate(labels, candidate, labels, ["a", "b"], 1, rules)
        assert not verdict.passed  # the point estimate alone breaks the average rule either way
        within, bound = within_bound(verdict, labels, candidate, labels, rules)
        assert within is expected and bound is not None and (bound <= 0.05) is expected


def test_ties_prefer_the_better_old_accuracy_then_the_earlier_candidate_and_none_within_means_least_forgetting() -> (
    None
):
    tie = [figures(0.9, 0.03, True), figures(0.9, 0.01, True), figures(0.9, 0.01, True)]
    assert choose(tie) == 1
    beyond = [figures(0.99, 0.30, False), figures(0.95, 0.08, False), figures(0.97, 0.08, False)]
    assert choose(beyond) == 2  # the least drop; equal drops: the better new accuracy
    with pytest.raises(ValueError):
        choose([])


def test_a_stratified_share_takes_part_of_every_class_and_never_all_of_one() -> None:
    labels = torch.tensor([0] * 50 + [1] * 10 + [2] * 2 + [3] + [-1] * 5)
    mask = stratified_share(labels, 0.2, torch.Generator().manual_seed(0))
    assert [int(mask[labels == c].sum()) for c in (0, 1, 2, 3, -1)] == [10, 2, 1, 0, 0]


# -- fit_update: the record, the bounds, what is fixed ---------------------------------------------------------------
def two_experiences(**overrides: Any) -> tuple[Learner, Any, Experience, WorkerSettings]:
    """A learner and model that learned classes 0-2 (exemplars kept), and an experience that brings 3 and 4."""
    settings = WorkerSettings(**{**FAST, **overrides})
    spec = ModelSpec("mlp", (8,), ["0", "1", "2"], {"hidden": [16]})
    model = build_model(spec, seed=0)
    learner = Learner.build(
        "online-ewc+replay+wa", method_hparams={"lam": 100.0}, memory_hparams=settings.memory_hparams()
    )
    x, y = blobs([0, 1, 2], 40)
    learner.learn(model, Experience(x, y, None, (0, 1, 2)), TrainConfig(epochs=5, batch_size=16, lr=0.01))
    new = grow_classes(model, spec, ["3", "4"])
    x, y = blobs([3, 4], 40, seed=1)
    return learner, (model, spec), Experience(x, y, None, tuple(new)), settings


def fit(learner: Learner, bundle: Any, experience: Experience, settings: WorkerSettings, **kwargs: Any) -> Any:
    model, spec = bundle
    config = settings.train_config(seed=1)
    return fit_update(
        learner,
        model,
        experience,
        classes=list(spec.classes),
        old_outputs=3,
        parent_version=1,
        fixed=kwargs.pop("fixed", Fixed()),
        settings=settings,
        config=config,
        **kwargs,
    )


def test_the_record_lists_every_candidate_with_its_figures_and_the_one_chosen() -> None:
    learner, bundle, experience, settings = two_experiences()
    fitted = fit(learner, bundle, experience, settings)
    record = fitted.record
    assert record.budget == "validation" and record.selection == "adaptive"
    tried = [(c.lam, c.replay_repeat) for c in record.candidates]
    assert tried[0] == (100.0, 1) and 2 <= len(tried) <= 3  # the configured values first
    # then a line search: more plastic while within the bound, more stable while beyond it
    direction = [(10.0, 1)] if record.candidates[0].within_bound else [(1000.0, 1), (10000.0, 1)]
    assert tried[1:] == direction[: len(tried) - 1]
    assert sum(c.chosen for c in record.candidates) == 1
    chosen = next(c for c in record.candidates if c.chosen)
    assert (record.lam, record.replay_repeat) == (chosen.lam, chosen.replay_repeat)
    assert fitted.learner.method.hparams()["lam"] == chosen.lam  # the learner that consolidated used it
    assert record.validation["new"] == 8 and record.validation["old"] == 15  # 10 % of 80 new, 25 % of 60 exemplars
    for c in record.candidates:
        assert c.new_accuracy is not None and c.old_accuracy is not None and c.parent_old_accuracy is not None
        assert 10 <= c.best_step <= c.steps <= 60 and c.stopped_by in ("plateau", "max_steps")
    assert record.total_steps == sum(c.steps for c in record.candidates) + record.steps
    assert fitted.report.train.steps == record.steps > 0 and learner.memory is not None
    assert TrainingRecord.from_json(record.to_json()) == record  # stored as JSON, read back typed


def test_the_line_search_goes_towards_plasticity_within_the_bound_and_towards_stability_beyond_it() -> None:
    settings = WorkerSettings(**FAST, selection_max_candidates=8, selection_replay_repeats=[2, 4])
    learner, _, experience, _ = two_experiences()
    split = SelectionSplit.draw(experience, learner.memory, 3, 0.1, 0.25, seed=0)
    chosen = plan(learner, Fixed(), split, True, settings)
    assert chosen.first == Candidate(100.0, 1)
    assert chosen.plastic == [Candidate(10.0, 1)]
    assert chosen.stable == [Candidate(1000.0, 1), Candidate(10000.0, 1), Candidate(10000.0, 2), Candidate(10000.0, 4)]

    def walk(within: list[bool]) -> list[Candidate]:
        results: list[CandidateResult] = []
        tried = []
        for candidate, ok in zip(chosen.candidates(results), within, strict=False):
            tried.append(candidate)
            results.append(figures(0.9, 0.0 if ok else 0.2, ok))
        return tried

    assert walk([True, True, True]) == [Candidate(100.0, 1), Candidate(10.0, 1)]  # no more plastic step left
    assert walk([True, False]) == [Candidate(100.0, 1), Candidate(10.0, 1)]
    assert walk([False, False, True, True]) == [Candidate(100.0, 1), Candidate(1000.0, 1), Candidate(10000.0, 1)]
    assert len(walk([False] * 9)) == 5  # every stable step, then nothing more to try


def test_settings_bound_the_candidates_the_steps_and_the_time() -> None:
    learner, bundle, experience, settings = two_experiences(selection_max_candidates=2, budget_max_steps=25)
    record = fit(learner, bundle, experience, settings).record
    assert len(record.candidates) == 2
    assert all(c.steps <= 25 for c in record.candidates)
    assert record.steps <= math.ceil(25 * 1.5)  # the final training: the winner's steps, scaled to all the data

    learner, bundle, experience, settings = two_experiences(selection_max_seconds=5.0)
    now = [0.0]

    def clock() -> float:
        now[0] += 1.0  # every look at the clock is a second later
        return now[0]

    record = fit(learner, bundle, experience, settings, clock=clock).record
    assert len(record.candidates) == 1 and record.candidates[0].stopped_by == "deadline"
    assert record.candidates[0].chosen


def test_values_fixed_by_the_hparams_are_not_chosen() -> None:
    learner, bundle, experience, settings = two_experiences()
    record = fit(learner, bundle, experience, settings, fixed=Fixed(lam=True)).record
    assert {c.lam for c in record.candidates} == {100.0} and record.candidates[0].replay_repeat == 1
    assert [c.replay_repeat for c in record.candidates][1:] in ([], [2])  # only the share is free
    assert "λ fixed" in record.reason
    learner, bundle, experience, settings = two_experiences()
    record = fit(learner, bundle, experience, settings, fixed=Fixed(lam=True, replay_repeat=3)).record
    assert record.selection == "fixed" and len(record.candidates) == 1 and record.replay_repeat == 3

    learner, bundle, experience, settings = two_experiences(selection=False)
    record = fit(learner, bundle, experience, settings).record
    assert record.selection == "fixed" and len(record.candidates) == 1 and record.budget == "validation"

    learner, bundle, experience, settings = two_experiences(train_budget="epochs", epochs=3)
    record = fit(learner, bundle, experience, settings).record
    assert record.budget == "epochs" and record.candidates == [] and record.epochs == 3


def test_fixed_splits_the_update_hparams_from_the_learner_overrides() -> None:
    fixed, overrides = Fixed.split({"lam": 5.0, "memory": {"per_class": 3}}, {"replay_repeat": 2.0, "gamma": 0.9})
    assert fixed == Fixed(lam=True, replay_repeat=2)
    assert overrides == {"lam": 5.0, "memory": {"per_class": 3}, "gamma": 0.9}
    assert Fixed.split({}, {})[0] == Fixed()


# -- the update's own path ---------------------------------------------------------------------------------------------
def test_an_update_records_its_choice_in_the_version_and_its_summary_in_the_update(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    store.create_model(ModelRecord(name="m", architecture="mlp", input_shape=[8], classes=[], options={"hidden": [16]}))
    settings = WorkerSettings(**FAST, max_forgetting=0.5)
    for classes, seed in (([0, 1, 2], 0), ([3, 4], 1)):
        x, y = blobs(classes, 40, seed)
        store.append_samples("m", x, [str(int(t)) for t in y], 0.2)
        record = UpdateRecord(update_id=new_update_id(), model="m", method="auto", triggered_by="test")
        store.put_update(record)
        result = run_update(store, "m", record.update_id, settings)
        assert result.status == "succeeded", result.error
    first, second = (store.get_version("m", v).train_config for v in (1, 2))
    assert first["training"]["reason"] == "nothing to choose: no earlier classes"
    assert len(first["training"]["candidates"]) == 1
    training = TrainingRecord.from_json(second["training"])
    assert training.selection == "adaptive" and 2 <= len(training.candidates) <= 3
    assert second["epochs"] == training.epochs
    summary = result.metrics["training"]
    assert summary["candidates"] == len(training.candidates) and summary["lam"] == training.lam
    assert summary["total_steps"] > 0


# -- the hparams an update request may fix -------------------------------------------------------------------------
def test_known_hparams_within_their_range_are_accepted() -> None:
    assert check_update_hparams("auto", {"lam": 0, "gamma": 1, "replay_repeat": 3}) == {
        "lam": 0.0,
        "gamma": 1.0,
        "replay_repeat": 3.0,
    }
    assert check_update_hparams("mas+replay+wa", {"lam": 1e12}) == {"lam": 1e12}
    assert check_update_hparams("finetune+replay", {"replay_repeat": 2}) == {"replay_repeat": 2.0}


@pytest.mark.parametrize(
    ("method", "hparams", "says"),
    [
        ("auto", {"lr": 1.0}, "unknown hyper-parameter"),
        ("auto", {"../../lam": 1.0}, "unknown hyper-parameter"),
        ("auto", {"lam": "100"}, "must be a number"),
        ("auto", {"lam": True}, "must be a number"),
        ("auto", {"lam": None}, "must be a number"),
        ("auto", {"lam": [1.0]}, "must be a number"),
        ("auto", {"lam": -1.0}, "finite non-negative"),
        ("auto", {"lam": float("nan")}, "finite non-negative"),
        ("auto", {"lam": float("inf")}, "finite non-negative"),
        ("auto", {"lam": 10**400}, "out of range"),
        ("auto", {"lam": 1e13}, "at most"),
        ("auto", {"gamma": 1.5}, "at most 1"),
        ("auto", {"replay_repeat": 1.5}, "integer from 1 to 16"),
        ("auto", {"replay_repeat": 17}, "integer from 1 to 16"),
        ("auto", {"replay_repeat": 0}, "integer from 1 to 16"),
        ("finetune+replay", {"lam": 1.0}, "no penalty"),
        ("mas", {"gamma": 0.5}, "does not use it"),
        ("ewc", {"replay_repeat": 2}, "does not replay"),
        ("auto", {f"k{i}": 1 for i in range(100)}, "keys"),
    ],
)
def test_hostile_hparams_are_refused_with_a_reason(method: str, hparams: dict[str, Any], says: str) -> None:
    with pytest.raises(ValueError, match=says):
        check_update_hparams(method, hparams)
