"""The gate's rules: trusted evaluation (the update's own held-out data never judges the parent's classes), the
per-class bound (sound for small sets), and the waiting-class rule of the policy."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch

from registry import LocalStore, ModelRecord, PendingCounts, SampleSet, UpdateRecord
from registry.heldout import HeldOut
from worker.claims import waiting_classes
from worker.config import WorkerSettings
from worker.evaluation import (
    EvaluationData,
    GateRules,
    binomial_bounds,
    describe_gate,
    gate,
    paired_drop_lower_bound,
    predict_labels,
)
from worker.pipeline import run_update
from worker.scheduling import UpdatePolicy, new_update_id


def test_clopper_pearson_bounds_match_their_closed_forms() -> None:
    low, high = binomial_bounds(0, 80, 0.025)
    assert low == 0.0 and high == pytest.approx(1 - 0.025 ** (1 / 80))
    low, high = binomial_bounds(80, 80, 0.025)
    assert high == 1.0 and low == pytest.approx(0.025 ** (1 / 80))
    low, high = binomial_bounds(40, 80, 0.05)
    assert low < 0.5 < high and low == pytest.approx(1 - high)  # symmetric


def test_the_paired_drop_bound_catches_a_collapse_and_spares_small_noisy_drops() -> None:
    assert paired_drop_lower_bound(76, 0, 80) > 0.8  # a class that collapsed
    assert paired_drop_lower_bound(6, 1, 80) < 0.10  # the clean demo update's worst class (≈ 0.06)
    assert paired_drop_lower_bound(9, 0, 30) < 0.10  # a 0.30 drop on 30 samples: not proven beyond 0.10
    assert paired_drop_lower_bound(30, 0, 100) > 0.10


def test_the_per_class_rule_is_wrong_at_most_5_percent_of_the_time_at_the_limit() -> None:
    """Soundness by simulation: a class whose true paired drop is exactly the limit fails in ≤ 5 % of trials."""
    rng = np.random.default_rng(0)
    for n, p_lost, p_gained in ((30, 0.10, 0.0), (80, 0.15, 0.05), (200, 0.12, 0.02)):
        outcomes = rng.multinomial(n, [p_lost, p_gained, 1 - p_lost - p_gained], size=2000)
        failures = sum(paired_drop_lower_bound(int(lost), int(gained), n) > 0.10 for lost, gained, _ in outcomes)
        assert failures / 2000 <= 0.05, (n, failures)


def test_the_gate_names_failing_classes_and_lists_small_ones_as_unjudged() -> None:
    labels = ["a"] * 40 + ["b"] * 40 + ["c"] * 10
    parent = list(labels)
    candidate = ["b"] * 30 + ["a"] * 10 + ["b"] * 40 + ["a"] * 10  # a collapses, c (10 samples) too
    verdict = gate(parent, candidate, labels, ["a", "b", "c"], 1, GateRules(max_forgetting=0.9))
    assert not verdict.passed and verdict.failed_classes == ["a"] and verdict.unjudged_classes == ["c"]
    [a] = [c for c in verdict.classes if c.label == "a"]
    assert a.drop == pytest.approx(0.75) and a.drop_lower_bound is not None and a.drop_lower_bound > 0.45
    text = verdict.describe()
    assert "'a' 1.000 → 0.250 (drop 0.750" in text and "unjudged (< 30 trusted samples): c" in text
    stored = {"gate": {**verdict.__dict__, "classes": [c.__dict__ for c in verdict.classes]}}
    assert describe_gate(stored) == text
    assert describe_gate({}) == "no gate figures recorded"
    same = gate(parent, parent, labels, ["a", "b", "c"], 1, GateRules())
    assert same.passed and same.failed_classes == [] and same.drop == 0


def test_the_update_s_own_held_out_data_never_judges_the_parent_classes(tmp_path: Path) -> None:
    """The trusted reference excludes what arrives in the update: the gate counts only the lineage's held-out
    samples of the old classes, and reports the claim's own apart."""
    from cl_core.data import load_mnist5k

    train = load_mnist5k().train
    store = LocalStore(tmp_path)
    store.create_model(
        ModelRecord(name="d", architecture="mlp", input_shape=[784], classes=[], options={"hidden": [64]})
    )
    settings = WorkerSettings(device="cpu", epochs=3, screening=False)  # the gate alone

    def post(digits: list[int], label: str | None = None) -> None:
        for d in digits:
            x = train.inputs[train.labels == d][:100]
            store.append_samples("d", x, [label or str(d)] * len(x), 0.2)

    def update() -> UpdateRecord:
        record = UpdateRecord(update_id=new_update_id(), model="d", method="auto")
        store.put_update(record)
        return run_update(store, "d", record.update_id, settings)

    post([0, 1, 2])
    assert update().status == "succeeded"
    post([0, 1], None)
    post([2], "1")  # 100 images of 2 posted as 1: 20 of them held out in this claim
    result = update()
    g = result.metrics["gate"]
    assert g["samples"] == 60  # the lineage's 20 held-out samples per class, none of the 60 arriving now
    assert g["claim"]["known_classes"]["samples"] == 60  # reported apart
    own = g["claim"]["known_classes"]
    # on its own held-out data the poisoned candidate "improves" (the parent calls the 2s "2"): the reason why that
    # data must never judge; on the trusted data the drop shows
    assert own["candidate_accuracy"] > own["parent_accuracy"] and g["drop"] > 0.05
    assert {c["label"] for c in g["classes"]} == {"0", "1", "2"}
    assert result.status == "rejected", g  # the average rule (20 trusted samples per class: each class unjudged)
    assert g["unjudged_classes"] == ["0", "1", "2"] and g["failed_classes"] == []


def test_waiting_classes_and_the_policy() -> None:
    assert [asdict(w) for w in waiting_classes({"a": 3, "b": 25, "x": 1}, ["a"], 20)] == [
        {"label": "x", "samples": 1, "needed": 20}
    ]
    assert [w.label for w in waiting_classes({"10": 1, "9": 2, "b": 1}, [], 20)] == ["9", "10", "b"]  # natural order
    policy = UpdatePolicy(min_samples_per_new_class=20)
    pending = PendingCounts(labeled=26, per_class={"b": 25, "-5": 1})
    assert policy.reason(pending, ["a"]) is not None and "1 other new classes wait" in str(
        policy.reason(pending, ["a"])
    )
    assert policy.reason(PendingCounts(labeled=1, per_class={"-5": 1}), ["a"]) is None
    after = UpdatePolicy(min_samples_per_new_class=20, after_labeled=10)
    assert after.reason(PendingCounts(labeled=12, per_class={"-5": 5, "a": 7}), ["a"]) is None  # 12 - 5 waiting < 10
    assert after.reason(PendingCounts(labeled=16, per_class={"-5": 5, "a": 11}), ["a"]) is not None


@pytest.mark.parametrize("value", ["0", "-5", "29", "1000001", "lots"])
def test_a_held_out_capacity_the_gate_cannot_live_with_is_refused(value: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CL_HELDOUT_PER_CLASS", value)
    with pytest.raises(ValueError):
        WorkerSettings()
    monkeypatch.setenv("CL_MIN_CLASS_SAMPLES", "20")
    if value == "29":
        assert WorkerSettings().heldout_per_class == 29  # at least the trusted minimum is enough


def test_the_evaluation_data_comes_from_the_held_out_store_in_one_read(tmp_path: Path) -> None:
    calls: list[str] = []

    class Counting(LocalStore):
        def held_out_rows(self, name: str) -> HeldOut:
            calls.append("held_out")
            return super().held_out_rows(name)

        def experience_samples(self, name: str, version: int) -> SampleSet:
            calls.append("experience_samples")
            return super().experience_samples(name, version)

    store = Counting(tmp_path)
    store.create_model(ModelRecord(name="m", architecture="mlp", input_shape=[2], classes=[]))
    held = {}
    for v in (1, 2, 3):
        store.append_samples("m", torch.rand(4, 2), ["a", "a", "b", "b"], 0.5)
        claim = store.claim("m")
        store.ack("m", claim, v, None)
        held[v] = claim.held_out.ids
    store.apply_retention("m", max_age_s=0.0, max_samples=None)  # raw data gone: the held-out data stays
    calls.clear()
    data = EvaluationData.gather(store, "m", [1, 3], SampleSet(torch.zeros(0, 2), [], []))
    assert calls == ["held_out"]
    assert {v: s.ids for v, s in data.held.as_dict().items()} == {1: held[1], 3: held[3]}


def test_each_model_scores_the_held_out_samples_once_and_every_figure_is_what_a_fresh_pass_gives() -> None:
    """The pipeline passes the live model's outputs from screening to the baseline, and the candidate's predictions
    from the gate to the version's metrics: the same figures as scoring again (the old, twice-scored path)."""
    from cl_core.models import ModelSpec, build_model
    from worker.evaluation import Baseline, logits_of, version_metrics

    classes = ["a", "b", "c"]
    spec = ModelSpec("mlp", (6,), classes, {"hidden": [8]})
    parent, candidate = build_model(spec, seed=0), build_model(spec, seed=1)
    experiences = {
        v: SampleSet(torch.randn(40, 6), [classes[i % 3] for i in range(40)], [str(v * 100 + i) for i in range(40)])
        for v in (1, 2, 3)
    }
    own = SampleSet(torch.randn(12, 6), [classes[i % 3] for i in range(12)], [str(900 + i) for i in range(12)])
    rules = GateRules(min_class_samples=5)

    def figures(reuse: bool) -> tuple[dict[str, object], dict[str, object]]:
        data = EvaluationData(HeldOut.of(experiences, [6]), own)
        logits = logits_of(parent, data.trusted([6]).inputs) if reuse else None
        baseline = Baseline.measure(parent, classes, data, [6], 1, logits)
        verdict = baseline.judge(candidate, classes, rules)
        metrics = version_metrics(
            candidate, classes, data, None, [6], verdict, predicted=baseline.candidate if reuse else None
        )
        return asdict(verdict), metrics.to_json()

    reused, fresh = figures(True), figures(False)
    assert reused == fresh and fresh[0]["classes"]  # judged per class, not trivially empty
    mismatched = Baseline.measure(
        parent, classes, EvaluationData(HeldOut.of(experiences, [6]), own), [6], 1, torch.zeros(3, 3)
    )
    every = torch.cat([s.inputs for s in experiences.values()])
    assert mismatched.trusted == predict_labels(parent, classes, every)  # a pass of the wrong size is not used
