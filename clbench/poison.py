"""`clbench poison`: what a caller with a ``train`` key can do to the forgetting gate, and what gets through.

On the protocol's data (MNIST-5k, ../shared/benchmark-protocol.md v2: posts come from the train split, accuracy is
measured on the test split, which nothing trains on), a model learns digits 0-4 (version 1) and then 5-9 (version 2)
through the real update pipeline; each case then posts its samples into a copy of that lineage (exported and
imported, as `clserve` moves a model) and runs one update as the service does, with the service's defaults
(`WorkerSettings`).  Recorded per case and seed: the update's status, whether its version went live, how many
samples screening quarantined (and how many of the flipped ones), and the live model's per-class test accuracy
before and after.  Clean controls measure false alarms: a clean update that is not promoted, or a clean sample
quarantined.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor

from cl_core.data import Split, load_mnist5k, rotate_images
from registry import LocalStore, ModelRecord, Store, UpdateRecord
from registry.transfer import export_model, import_model
from worker.config import WorkerSettings
from worker.evaluation import predict_labels
from worker.pipeline import load_version, run_update
from worker.scheduling import new_update_id

MODEL = "digits"
FLIPPED = 105  # of the 400 train images of digit 3 (a 26 % flip), as in issue 13
SHUFFLED = 1500
SHIFT = 3  # label shuffle: every digit d is posted as (d + 3) mod 10, as the demo's end-to-end test does
ROTATION = 25.0
HOLDOUT_FRACTION = 0.2  # the service's default CL_HOLDOUT_FRACTION

Base = Literal["0-4", "0-9"]


@dataclass(frozen=True)
class Post:
    """One request's samples; ``flipped`` marks the labels the attack changed."""

    inputs: Tensor
    labels: list[str]
    flipped: list[bool]
    relabel: bool = False


@dataclass(frozen=True)
class Case:
    name: str
    base: Base  # the live lineage the case starts from
    posts: tuple[Post, ...]
    clean: bool  # a control: it should be promoted and nothing of it quarantined
    attacked: str | None = None  # the class the attack aims at
    screening: bool = True


@dataclass
class Outcome:
    case: str
    seed: int
    clean: bool
    attacked: str | None
    status: str
    promoted: bool
    posted: int
    flipped: int
    quarantined: int
    flipped_quarantined: int
    clean_quarantined: int
    gate_drop: float | None  # the average drop on trusted held-out data (None: nothing trained)
    failed_classes: list[str]
    test_before: dict[str, float]
    test_after: dict[str, float]
    error: str | None = None
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def attacked_drop(self) -> float | None:
        if self.attacked is None:
            return None
        return self.test_before[self.attacked] - self.test_after[self.attacked]

    @property
    def worst_drop(self) -> float:
        return max(self.test_before[c] - self.test_after.get(c, 0.0) for c in self.test_before)


def _digit(train: Split, d: int) -> Tensor:
    return train.inputs[train.labels == d]


def _post(inputs: Tensor, labels: Sequence[str], flipped: Sequence[bool] | None = None, relabel: bool = False) -> Post:
    return Post(inputs, list(labels), list(flipped) if flipped is not None else [False] * len(labels), relabel)


def cases(train: Split, seed: int) -> list[Case]:
    """Every attack of issue 13 and its clean controls, drawn with ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    threes = _digit(train, 3)
    chosen = set(torch.randperm(len(threes), generator=generator)[:FLIPPED].tolist())
    flip = [i in chosen for i in range(len(threes))]
    flipped_threes = _post(threes, ["8" if f else "3" for f in flip], flip)
    new_digits = [_post(_digit(train, d), [str(d)] * len(_digit(train, d))) for d in range(5, 10)]
    ones = _digit(train, 1)
    pick = torch.randperm(len(train), generator=generator)[:SHUFFLED]
    shuffled = [str((int(v) + SHIFT) % 10) for v in train.labels[pick]]  # the class names permuted
    shuffle = _post(train.inputs[pick], shuffled, [True] * SHUFFLED)
    true = [str(int(v)) for v in train.labels[pick]]
    noise = [true[i] for i in torch.randperm(SHUFFLED, generator=generator).tolist()]  # labels drawn at random
    random_labels = _post(train.inputs[pick], noise, [a != b for a, b in zip(noise, true, strict=True)])
    rotated = rotate_images(threes, ROTATION)
    mixed = _mixed([*new_digits, flipped_threes], generator)
    ten_posts = tuple(_slice(mixed, part) for part in torch.arange(len(mixed.labels)).chunk(10))
    return [
        Case("relabel digit 1 as 7", "0-9", (_post(ones, ["7"] * len(ones), [True] * len(ones)),), False, "1"),
        Case("25 % of 3 as 8, after 5-9 (a)", "0-9", (flipped_threes,), False, "3"),
        Case("25 % of 3 as 8, with new 5-9 (b)", "0-4", (mixed,), False, "3"),
        Case("(b) split over ten posts", "0-4", ten_posts, False, "3"),
        Case(f"label shuffle (d as d+{SHIFT} mod 10)", "0-9", (shuffle,), False),
        Case("label shuffle, screening off", "0-9", (shuffle,), False, screening=False),
        Case("random labels", "0-9", (random_labels,), False),
        Case("clean: new classes 5-9", "0-4", tuple(new_digits), True),
        Case("clean: digit 3 again", "0-9", (_post(threes, ["3"] * len(threes)),), True),
        Case(f"clean: digit 3 rotated {ROTATION:g}°", "0-9", (_post(rotated, ["3"] * len(rotated)),), True),
        Case(
            "admin relabel 1 as 7 (relabel: true)", "0-9", (_post(ones, ["7"] * len(ones), relabel=True),), False, "1"
        ),
    ]


def _mixed(posts: Sequence[Post], generator: torch.Generator) -> Post:
    """Several posts' samples in one, shuffled (so that the poison is spread over any split of it)."""
    inputs = torch.cat([p.inputs for p in posts])
    labels = [label for p in posts for label in p.labels]
    flipped = [f for p in posts for f in p.flipped]
    order = torch.randperm(len(labels), generator=generator).tolist()
    return Post(inputs[order], [labels[i] for i in order], [flipped[i] for i in order])


def _slice(post: Post, rows: Tensor) -> Post:
    index = rows.tolist()
    return Post(post.inputs[index], [post.labels[i] for i in index], [post.flipped[i] for i in index], post.relabel)


def update(store: Store, settings: WorkerSettings, reason: str = "clbench") -> UpdateRecord:
    record = UpdateRecord(update_id=new_update_id(), model=MODEL, method="auto", triggered_by="clbench", reason=reason)
    store.put_update(record)
    return run_update(store, MODEL, record.update_id, settings)


def build_bases(settings: WorkerSettings, train: Split, hidden: Sequence[int] = (400, 400)) -> dict[Base, bytes]:
    """The two starting lineages as model archives: digits 0-4 learned, then 5-9 (each update must go live)."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="clbench-poison-") as root:
        store = LocalStore(root)
        store.create_model(
            ModelRecord(name=MODEL, architecture="mlp", input_shape=[784], classes=[], options={"hidden": list(hidden)})
        )
        bases: dict[Base, bytes] = {}
        steps: tuple[tuple[Base, range], ...] = (("0-4", range(5)), ("0-9", range(5, 10)))
        for base, digits in steps:
            for d in digits:
                x = _digit(train, d)
                store.append_samples(MODEL, x, [str(d)] * len(x), HOLDOUT_FRACTION)
            result = update(store, settings)
            if result.status != "succeeded":
                raise RuntimeError(f"the base update of {base} did not go live: {result.status} {result.error}")
            bases[base] = export_model(store, MODEL)
        store.close()
    return bases


def per_class_test_accuracy(store: Store, test: Split) -> dict[str, float]:
    """The live version's accuracy on the protocol's test split, per digit it knows."""
    loaded = load_version(store, MODEL, store.live_version(MODEL))
    predicted = predict_labels(loaded.model, loaded.spec.classes, test.inputs)
    out = {}
    for label in loaded.spec.classes:
        rows = [i for i, y in enumerate(test.labels.tolist()) if str(y) == label]
        out[label] = sum(predicted[i] == label for i in rows) / len(rows)
    return out


def run_case(case: Case, archive: bytes, store: Store, settings: WorkerSettings, test: Split, seed: int) -> Outcome:
    """Import the base lineage into ``store``, post the case's samples, run one update, measure."""
    start = time.perf_counter()
    import_model(store, archive, name=MODEL, holdout_fraction=HOLDOUT_FRACTION)
    live_before = store.live_version(MODEL)
    before = per_class_test_accuracy(store, test)
    flipped_ids: set[str] = set()
    posted = 0
    for post in case.posts:
        ids, _ = store.append_samples(MODEL, post.inputs, post.labels, HOLDOUT_FRACTION, relabel=post.relabel)
        flipped_ids.update(i for i, f in zip(ids, post.flipped, strict=True) if f)
        posted += len(ids)
    settings = settings.model_copy(update={"screening": case.screening, "seed": seed})
    result = update(store, settings)
    quarantined = {r.id for r in store.quarantined(MODEL)}
    gate = result.metrics.get("gate") or {}
    return Outcome(
        case=case.name,
        seed=seed,
        clean=case.clean,
        attacked=case.attacked,
        status=result.status,
        promoted=store.live_version(MODEL) != live_before,
        posted=posted,
        flipped=len(flipped_ids),
        quarantined=len(quarantined),
        flipped_quarantined=len(quarantined & flipped_ids),
        clean_quarantined=len(quarantined - flipped_ids),
        gate_drop=gate.get("drop"),
        failed_classes=list(gate.get("failed_classes", [])),
        test_before=before,
        test_after=per_class_test_accuracy(store, test),
        error=result.error,
        seconds=time.perf_counter() - start,
    )


def run(
    seeds: Sequence[int],
    settings: WorkerSettings,
    *,
    only: Sequence[str] | None = None,
    progress: Callable[[Outcome], None] | None = None,
) -> list[Outcome]:
    """Every case (or those whose name contains one of ``only``) for every seed, each in a fresh local store."""
    import tempfile

    data = load_mnist5k()
    outcomes = []
    for seed in seeds:
        torch.manual_seed(seed)
        bases = build_bases(settings.model_copy(update={"seed": seed}), data.train)
        for case in cases(data.train, seed):
            if only and not any(word in case.name for word in only):
                continue
            with tempfile.TemporaryDirectory(prefix="clbench-poison-") as root:
                store = LocalStore(root)
                outcome = run_case(case, bases[case.base], store, settings, data.test, seed)
                store.close()
            outcomes.append(outcome)
            if progress is not None:
                progress(outcome)
    return outcomes


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


def summary_rows(outcomes: Sequence[Outcome]) -> list[list[str]]:
    """One row per case, over its seeds."""
    rows = []
    names = list(dict.fromkeys(o.case for o in outcomes))
    for name in names:
        group = [o for o in outcomes if o.case == name]
        attacked = group[0].attacked
        if attacked is not None:
            before = f"{_mean([o.test_before[attacked] for o in group]):.3f}"
            after = f"{_mean([o.test_after[attacked] for o in group]):.3f}"
            target = f"{attacked}: {before} → {after}"
        else:
            target = "—"
        flipped = sum(o.flipped for o in group)
        caught = f"{sum(o.flipped_quarantined for o in group)} / {flipped}" if flipped else "—"
        drops = [o.gate_drop for o in group if o.gate_drop is not None]
        rows.append(
            [
                name,
                f"{sum(o.promoted for o in group)} / {len(group)}",
                ", ".join(sorted({o.status for o in group})),
                f"{_mean([o.quarantined for o in group]):.0f} of {group[0].posted}",
                caught,
                str(sum(o.clean_quarantined for o in group)),
                target,
                f"{_mean([o.worst_drop for o in group]):.3f}",
                f"{_mean(drops):.3f}" if drops else "—",
            ]
        )
    return rows


HEADER = [
    "case",
    "promoted (seeds)",
    "status",
    "quarantined (mean)",
    "flipped quarantined (all seeds)",
    "clean samples quarantined",
    "attacked class, test accuracy before → after",
    "worst class test drop",
    "gate: trusted avg drop",
]


def markdown(outcomes: Sequence[Outcome]) -> str:
    rows = summary_rows(outcomes)
    lines = ["| " + " | ".join(HEADER) + " |", "| " + " | ".join("---" for _ in HEADER) + " |"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    clean = [o for o in outcomes if o.clean]
    if clean:
        blocked = sum(not o.promoted for o in clean)
        samples = sum(o.posted for o in clean)
        wrongly = sum(o.quarantined for o in clean)
        lines.append("")
        lines.append(
            f"False positives over the clean updates: {blocked} of {len(clean)} not promoted; "
            f"{wrongly} of {samples} clean samples quarantined."
        )
    return "\n".join(lines)
