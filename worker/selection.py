"""How long an update trains and how much it protects the old classes, chosen per update.

A fixed number of epochs and a fixed λ were right for the protocol's MLP on its data, not for another architecture
or another data scale.  So every update (a model's first version included) measures instead, on a **selection
split** drawn from what the update may use anyway: a share of each class of its own training data
(``CL_VALIDATION_FRACTION``) and a share of each old class's exemplars (``CL_SELECTION_MEMORY_FRACTION``).  The
gate's trusted held-out samples are never part of it: choosing on the data that then judges the candidate would
make the gate optimistic.  (The parent has trained on its exemplars, so a drop measured on them overstates
forgetting: the choice errs towards stability, and the gate still judges on held-out data.)

1. **Candidates**, a short line search: the configured values first.  If they stay within the forgetting bound, the
   update tries ever more plastic ones (λ × the factors below 1 of ``CL_SELECTION_LAMBDA_FACTORS``) until one breaks
   it; if they do not, ever more stable ones (λ × the factors above 1, then, for a method that replays, the
   exemplars replayed k times per epoch for each k of ``CL_SELECTION_REPLAY_REPEATS``) until one stays within it.
   (More replay comes last: with weight aligning, old rows trained harder can make the new rows' scale-up
   overshoot.)  At
   most ``CL_SELECTION_MAX_CANDIDATES``; none starts once
   ``CL_SELECTION_MAX_SECONDS`` have passed (a running one stops then, keeping its best weights).  Only what is free
   is tried: λ when the method has one, has consolidated before and neither the model's ``method_hparams`` nor the
   update's ``hparams`` fix it; the share likewise; nothing when there are no old classes or no exemplars to
   measure forgetting on (the configured values train, with the budget below).
2. **Training budget.**  Each candidate trains a copy of the model on the rest (the exemplars set aside are not
   replayed) with early stopping on the selection split (`cl_core.budget`): at least ``CL_BUDGET_MIN_STEPS``, at
   most ``CL_BUDGET_MAX_STEPS`` steps, and a later candidate at most as many steps as the first one ran.
3. **Choice, by the gate's criterion** (`worker.evaluation`, the same rules): among the candidates whose drop on the
   set-aside exemplars against the parent stays within ``CL_MAX_FORGETTING`` and ``CL_MAX_CLASS_DROP``, the one
   with the best accuracy on the new share (ties: the better old-class accuracy, then the earlier candidate); when
   none stays within the bound, the one that forgets least.  The split is small, so the average rule is judged as
   the gate judges small per-class sets: broken when the 95 % lower confidence bound of the drop exceeds the limit
   (`within_bound`).
4. **Final training.**  The chosen λ and share train the real model on all of the update's data and the whole
   memory (nothing set aside is lost) for as many passes as the chosen candidate needed (its best step, scaled to
   the larger data), then the learner consolidates.  n candidates cost about n + 1 trainings; the configured values
   alone (nothing to choose) two.

Every candidate's figures, the choice and the compute spent are a `TrainingRecord`, stored in the version's
``train_config["training"]``.  With ``CL_TRAIN_BUDGET=epochs`` an update trains ``CL_EPOCHS`` epochs at the
configured values, as the benchmark protocol does.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Literal

import torch
from torch import Tensor, nn

from cl_core.budget import EarlyStopping, ValidationBudget, ValidationCurve, accuracy_stopping
from cl_core.experience import Experience
from cl_core.learner import Learner, LearnReport
from cl_core.memory import ExemplarMemory
from cl_core.naming import parse_method_name
from cl_core.trainer import TrainConfig
from cl_core.validation import shown
from worker.config import WorkerSettings
from worker.evaluation import Gate, GateRules, gate, paired_drop_lower_bound
from worker.learners import AUTO

# -- what a caller may fix per update (POST …/updates {"hparams": {…}}) ---------------------------------------------
UPDATE_HPARAMS: dict[str, str] = {
    "lam": "the penalty strength λ of the method (a number from 0 to 1e12)",
    "gamma": "online EWC's decay γ of older importance, which also weights its penalty, γF* (0 to 1)",
    "replay_repeat": "how many times the exemplars are replayed per epoch (an integer from 1 to 16)",
}
MAX_LAMBDA = 1e12


def check_update_hparams(method: str, hparams: Mapping[str, Any]) -> dict[str, float]:
    """The hyper-parameters an update request fixes, checked strictly (ValueError naming the problem): known keys
    only, each a finite non-negative number within its range and meaningful for ``method``."""
    if len(hparams) > len(UPDATE_HPARAMS):
        raise ValueError(f"hparams has {len(hparams)} keys; known: {', '.join(UPDATE_HPARAMS)}")
    spec = None if method == AUTO else parse_method_name(method)
    base = "online-ewc" if spec is None else spec.base
    replays = spec is None or spec.replay
    out: dict[str, float] = {}
    for key, value in hparams.items():
        if key not in UPDATE_HPARAMS:
            raise ValueError(f"unknown hyper-parameter {shown(key)}; known: {', '.join(UPDATE_HPARAMS)}")
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"hparams.{key} must be a number, got {shown(value)}")
        if isinstance(value, int) and abs(value) > 10**13:
            raise ValueError(f"hparams.{key} is out of range: {shown(value)}")
        number = float(value)
        if not math.isfinite(number) or number < 0:
            raise ValueError(f"hparams.{key} must be a finite non-negative number, got {shown(value)}")
        if key == "lam":
            if base == "finetune":
                raise ValueError(f"{method!r} has no penalty: 'lam' does not apply")
            if number > MAX_LAMBDA:
                raise ValueError(f"hparams.lam must be at most {MAX_LAMBDA:g}, got {shown(value)}")
        elif key == "gamma":
            if base != "online-ewc":
                raise ValueError(f"'gamma' is online EWC's; {method!r} does not use it")
            if number > 1:
                raise ValueError(f"hparams.gamma must be at most 1, got {shown(value)}")
        elif key == "replay_repeat":
            if not replays:
                raise ValueError(f"{method!r} does not replay: 'replay_repeat' does not apply")
            if number != int(number) or not 1 <= number <= 16:
                raise ValueError(f"hparams.replay_repeat must be an integer from 1 to 16, got {shown(value)}")
        out[key] = number
    return out


@dataclass(frozen=True)
class Fixed:
    """What the model's method settings or the update's request fix (not chosen)."""

    lam: bool = False
    replay_repeat: int | None = None

    @classmethod
    def split(cls, model_hparams: Mapping[str, Any], update_hparams: Mapping[str, Any]) -> tuple[Fixed, dict[str, Any]]:
        """(what is fixed, the learner overrides): the update's values win over the model's; ``replay_repeat`` is
        not the method's, so it leaves the overrides."""
        overrides = {**model_hparams, **update_hparams}
        repeat = overrides.pop("replay_repeat", None)
        return cls("lam" in overrides, None if repeat is None else int(repeat)), overrides


# -- the records --------------------------------------------------------------------------------------------------
@dataclass
class CandidateResult:
    """One candidate, trained with early stopping and scored on the selection split."""

    lam: float | None
    replay_repeat: int
    best_step: int  # the step whose weights were kept
    steps: int  # steps trained
    stopped_by: str | None  # plateau, max_steps, deadline
    seconds: float
    validation_loss: float | None
    new_accuracy: float | None  # on the update's data set aside
    old_accuracy: float | None  # on the exemplars set aside
    parent_old_accuracy: float | None
    drop: float | None
    within_bound: bool  # the gate's rules on the exemplars set aside
    failed_classes: list[str] = field(default_factory=list)
    chosen: bool = False
    drop_lower_bound: float | None = None  # one-sided 95 % lower confidence bound of the drop


@dataclass
class TrainingRecord:
    """How an update trained: the budget, the candidates, the choice and what it cost."""

    budget: Literal["validation", "epochs"]
    selection: Literal["adaptive", "fixed"]
    reason: str
    lam: float | None
    replay_repeat: int
    epochs: float  # of the final training (passes over the update's data and the replayed exemplars)
    steps: int  # of the final training
    validation: dict[str, int] = field(default_factory=dict)  # selection split: {"new": n, "old": m}
    candidates: list[CandidateResult] = field(default_factory=list)
    selection_seconds: float = 0.0  # wall time of the candidates
    training_seconds: float = 0.0  # wall time of the final training
    total_steps: int = 0  # optimisation steps of the candidates and the final training together

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TrainingRecord:
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["candidates"] = [CandidateResult(**c) for c in values.get("candidates", [])]
        return cls(**values)

    def summary(self) -> dict[str, Any]:
        """The short form an update's record carries (and the worker's /metrics counts)."""
        return {
            "budget": self.budget,
            "selection": self.selection,
            "lam": self.lam,
            "replay_repeat": self.replay_repeat,
            "steps": self.steps,
            "candidates": len(self.candidates),
            "total_steps": self.total_steps,
            "selection_seconds": self.selection_seconds,
            "training_seconds": self.training_seconds,
        }


@dataclass
class Fitted:
    """The learner that trained (with the chosen values), its report, and the record; ``cancelled`` when a stop
    request ended it (nothing to commit)."""

    learner: Learner
    report: LearnReport | None
    record: TrainingRecord
    cancelled: bool = False


# -- the selection split ------------------------------------------------------------------------------------------
def stratified_share(labels: Tensor, fraction: float, generator: torch.Generator) -> Tensor:
    """A boolean mask setting aside about ``fraction`` of each class (at least one sample of a class that has two or
    more, never all of it), drawn with ``generator``; labels below 0 are never set aside."""
    labels = labels.cpu()
    mask = torch.zeros(len(labels), dtype=torch.bool)
    for cls in sorted(set(labels.tolist()) - {-1}):
        index = (labels == cls).nonzero().flatten()
        if len(index) < 2:
            continue
        take = min(len(index) - 1, max(1, round(fraction * len(index))))
        mask[index[torch.randperm(len(index), generator=generator)[:take]]] = True
    return mask


@dataclass
class SelectionSplit:
    """What candidates train on, and what they are measured on (the new share first, then the exemplar share)."""

    train: Experience
    inputs: Tensor
    targets: Tensor
    new: int  # the first ``new`` samples come from the update's data, the rest are exemplars of old classes
    memory_keep: Tensor | None  # the exemplars candidates replay (False: set aside)

    @property
    def old(self) -> int:
        return len(self.targets) - self.new

    @classmethod
    def draw(
        cls,
        experience: Experience,
        memory: ExemplarMemory | None,
        old_outputs: int,
        fraction: float,
        memory_fraction: float,
        seed: int,
    ) -> SelectionSplit:
        """``fraction`` of each class of the update's data, ``memory_fraction`` of each old class's exemplars."""
        assert experience.targets is not None
        generator = torch.Generator().manual_seed(seed)
        aside = stratified_share(experience.targets, fraction, generator)
        train = experience.subset((~aside).nonzero().flatten())
        inputs, targets = [experience.inputs[aside]], [experience.targets[aside].cpu()]
        keep = None
        if memory is not None and memory.inputs is not None and len(memory) and old_outputs:
            old = memory.targets < old_outputs
            share = stratified_share(torch.where(old, memory.targets, -1), memory_fraction, generator)
            keep = ~share
            inputs.append(memory.inputs[share])
            targets.append(memory.targets[share])
        return cls(train, torch.cat(inputs), torch.cat(targets), int(aside.sum()), keep)


# -- candidates ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Candidate:
    lam: float | None
    replay_repeat: int


def penalty_strength(learner: Learner) -> float | None:
    """The method's λ, or None when it has no penalty."""
    if learner.spec.base in ("finetune", "joint"):
        return None
    lam = learner.method.hparams().get("lam")
    return float(lam) if isinstance(lam, int | float) else None


def with_lambda(learner: Learner, lam: float | None) -> Learner:
    """A copy of ``learner`` (its whole state) whose method uses ``lam``."""
    hparams = copy.deepcopy(learner.hparams())
    if lam is not None:
        hparams["method"]["lam"] = lam
    twin = Learner.from_hparams(hparams)
    twin.load_state_dict(learner.state_dict())
    return twin


@dataclass(frozen=True)
class Plan:
    """The candidates an update tries: the configured values first; if they stay within the forgetting bound, ever
    more plastic ones (smaller λ) until one breaks it; if they do not, ever more stable ones (a larger λ, then more
    replay) until one stays within it."""

    first: Candidate
    plastic: list[Candidate]
    stable: list[Candidate]
    reason: str
    most: int = 1

    @property
    def adaptive(self) -> bool:
        return self.most > 1 and bool(self.plastic or self.stable)

    def candidates(self, results: Sequence[CandidateResult]) -> Iterator[Candidate]:
        """The next candidate, given the figures of those before (a generator: it reads ``results`` as it goes)."""
        yield self.first
        if not self.adaptive or not results:
            return
        towards_plasticity = results[0].within_bound
        for candidate in self.plastic if towards_plasticity else self.stable:
            yield candidate
            if results[-1].within_bound != towards_plasticity:
                return  # the more plastic one broke the bound, or the more stable one is within it


def plan(learner: Learner, fixed: Fixed, split: SelectionSplit, parent: bool, settings: WorkerSettings) -> Plan:
    """The candidates of this update, and why (not) more than one."""
    lam = penalty_strength(learner)
    repeat = fixed.replay_repeat or 1
    first = Candidate(lam, repeat)
    if not settings.selection:
        return Plan(first, [], [], "CL_SELECTION=false: the configured values")
    if not parent or split.old == 0:
        missing = "no earlier classes" if not parent else "no exemplars of earlier classes to measure forgetting on"
        return Plan(first, [], [], f"nothing to choose: {missing}")
    why: list[str] = []
    factors: list[float] = []
    if lam is None:
        why.append("the method has no penalty")
    elif fixed.lam:
        why.append("λ fixed by the model's or the update's hparams")
    elif learner.experiences == 0:
        why.append("no importance measured yet, λ has nothing to weigh")
    else:
        factors = list(dict.fromkeys(settings.selection_lambda_factors))
    repeats: list[int] = []
    if fixed.replay_repeat is not None:
        why.append("replay share fixed by the hparams")
    elif learner.memory is not None and learner.memory.replay == "concat":
        repeats = sorted({k for k in settings.selection_replay_repeats if k > repeat})
    plastic = [Candidate(lam * f, repeat) for f in sorted(factors, reverse=True) if lam is not None and f < 1]
    stable = [Candidate(lam * f, repeat) for f in sorted(factors) if lam is not None and f > 1]
    strongest = stable[-1].lam if stable else lam
    stable += [Candidate(strongest, k) for k in repeats]
    most = settings.selection_max_candidates
    if not (plastic or stable) or most == 1:
        return Plan(first, [], [], "nothing to choose: " + "; ".join(why or ["CL_SELECTION_MAX_CANDIDATES=1"]))
    levers = [name for name, free in (("λ", bool(factors)), ("the replay share", bool(repeats))) if free]
    reason = f"{' and '.join(levers)} chosen on the selection split" + (f" ({'; '.join(why)})" if why else "")
    return Plan(first, plastic, stable, reason, most)


def rank(results: Sequence[CandidateResult]) -> list[int]:
    """Candidates best first, by the gate's criterion: those within the forgetting bound by their new-data accuracy
    (ties: the better old-class accuracy, then the earlier candidate), then the others by how little they forget."""

    def value(x: float | None) -> float:
        return -math.inf if x is None else x

    within = [i for i, r in enumerate(results) if r.within_bound]
    beyond = [i for i, r in enumerate(results) if not r.within_bound]
    within.sort(key=lambda i: (-value(results[i].new_accuracy), -value(results[i].old_accuracy), i))
    beyond.sort(
        key=lambda i: (math.inf if results[i].drop is None else results[i].drop, -value(results[i].new_accuracy), i)
    )
    return within + beyond


def choose(results: Sequence[CandidateResult]) -> int:
    """The candidate an update keeps (`rank`'s first)."""
    if not results:
        raise ValueError("no candidates to choose from")
    return rank(results)[0]


# -- training -----------------------------------------------------------------------------------------------------
@torch.no_grad()
def _predict(model: nn.Module, inputs: Tensor, outputs: int | None = None) -> Tensor:
    """Argmax over the first ``outputs`` outputs (all when None), eval mode, batched."""
    was_training = model.training
    model.eval()
    param = next(model.parameters())
    try:
        out = []
        for start in range(0, len(inputs), 1024):
            logits = model(inputs[start : start + 1024].to(param.device, param.dtype)).cpu()
            out.append((logits if outputs is None else logits[:, :outputs]).argmax(1))
        return torch.cat(out) if out else torch.zeros(0, dtype=torch.long)
    finally:
        model.train(was_training)


@dataclass
class Scorer:
    """Scores a model on the selection split against the parent, by the gate's rules (`worker.evaluation.gate`)."""

    split: SelectionSplit
    classes: list[str]  # the grown head's outputs
    old_outputs: int  # the first ones are the parent's
    parent_version: int | None
    rules: GateRules
    parent: list[str] | None = None  # the parent's predictions on the exemplars set aside (None: no parent)

    @classmethod
    def of(
        cls,
        parent_model: nn.Module | None,
        split: SelectionSplit,
        classes: list[str],
        old_outputs: int,
        parent_version: int | None,
        rules: GateRules,
    ) -> Scorer:
        """Measures the parent first (the untrained model: its old outputs are the parent's)."""
        scorer = cls(split, classes, old_outputs, parent_version, rules)
        if parent_model is not None and old_outputs and split.old:
            predicted = _predict(parent_model, split.inputs[split.new :], old_outputs)
            scorer.parent = [classes[int(p)] for p in predicted]
        return scorer

    def score(self, model: nn.Module) -> Score:
        """Accuracy on the new share, and the gate's rules on the exemplars set aside."""
        predicted = _predict(model, self.split.inputs)
        new = self.split.new
        new_accuracy = float((predicted[:new] == self.split.targets[:new]).float().mean()) if new else None
        labels = [self.classes[int(t)] for t in self.split.targets[new:]]
        candidate = [self.classes[int(p)] for p in predicted[new:]]
        old_classes = self.classes[: self.old_outputs]
        verdict = gate(self.parent, candidate, labels, old_classes, self.parent_version, self.rules)
        return Score(new_accuracy, verdict, within_bound(verdict, self.parent, candidate, labels, self.rules))


@dataclass(frozen=True)
class Score:
    new_accuracy: float | None
    verdict: Gate
    within: tuple[bool, float | None]  # within the bound, and the lower confidence bound of the average drop


def within_bound(
    verdict: Gate, parent: Sequence[str] | None, candidate: Sequence[str], labels: Sequence[str], rules: GateRules
) -> tuple[bool, float | None]:
    """The gate's rules on a selection split, which is small: the per-class rule as the gate applies it, and the
    average rule judged the way the gate judges small per-class sets (`worker.evaluation.paired_drop_lower_bound`):
    broken when the one-sided 95 % lower confidence bound of the paired drop exceeds ``max_forgetting``, so that a
    drop of a sample or two among a few dozen does not rule a candidate out.  Returns (within, that bound)."""
    if verdict.drop is None or parent is None:
        return verdict.passed, None
    old = [i for i, y in enumerate(labels) if y in verdict.old_classes]
    lost = sum(parent[i] == labels[i] and candidate[i] != labels[i] for i in old)
    gained = sum(parent[i] != labels[i] and candidate[i] == labels[i] for i in old)
    bound = paired_drop_lower_bound(lost, gained, len(old), rules.confidence)
    return not verdict.failed_classes and bound <= rules.max_forgetting, round(bound, 6)


@dataclass
class Trial:
    """One candidate, trained on a copy of the model and the learner with early stopping on the selection split."""

    candidate: Candidate
    learner: Learner
    model: nn.Module
    budget: ValidationBudget
    report: LearnReport
    seconds: float

    @classmethod
    def run(
        cls,
        candidate: Candidate,
        learner: Learner,
        model: nn.Module,
        split: SelectionSplit,
        stopping: EarlyStopping,
        config: TrainConfig,
        *,
        deadline: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        should_stop: Callable[[], bool] | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> Trial:
        twin = with_lambda(learner, candidate.lam)
        if twin.memory is not None and split.memory_keep is not None:
            twin.memory.keep_only(split.memory_keep)  # the exemplars set aside are measured on, not replayed
        trial_model = copy.deepcopy(model)
        budget = ValidationBudget(
            trial_model, ValidationCurve(split.inputs, split.targets), stopping, deadline=deadline, clock=clock
        )
        began = time.perf_counter()
        report = twin.fit(
            trial_model,
            split.train,
            replace(config, epochs=stopping.max_steps),  # the budget ends it (every epoch has a step at least)
            progress=None if progress is None else lambda p: progress(p.step),
            should_stop=should_stop,
            budget=budget,
            replay_repeat=candidate.replay_repeat,
        )
        return cls(candidate, twin, trial_model, budget, report, time.perf_counter() - began)

    @property
    def cancelled(self) -> bool:
        return self.report.train.stopped

    def result(self, scorer: Scorer) -> CandidateResult:
        score = scorer.score(self.model)
        new_accuracy, verdict = score.new_accuracy, score.verdict
        return CandidateResult(
            lam=self.candidate.lam,
            replay_repeat=self.candidate.replay_repeat,
            best_step=self.budget.best_step,
            steps=self.budget.steps,
            stopped_by=self.budget.stopping.stopped_by,
            seconds=round(self.seconds, 3),
            validation_loss=None if self.budget.best_loss is None else round(self.budget.best_loss, 6),
            new_accuracy=None if new_accuracy is None else round(new_accuracy, 6),
            old_accuracy=verdict.candidate_accuracy,
            parent_old_accuracy=verdict.parent_accuracy,
            drop=None if verdict.drop is None else round(verdict.drop, 6),
            within_bound=score.within[0],
            failed_classes=list(verdict.failed_classes),
            drop_lower_bound=score.within[1],
        )


def fit_update(
    learner: Learner,
    model: nn.Module,
    experience: Experience,
    *,
    classes: list[str],
    old_outputs: int,
    parent_version: int | None,
    fixed: Fixed,
    settings: WorkerSettings,
    config: TrainConfig,
    should_stop: Callable[[], bool] | None = None,
    progress: Callable[[float], None] | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> Fitted:
    """Train ``model`` (in place) on ``experience`` as the settings say (module docstring) and consolidate;
    ``classes`` names the grown head's outputs, of which the first ``old_outputs`` are the parent's."""
    report_progress = progress or (lambda _: None)
    repeat = fixed.replay_repeat or 1
    if settings.train_budget == "epochs":
        reason = "CL_TRAIN_BUDGET=epochs: CL_EPOCHS epochs at the configured values"
        return _fixed_epochs(learner, model, experience, config, repeat, should_stop, report_progress, reason)
    split = SelectionSplit.draw(
        experience,
        learner.memory,
        old_outputs,
        settings.validation_fraction,
        settings.selection_memory_fraction,
        config.seed,
    )
    if split.new == 0 or len(split.train) == 0:
        reason = "too few samples per class to set a validation share aside: CL_EPOCHS epochs"
        return _fixed_epochs(learner, model, experience, config, repeat, should_stop, report_progress, reason)
    parent = parent_version is not None and old_outputs > 0
    chosen_plan = plan(learner, fixed, split, parent, settings)
    scorer = Scorer.of(model if parent else None, split, classes, old_outputs, parent_version, settings.gate_rules())
    started = clock()
    deadline = started + settings.selection_max_seconds
    expected = min(chosen_plan.most, 1 + max(len(chosen_plan.plastic), len(chosen_plan.stable)))
    trials: list[Trial] = []
    results: list[CandidateResult] = []
    for candidate in chosen_plan.candidates(results):
        if len(trials) >= max(1, chosen_plan.most) or (trials and clock() >= deadline):
            break
        max_steps = settings.budget_max_steps
        if trials:  # later candidates run at most as long as the first: n candidates cost at most n times one
            max_steps = max(settings.budget_min_steps, min(max_steps, trials[0].budget.steps))
        stopping = accuracy_stopping(
            settings.budget_patience, min(settings.budget_min_steps, max_steps), max_steps, settings.budget_eval_every
        )
        done = len(trials)

        def step_progress(step: int, done: int = done, max_steps: int = max_steps) -> None:
            report_progress((done + step / max_steps) / (expected + 1))

        trial = Trial.run(
            candidate,
            learner,
            model,
            split,
            stopping,
            config,
            deadline=deadline,
            clock=clock,
            should_stop=should_stop,
            progress=step_progress,
        )
        if trial.cancelled:
            return Fitted(
                learner,
                None,
                _record(chosen_plan, results, split, trials, clock() - started, None, config.batch_size),
                True,
            )
        trials.append(trial)
        results.append(trial.result(scorer))
    best = choose(results)
    results[best].chosen = True
    winner = trials[best]
    selection_seconds = clock() - started
    # the chosen values train the real model on everything (the shares set aside included) for as many passes as
    # the winner needed, then consolidate
    final = learner if winner.candidate.lam == penalty_strength(learner) else with_lambda(learner, winner.candidate.lam)
    trial_pool = _pool(len(split.train), learner.memory, winner.candidate.replay_repeat, split.memory_keep)
    full_pool = _pool(len(experience), learner.memory, winner.candidate.replay_repeat)
    steps = max(1, round(winner.budget.best_step * full_pool / max(1, trial_pool)))
    began = time.perf_counter()
    report = final.learn(
        model,
        experience,
        replace(config, epochs=steps),  # the step budget ends it
        progress=lambda p: report_progress(expected / (expected + 1) + min(1.0, p.step / steps) / (expected + 1)),
        should_stop=should_stop,
        budget=StepBudget(steps),
        replay_repeat=winner.candidate.replay_repeat,
    )
    record = _record(chosen_plan, results, split, trials, selection_seconds, winner, config.batch_size)
    record.steps = report.train.steps
    record.epochs = round(report.train.steps / max(1, math.ceil(full_pool / config.batch_size)), 2)
    record.training_seconds = round(time.perf_counter() - began, 3)
    record.total_steps += report.train.steps
    return Fitted(final, report, record, report.train.stopped)


def _pool(samples: int, memory: ExemplarMemory | None, repeat: int, keep: Tensor | None = None) -> int:
    """Samples of one epoch: the update's data and the concatenated exemplars (those in ``keep`` when given)."""
    if memory is None or memory.replay != "concat":
        return samples
    return samples + repeat * (len(memory) if keep is None else int(keep.sum()))


class StepBudget:
    """Exactly ``steps`` optimisation steps (the final training of the chosen values)."""

    def __init__(self, steps: int) -> None:
        self.target, self.steps = max(1, steps), 0

    @property
    def spent(self) -> bool:
        return self.steps >= self.target

    def after_step(self) -> None:
        self.steps += 1

    def finish(self) -> None:
        """Nothing kept aside: the last weights are the result."""


def _record(
    chosen_plan: Plan,
    results: list[CandidateResult],
    split: SelectionSplit,
    trials: Sequence[Trial],
    seconds: float,
    winner: Trial | None,
    batch_size: int,
) -> TrainingRecord:
    epochs = 0.0
    if winner is not None:
        memory = winner.learner.memory
        pool = len(split.train)
        if memory is not None and memory.replay == "concat":
            pool += winner.candidate.replay_repeat * len(memory)
        epochs = round(winner.budget.best_step / max(1, math.ceil(pool / batch_size)), 2)  # passes over the pool
    return TrainingRecord(
        budget="validation",
        selection="adaptive" if len(results) > 1 else "fixed",
        reason=chosen_plan.reason,
        lam=None if winner is None else winner.candidate.lam,
        replay_repeat=1 if winner is None else winner.candidate.replay_repeat,
        epochs=epochs,
        steps=0 if winner is None else winner.budget.best_step,
        validation={"new": split.new, "old": split.old},
        candidates=results,
        selection_seconds=round(seconds, 3),
        total_steps=sum(t.budget.steps for t in trials),
    )


def _fixed_epochs(
    learner: Learner,
    model: nn.Module,
    experience: Experience,
    config: TrainConfig,
    repeat: int,
    should_stop: Callable[[], bool] | None,
    progress: Callable[[float], None],
    reason: str,
) -> Fitted:
    began = time.perf_counter()
    report = learner.learn(
        model,
        experience,
        config,
        progress=lambda p: progress(p.fraction),
        should_stop=should_stop,
        replay_repeat=repeat,
    )
    record = TrainingRecord(
        budget="epochs",
        selection="fixed",
        reason=reason,
        lam=penalty_strength(learner),
        replay_repeat=repeat,
        epochs=config.epochs,
        steps=report.train.steps,
        training_seconds=round(time.perf_counter() - began, 3),
        total_steps=report.train.steps,
    )
    return Fitted(learner, report, record, report.train.stopped)
