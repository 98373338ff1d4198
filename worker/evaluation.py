"""Held-out evaluation: per-class accuracy, the accuracy matrix along a lineage, and the forgetting gate.

The service holds out a stratified share of every labeled class and never trains on it.  Each committed update
consumed some samples: its held-out part is that update's *experience* (a column).  A version's row holds its
accuracy on every experience of its lineage (its ancestors' and its own), so the matrix along the live lineage
gives ACC, BWT and forgetting exactly as the benchmark does (`cl_core.metrics`).  A version does not read its
ancestors for that: it derives its ledger (`worker.history`) from its parent's.

The gate compares a candidate with its parent on *trusted* held-out samples only: those of the experiences along
the parent's lineage (the experiences of the parent's ledger), which updates that went live had held out.  Labels
arriving in the update being judged never judge the classes the parent knew (a poisoned post would otherwise vouch
for itself); the claim's own held-out samples are reported apart (the new classes, and new data of known classes as
its own figure).  Two rules, both must hold:

* the average rule: accuracy on the trusted samples of the parent's classes drops by at most ``max_forgetting``;
* the per-class rule: no parent class drops by more than ``max_class_drop``, judged soundly for small sets: a class
  fails when the one-sided 95 % lower confidence bound of its paired drop exceeds the limit.  Classes with fewer
  than ``min_class_samples`` trusted samples are listed as unjudged.

A candidate that breaks either rule is kept but not promoted.
"""

from __future__ import annotations

import itertools
import operator
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

import torch
from torch import Tensor, nn

from cl_core.labels import natural_order
from cl_core.metrics import summarize
from registry import NotFound, SampleSet, Store, VersionRecord
from registry.heldout import HeldOut
from worker.history import DEFAULT_WIDTH, HISTORY_KEY, History, StoredHistory, compact_row, derive, measured_row


def logits_of(model: nn.Module, inputs: Tensor, batch_size: int = 1024) -> Tensor:
    """The model's outputs (eval mode, batched, float32 on the CPU): one forward pass that the predictions and the
    label screening's confidences are both read from."""
    param = next(model.parameters())
    was_training = model.training
    model.eval()
    out: list[Tensor] = []
    try:
        with torch.no_grad():
            for start in range(0, len(inputs), batch_size):
                out.append(model(inputs[start : start + batch_size].to(param.device, param.dtype)).float().cpu())
    finally:
        model.train(was_training)
    return torch.cat(out) if out else torch.zeros(0, 0)


def labels_of(logits: Tensor, classes: Sequence[str]) -> list[str]:
    """The argmax class names of ``logits`` (one row per input)."""
    if len(logits) == 0:
        return []
    if not classes:
        return ["" for _ in range(len(logits))]
    return [classes[i] for i in logits.argmax(1).tolist()]


def predict_labels(model: nn.Module, classes: Sequence[str], inputs: Tensor, batch_size: int = 1024) -> list[str]:
    """The model's argmax class names (eval mode, batched)."""
    if len(inputs) == 0:
        return []
    if not classes:
        return ["" for _ in range(len(inputs))]
    return labels_of(logits_of(model, inputs, batch_size), classes)


def accuracy(
    predicted: Sequence[str], labels: Sequence[str | None], keep: Sequence[bool] | None = None
) -> float | None:
    """Share of correct predictions (over ``keep``), None when nothing is scored.  Compared in C (``map``,
    ``compress``): the gate scores thousands of held-out rows on every update."""
    if len(predicted) != len(labels) or (keep is not None and len(keep) != len(labels)):
        raise ValueError("accuracy needs one prediction (and keep flag) per label")
    right = map(operator.eq, predicted, labels)
    if keep is None:
        return sum(right) / len(labels) if len(labels) else None
    scored = sum(keep)
    return sum(itertools.compress(right, keep)) / scored if scored else None


def per_class_accuracy(predicted: Sequence[str], labels: Sequence[str | None]) -> dict[str, float]:
    """Accuracy per labeled class (one pass over the rows)."""
    right: dict[str, int] = {}
    total: dict[str, int] = {}
    for p, y in zip(predicted, labels, strict=True):
        if y is not None:
            total[y] = total.get(y, 0) + 1
            right[y] = right.get(y, 0) + (p == y)
    return {label: right[label] / total[label] for label in natural_order(set(total))}


def lineage(store: Store, name: str, version: int | None) -> list[VersionRecord]:
    """The version and its ancestors, root first; it starts after an ancestor that version retention deleted
    (NotFound only when ``version`` itself does not exist).  One read per version, so neither an update nor the
    report walks it (they read `worker.history.history_of`); with `accuracy_matrix` it is the definition the ledger
    is checked against."""
    chain: list[VersionRecord] = []
    seen: set[int] = set()
    while version is not None and version not in seen:
        seen.add(version)
        try:
            record = store.get_version(name, version)
        except NotFound:
            if not chain:
                raise
            break
        chain.append(record)
        version = record.parent
    return chain[::-1]


@dataclass
class EvaluationData:
    """The held-out samples an evaluation scores: the lineage's experiences (one set of rows, a span per
    experience: `registry.heldout.HeldOut`) and the update's own."""

    held: HeldOut  # the experiences of the lineage: what versions that went live had held out
    own: SampleSet

    @classmethod
    def gather(cls, store: Store, name: str, versions: Iterable[int], own: SampleSet) -> EvaluationData:
        """The held-out samples still kept of the experiences ``versions`` (a parent's ledger's experiences), from
        the held-out store in one read (never from the ingestion batches: the cost does not grow with the history);
        an experience with none left is left out (its column keeps its last measured value)."""
        return cls(store.held_out_rows(name).select(versions), own)

    def all(self, input_shape: Sequence[int]) -> SampleSet:
        return SampleSet.concat([self.held.samples, self.own], input_shape)

    def trusted(self, input_shape: Sequence[int]) -> SampleSet:
        """The lineage's held-out samples: what versions that went live had held out (never the update's own).
        One set, read once: screening, the baseline, the gate and the metrics all score it."""
        return self.held.samples


@dataclass(frozen=True)
class GateRules:
    max_forgetting: float = 0.05
    max_class_drop: float = 0.10
    min_class_samples: int = 30
    confidence: float = 0.95


@dataclass
class ClassCheck:
    """The per-class rule on one of the parent's classes (paired: the same trusted samples, parent vs candidate)."""

    label: str
    samples: int
    parent_accuracy: float
    candidate_accuracy: float
    drop: float
    drop_lower_bound: float | None  # one-sided lower confidence bound of the drop (None: unjudged)
    verdict: Literal["passed", "failed", "unjudged"]


@dataclass
class Gate:
    old_classes: list[str]
    parent_version: int | None
    parent_accuracy: float | None
    candidate_accuracy: float | None
    drop: float | None
    max_forgetting: float
    samples: int  # trusted held-out samples of the parent's classes
    passed: bool
    max_class_drop: float = 0.10
    min_class_samples: int = 30
    classes: list[ClassCheck] = field(default_factory=list)
    failed_classes: list[str] = field(default_factory=list)
    unjudged_classes: list[str] = field(default_factory=list)
    claim: dict[str, Any] = field(default_factory=dict)  # the update's own held-out samples, reported apart

    def describe(self) -> str:
        if self.drop is None:
            return "gate passed: no trusted held-out samples of earlier classes to compare"
        verdict = "passed" if self.passed else "failed"
        text = (
            f"gate {verdict}: trusted held-out accuracy on earlier classes {self.parent_accuracy:.3f} (version "
            f"{self.parent_version}) → {self.candidate_accuracy:.3f}, a drop of {self.drop:.3f} "
            f"(allowed {self.max_forgetting:.3f}, {self.samples} samples)"
        )
        failed = [c for c in self.classes if c.verdict == "failed"]
        if failed:
            worst = ", ".join(
                f"{c.label!r} {c.parent_accuracy:.3f} → {c.candidate_accuracy:.3f} (drop {c.drop:.3f}, at least "
                f"{c.drop_lower_bound:.3f} with 95 % confidence, {c.samples} samples)"
                for c in failed
            )
            text += f"; classes that dropped by more than {self.max_class_drop:.3f}: {worst}"
        if self.unjudged_classes:
            text += f"; unjudged (< {self.min_class_samples} trusted samples): {', '.join(self.unjudged_classes)}"
        return text


def describe_gate(metrics: dict[str, Any]) -> str:
    """What the gate found, from a version's stored metrics (records written before a field existed included)."""
    data = metrics.get("gate")
    if not isinstance(data, dict):
        return "no gate figures recorded"
    known = {f.name for f in fields(Gate)}
    values = {k: v for k, v in data.items() if k in known}
    values["classes"] = [ClassCheck(**c) for c in values.get("classes", [])]
    try:
        return Gate(**values).describe()
    except TypeError:
        return f"gate passed: {data.get('passed')}"


def binomial_bounds(successes: int, trials: int, alpha: float) -> tuple[float, float]:
    """Clopper-Pearson: one-sided (1 - alpha) lower and upper confidence bounds of a binomial proportion (exact,
    conservative for every n)."""
    from scipy.stats import beta  # lazy: only judging a candidate needs it

    lower = 0.0 if successes == 0 else float(beta.ppf(alpha, successes, trials - successes + 1))
    upper = 1.0 if successes == trials else float(beta.ppf(1 - alpha, successes + 1, trials - successes))
    return lower, upper


def paired_drop_lower_bound(lost: int, gained: int, samples: int, confidence: float = 0.95) -> float:
    """A lower confidence bound of a paired accuracy drop (p_lost - p_gained), where ``lost`` samples were right
    before and wrong after, and ``gained`` the reverse: the lower bound of p_lost minus the upper bound of
    p_gained, each at (1 - confidence) / 2 (Bonferroni), so the bound holds with at least ``confidence``."""
    alpha = (1 - confidence) / 2
    low, _ = binomial_bounds(lost, samples, alpha)
    _, high = binomial_bounds(gained, samples, alpha)
    return low - high


def class_checks(
    parent_predictions: Sequence[str],
    candidate_predictions: Sequence[str],
    labels: Sequence[str | None],
    old_classes: Sequence[str],
    rules: GateRules,
) -> list[ClassCheck]:
    """The per-class rule for every parent class that has trusted samples."""
    checks = []
    rows_of: dict[str, list[int]] = {}
    for i, y in enumerate(labels):
        if y is not None:
            rows_of.setdefault(y, []).append(i)
    for label in old_classes:
        rows = rows_of.get(label, [])
        if not rows:
            continue
        before = [parent_predictions[i] == label for i in rows]
        after = [candidate_predictions[i] == label for i in rows]
        lost = sum(b and not a for b, a in zip(before, after, strict=True))
        gained = sum(a and not b for b, a in zip(before, after, strict=True))
        n = len(rows)
        drop = (lost - gained) / n
        bound: float | None = None
        verdict: Literal["passed", "failed", "unjudged"] = "unjudged"
        if n >= rules.min_class_samples:
            bound = paired_drop_lower_bound(lost, gained, n, rules.confidence)
            verdict = "failed" if bound > rules.max_class_drop else "passed"
        checks.append(
            ClassCheck(label, n, sum(before) / n, sum(after) / n, round(drop, 6), bound and round(bound, 6), verdict)
        )
    return checks


def gate(
    parent_predictions: Sequence[str] | None,
    candidate_predictions: Sequence[str],
    labels: Sequence[str | None],
    old_classes: Sequence[str],
    parent_version: int | None,
    rules: GateRules,
) -> Gate:
    """Compare parent and candidate on the trusted held-out samples of the parent's classes: the average rule and
    the per-class rule."""
    old = set(old_classes)
    keep = [y in old for y in labels]
    samples = sum(keep)
    if parent_predictions is None or samples == 0:
        return Gate(
            list(old_classes),
            parent_version,
            None,
            None,
            None,
            rules.max_forgetting,
            samples,
            True,
            max_class_drop=rules.max_class_drop,
            min_class_samples=rules.min_class_samples,
        )
    before = accuracy(parent_predictions, labels, keep)
    after = accuracy(candidate_predictions, labels, keep)
    assert before is not None and after is not None
    drop = before - after
    checks = class_checks(parent_predictions, candidate_predictions, labels, old_classes, rules)
    failed = [c.label for c in checks if c.verdict == "failed"]
    unjudged = [c.label for c in checks if c.verdict == "unjudged"]
    unjudged += [c for c in old_classes if c not in {check.label for check in checks}]
    passed = drop <= rules.max_forgetting and not failed
    return Gate(
        list(old_classes),
        parent_version,
        before,
        after,
        drop,
        rules.max_forgetting,
        samples,
        passed,
        max_class_drop=rules.max_class_drop,
        min_class_samples=rules.min_class_samples,
        classes=checks,
        failed_classes=failed,
        unjudged_classes=unjudged,
    )


def claim_figures(
    parent_predictions: Sequence[str] | None,
    candidate_predictions: Sequence[str],
    labels: Sequence[str | None],
    old_classes: Sequence[str],
) -> dict[str, Any]:
    """What the update's own held-out samples say (reported, never used to judge the parent's classes)."""
    known = [y in old_classes for y in labels]
    new = [y is not None and y not in old_classes for y in labels]
    figures: dict[str, Any] = {
        "new_classes": {"samples": sum(new), "accuracy": accuracy(candidate_predictions, labels, new)},
        "known_classes": {
            "samples": sum(known),
            "parent_accuracy": None if parent_predictions is None else accuracy(parent_predictions, labels, known),
            "candidate_accuracy": accuracy(candidate_predictions, labels, known),
        },
    }
    return figures


@dataclass
class Baseline:
    """The parent's predictions on the trusted and the update's own held-out samples, taken before training (the
    model is trained in place), to judge the candidate against afterwards; then the candidate's, which the version's
    metrics reuse (`version_metrics`' ``predicted``: the trusted and own samples are scored once per model)."""

    evaluation: EvaluationData
    input_shape: Sequence[int]
    old_classes: list[str]
    parent_version: int | None
    trusted: list[str] | None  # None: no parent
    own: list[str] | None
    candidate: list[str] | None = None  # the judged candidate's predictions: trusted, then own (`EvaluationData.all`)

    @classmethod
    def measure(
        cls,
        parent: nn.Module | None,
        old_classes: Sequence[str],
        evaluation: EvaluationData,
        input_shape: Sequence[int],
        parent_version: int | None,
        trusted_logits: Tensor | None = None,
    ) -> Baseline:
        """``trusted_logits``: the parent's outputs on the trusted samples when already computed (the label
        screening scores them with the same model)."""
        trusted = own = None
        if parent is not None:
            if trusted_logits is not None and len(trusted_logits) == len(evaluation.trusted(input_shape)):
                trusted = labels_of(trusted_logits, old_classes)
            else:
                trusted = predict_labels(parent, old_classes, evaluation.trusted(input_shape).inputs)
            own = predict_labels(parent, old_classes, evaluation.own.inputs)
        return cls(evaluation, input_shape, list(old_classes), parent_version, trusted, own)

    def judge(self, candidate: nn.Module, classes: Sequence[str], rules: GateRules) -> Gate:
        trusted = self.evaluation.trusted(self.input_shape)
        own = self.evaluation.own
        on_trusted = predict_labels(candidate, classes, trusted.inputs)
        on_own = predict_labels(candidate, classes, own.inputs)
        self.candidate = on_trusted + on_own
        verdict = gate(self.trusted, on_trusted, trusted.labels, self.old_classes, self.parent_version, rules)
        verdict.claim = claim_figures(self.own, on_own, own.labels, self.old_classes)
        return verdict


@dataclass
class VersionMetrics:
    """What an update (or a weight import) measured about a version: held-out accuracy overall, per class and per
    experience (its row of the accuracy matrix), ACC / BWT / forgetting along its lineage, its history (the ledger
    and window the report and its children read, `worker.history`), and what the gate and the label screening
    decided.  Stored as JSON in `VersionRecord.metrics` (`to_json`); the forgetting report reads that JSON back."""

    held_out_samples: int
    accuracy: float | None
    per_class_accuracy: dict[str, float]
    experience_accuracy: dict[str, float | None]
    own_experience_accuracy: float | None
    acc: float | None
    bwt: float | None
    forgetting: float | None
    gate: Gate | None = None
    screening: dict[str, Any] | None = None  # worker.screening's report, already JSON
    history: StoredHistory | None = None

    def to_json(self) -> dict[str, Any]:
        """The stored form (keys of the optional parts only when present, as versions stored them before)."""
        optional = ("gate", "screening", "history")
        data = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in optional}
        if self.gate is not None:
            data["gate"] = asdict(self.gate)
        if self.screening is not None:
            data["screening"] = self.screening
        if self.history is not None:  # the ledger holds the full row: the record keeps the newest columns
            data[HISTORY_KEY] = self.history.stored()
            data.update(compact_row(self.experience_accuracy))
        return data


def version_metrics(
    model: nn.Module,
    classes: Sequence[str],
    data: EvaluationData,
    parent: History | None,
    input_shape: Sequence[int],
    gate_result: Gate | None = None,
    width: int = DEFAULT_WIDTH,
    again: tuple[int, StoredHistory] | None = None,
    predicted: Sequence[str] | None = None,
) -> VersionMetrics:
    """Everything stored with a version: per-class and overall held-out accuracy, its matrix row, its history
    derived from its ``parent``'s (None: a first version; ``width``: the report window it keeps) and from it
    ACC/BWT/forgetting along its lineage, the gate.  ``again``: a stored version measured again (its number and
    stored history, which stands for its parent's: ancestors deleted since do not matter).  ``predicted``: the
    model's predictions on ``data.all`` when already taken (`Baseline.judge`)."""
    labels = [*data.trusted(input_shape).labels, *data.own.labels]  # the rows of `data.all`, in its order
    if predicted is None or len(predicted) != len(labels):
        predicted = predict_labels(model, classes, data.all(input_shape).inputs)  # each experience is a slice
    measured = {v: accuracy(predicted[start:end], labels[start:end]) for v, (start, end) in data.held.spans.items()}
    trusted = len(data.held)
    own = accuracy(predicted[trusted:], data.own.labels) if len(data.own) else None
    stored = derive(parent, measured, width) if again is None else again[1].remeasured(again[0], measured)
    summary = stored.aggregates(own)
    return VersionMetrics(
        held_out_samples=len(labels),
        accuracy=accuracy(predicted, labels),
        per_class_accuracy=per_class_accuracy(predicted, labels),
        experience_accuracy={str(v): a for v, a in measured.items()},
        own_experience_accuracy=own,
        acc=summary.acc,
        bwt=summary.bwt,
        forgetting=summary.forgetting,
        gate=gate_result,
        history=stored,
    )


@dataclass
class AccuracyMatrix:
    """Rows: versions along a lineage (those that added an experience, then the last one); columns: experiences.
    The whole matrix, built by walking the lineage: the definition `worker.history` is checked against (the service
    reads the ledger and window instead)."""

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
        measured = measured_row(m)
        row: list[float | None] = []
        for column, opener in zip(columns, openers, strict=True):
            if opener > i:
                break
            if opener == i:
                row.append(m.get("own_experience_accuracy"))
            else:
                row.append(measured.get(str(column)))
        values.append(row)
    rows = [chain[i].version if chain[i] is not None else None for i in row_indices]  # type: ignore[union-attr]
    return AccuracyMatrix(rows, columns, values)
