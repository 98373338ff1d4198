"""Held-out evaluation: per-class accuracy, the accuracy matrix along a lineage, and the forgetting gate.

The service holds out a stratified share of every labeled class and never trains on it.  Each committed update
consumed some samples: its held-out part is that update's *experience* (a column).  A version's row holds its
accuracy on every experience of its lineage (its ancestors' and its own), so the matrix along the live lineage
gives ACC, BWT and forgetting exactly as the benchmark does (`cl_core.metrics`).

The gate compares a candidate with its parent on the held-out samples of the parent's classes: a drop of more
than ``max_forgetting`` means the update made the model forget, and the candidate is kept but not promoted.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

from cl_core.labels import natural_order
from cl_core.metrics import summarize
from registry import SampleSet, Store, VersionRecord


def predict_labels(model: nn.Module, classes: Sequence[str], inputs: Tensor, batch_size: int = 1024) -> list[str]:
    """The model's argmax class names (eval mode, batched)."""
    if len(inputs) == 0:
        return []
    if not classes:
        return ["" for _ in range(len(inputs))]
    param = next(model.parameters())
    was_training = model.training
    model.eval()
    out: list[str] = []
    try:
        with torch.no_grad():
            for start in range(0, len(inputs), batch_size):
                logits = model(inputs[start : start + batch_size].to(param.device, param.dtype))
                out.extend(classes[i] for i in logits.argmax(1).tolist())
    finally:
        model.train(was_training)
    return out


def accuracy(
    predicted: Sequence[str], labels: Sequence[str | None], keep: Sequence[bool] | None = None
) -> float | None:
    """Share of correct predictions (over ``keep``), None when nothing is scored."""
    pairs = [(p, y) for i, (p, y) in enumerate(zip(predicted, labels, strict=True)) if keep is None or keep[i]]
    return sum(p == y for p, y in pairs) / len(pairs) if pairs else None


def per_class_accuracy(predicted: Sequence[str], labels: Sequence[str | None]) -> dict[str, float]:
    out: dict[str, float] = {}
    for label in natural_order({y for y in labels if y is not None}):
        value = accuracy(predicted, labels, [y == label for y in labels])
        assert value is not None
        out[label] = value
    return out


def lineage(store: Store, name: str, version: int | None) -> list[VersionRecord]:
    """The version and its ancestors, root first."""
    chain: list[VersionRecord] = []
    seen: set[int] = set()
    while version is not None and version not in seen:
        seen.add(version)
        record = store.get_version(name, version)
        chain.append(record)
        version = record.parent
    return chain[::-1]


@dataclass
class EvaluationData:
    """The held-out samples an evaluation scores: one set per lineage experience, and the update's own."""

    experiences: dict[int, SampleSet]  # experience (the version that consumed it) → its held-out samples
    own: SampleSet

    @classmethod
    def gather(cls, store: Store, name: str, chain: Sequence[VersionRecord], own: SampleSet) -> EvaluationData:
        experiences = {}
        for record in chain:
            samples = store.experience_samples(name, record.version)
            if len(samples):
                experiences[record.version] = samples
        return cls(experiences, own)

    def all(self, input_shape: Sequence[int]) -> SampleSet:
        return SampleSet.concat([*self.experiences.values(), self.own], input_shape)


@dataclass
class Gate:
    old_classes: list[str]
    parent_version: int | None
    parent_accuracy: float | None
    candidate_accuracy: float | None
    drop: float | None
    max_forgetting: float
    samples: int
    passed: bool

    def describe(self) -> str:
        if self.drop is None:
            return "gate passed: no held-out samples of earlier classes to compare"
        verdict = "passed" if self.passed else "failed"
        return (
            f"gate {verdict}: held-out accuracy on earlier classes {self.parent_accuracy:.3f} (version "
            f"{self.parent_version}) → {self.candidate_accuracy:.3f}, a drop of {self.drop:.3f} "
            f"(allowed {self.max_forgetting:.3f}, {self.samples} samples)"
        )


def gate(
    parent_predictions: Sequence[str] | None,
    candidate_predictions: Sequence[str],
    labels: Sequence[str | None],
    old_classes: Sequence[str],
    parent_version: int | None,
    max_forgetting: float,
) -> Gate:
    """Compare parent and candidate on the held-out samples of the parent's classes."""
    keep = [y in old_classes for y in labels]
    samples = sum(keep)
    if parent_predictions is None or samples == 0:
        return Gate(list(old_classes), parent_version, None, None, None, max_forgetting, samples, True)
    before = accuracy(parent_predictions, labels, keep)
    after = accuracy(candidate_predictions, labels, keep)
    assert before is not None and after is not None
    drop = before - after
    return Gate(list(old_classes), parent_version, before, after, drop, max_forgetting, samples, drop <= max_forgetting)


def version_metrics(
    model: nn.Module,
    classes: Sequence[str],
    data: EvaluationData,
    chain: Sequence[VersionRecord],
    input_shape: Sequence[int],
    gate_result: Gate | None = None,
) -> dict[str, Any]:
    """Everything stored with a version: per-class and overall held-out accuracy, its matrix row, ACC/BWT/forgetting
    along its lineage (``chain`` = its ancestors, root first), the gate."""
    everything = data.all(input_shape)
    predicted = predict_labels(model, classes, everything.inputs)
    row = {str(v): accuracy(predict_labels(model, classes, s.inputs), s.labels) for v, s in data.experiences.items()}
    own = accuracy(predict_labels(model, classes, data.own.inputs), data.own.labels) if len(data.own) else None
    metrics: dict[str, Any] = {
        "held_out_samples": len(everything),
        "accuracy": accuracy(predicted, everything.labels),
        "per_class_accuracy": per_class_accuracy(predicted, everything.labels),
        "experience_accuracy": row,
        "own_experience_accuracy": own,
    }
    matrix = accuracy_matrix([*chain, None], {"experience_accuracy": row, "own_experience_accuracy": own})
    metrics.update(matrix.summary())
    if gate_result is not None:
        metrics["gate"] = asdict(gate_result)
    return metrics


@dataclass
class AccuracyMatrix:
    """Rows: versions along a lineage (those that added an experience, then the last one); columns: experiences."""

    rows: list[int | None]  # version numbers (None: a candidate not yet committed)
    columns: list[int | None]  # the versions whose experiences the columns are
    values: list[list[float | None]]

    def summary(self) -> dict[str, Any]:
        unknown = {"acc": None, "bwt": None, "forgetting": None}
        if not self.columns or any(v is None for row in self.values for v in row):
            return unknown  # a version scored without some experience (e.g. stored before it existed)
        if len(self.values[-1]) != len(self.columns):
            return unknown
        s = summarize(self.values)  # type: ignore[arg-type]
        return {"acc": s.acc, "bwt": s.bwt, "forgetting": s.forgetting}

    def to_json(self) -> dict[str, Any]:
        return {"rows": self.rows, "columns": self.columns, "values": self.values, **self.summary()}


def accuracy_matrix(
    chain: Sequence[VersionRecord | None], last_metrics: dict[str, Any] | None = None
) -> AccuracyMatrix:
    """The matrix along ``chain`` (root first).  A version whose own experience has held-out data opens a column;
    the row of the version that opened column j is a[j]; the last version's row is always the last row.  A None
    entry at the end stands for an uncommitted candidate whose metrics are ``last_metrics``."""

    def metrics_of(i: int) -> dict[str, Any]:
        record = chain[i]
        return record.metrics if record is not None else (last_metrics or {})

    columns: list[int | None] = []
    openers: list[int] = []
    for i in range(len(chain)):
        if metrics_of(i).get("own_experience_accuracy") is not None:
            record = chain[i]
            columns.append(record.version if record is not None else None)
            openers.append(i)
    row_indices = openers if openers and openers[-1] == len(chain) - 1 else [*openers, len(chain) - 1]
    values: list[list[float | None]] = []
    for i in row_indices:
        m = metrics_of(i)
        record = chain[i]
        row: list[float | None] = []
        for column, opener in zip(columns, openers, strict=True):
            if opener > i:
                break
            if opener == i:
                row.append(m.get("own_experience_accuracy"))
            else:
                row.append(m.get("experience_accuracy", {}).get(str(column)))
        values.append(row)
    rows = [chain[i].version if chain[i] is not None else None for i in row_indices]  # type: ignore[union-attr]
    return AccuracyMatrix(rows, columns, values)
