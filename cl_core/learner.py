"""A learner is what a method name such as ``mas+replay+wa`` builds: a method, and optionally an exemplar memory
and weight aligning.  `Learner.learn` is one experience's whole update, the same for the benchmark and the service:

    prepare → train (current data + replayed exemplars, with the penalty) → finish
            → weight aligning (if classes were added) → consolidate (importance, anchors) → update the memory
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor, nn

from cl_core.budget import TrainingBudget
from cl_core.experience import Experience
from cl_core.memory import ExemplarMemory
from cl_core.methods import MAS, ContinualMethod, build_method
from cl_core.methods.base import ConsolidationReport
from cl_core.methods.combined import Combined
from cl_core.naming import MethodSpec, parse_method_name
from cl_core.trainer import Progress, TrainConfig, TrainResult, train
from cl_core.weight_align import align_weights, clip_nonnegative


@dataclass(frozen=True)
class LearnReport:
    train: TrainResult
    importance_seconds: float
    importance_samples: int
    gamma: float | None  # weight-aligning factor, when applied
    retention_protected: bool  # False when new classes arrived and no exemplar memory protects the old ones
    note: str | None = None


class Learner:
    """A method plus an optional exemplar memory, weight aligning and a companion MAS for unlabeled data, with one
    state dict for all of it.

    ``unlabeled`` is a MAS that measures importance on unlabeled data only (it never trains the weights); its
    penalty is added to the method's while training.  The service's ``auto`` learner uses it beside online EWC.
    """

    def __init__(
        self,
        spec: MethodSpec,
        method: ContinualMethod,
        memory: ExemplarMemory | None = None,
        unlabeled: MAS | None = None,
    ) -> None:
        if spec.replay != (memory is not None):
            raise ValueError(f"{spec.name!r}: an exemplar memory is used exactly when the name has '+replay'")
        self.spec = spec
        self.method = method
        self.memory = memory
        self.unlabeled = unlabeled
        self.experiences = 0  # labeled experiences learned so far

    @classmethod
    def build(
        cls,
        name: str,
        *,
        method_hparams: dict[str, Any] | None = None,
        memory_hparams: dict[str, Any] | None = None,
        unlabeled_hparams: dict[str, Any] | None = None,
    ) -> Learner:
        """Parse ``name`` (``base[+replay][+wa]``) and build its parts (a companion MAS if ``unlabeled_hparams``)."""
        spec = parse_method_name(name)
        method = build_method(spec.base, **(method_hparams or {}))
        memory = ExemplarMemory(**(memory_hparams or {})) if spec.replay else None
        unlabeled = MAS(**unlabeled_hparams) if unlabeled_hparams is not None else None
        return cls(spec, method, memory, unlabeled)

    @classmethod
    def from_hparams(cls, hparams: dict[str, Any]) -> Learner:
        """Rebuild an empty learner from `hparams` (then `load_state_dict` restores what it learned)."""
        return cls.build(
            hparams["name"],
            method_hparams=hparams.get("method"),
            memory_hparams=hparams.get("memory"),
            unlabeled_hparams=hparams.get("unlabeled"),
        )

    @property
    def name(self) -> str:
        return self.spec.name

    def hparams(self) -> dict[str, Any]:
        return {
            "name": self.spec.name,
            "method": self.method.hparams(),
            "memory": None if self.memory is None else self.memory.hparams(),
            "unlabeled": None if self.unlabeled is None else self.unlabeled.hparams(),
        }

    def _training_method(self) -> ContinualMethod:
        return self.method if self.unlabeled is None else Combined([self.method, self.unlabeled])

    def _align(self, model: nn.Module, new_classes: Sequence[int]) -> tuple[nn.Linear | None, str | None]:
        """The head to constrain and align, or why weight aligning is skipped this time."""
        head = getattr(model, "head", None)
        if not self.spec.weight_align or not isinstance(head, nn.Linear):
            return None, None
        old_rows = torch.ones(head.out_features, dtype=torch.bool, device=head.weight.device)
        old_rows[list(new_classes)] = False
        if self.experiences > 0 and bool((head.weight[old_rows] < 0).any()):
            # The constraint must hold from the first training on; clipping a head trained without it (imported
            # weights, a method switch) would change every old logit at the first step.
            return None, "weight aligning skipped: the head was trained without its non-negativity constraint"
        return head, None

    def learn(
        self,
        model: nn.Module,
        data: Experience | Sequence[Experience],
        config: TrainConfig = TrainConfig(),
        *,
        progress: Callable[[Progress], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
        budget: TrainingBudget | None = None,
        replay_repeat: int = 1,
    ) -> LearnReport:
        """Train on one experience (several are trained together, as joint training does), then consolidate:
        `fit`, then `consolidate`."""
        fitted = self.fit(
            model,
            data,
            config,
            progress=progress,
            should_stop=should_stop,
            budget=budget,
            replay_repeat=replay_repeat,
        )
        if fitted.train.stopped:
            return fitted
        return self.consolidate(model, data, fitted)

    def fit(
        self,
        model: nn.Module,
        data: Experience | Sequence[Experience],
        config: TrainConfig = TrainConfig(),
        *,
        progress: Callable[[Progress], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
        budget: TrainingBudget | None = None,
        replay_repeat: int = 1,
    ) -> LearnReport:
        """Train (current data + replayed exemplars, with the penalty) and align the weights; nothing consolidated,
        the learner's state unchanged (a trial whose state may be thrown away trains so).

        ``budget`` (e.g. `cl_core.budget.ValidationBudget`) ends training when it is spent and restores the weights
        it keeps; ``config.epochs`` then only bounds it.  ``replay_repeat`` replays the concatenated exemplars that
        many times per epoch (the replay share).  A report whose ``train.stopped`` is True was stopped by
        ``should_stop`` before the end."""
        if replay_repeat < 1:
            raise ValueError(f"replay_repeat must be at least 1, got {replay_repeat}")
        experiences = [data] if isinstance(data, Experience) else list(data)
        new_classes = sorted({c for e in experiences for c in e.new_classes})
        head, skipped = self._align(model, new_classes)
        rehearsal: list[Experience] = []
        replay = None
        if self.memory is not None and self.memory.replay == "concat":
            rehearsal = self.memory.as_experiences() * replay_repeat
        elif self.memory is not None:
            replay = self.memory
        cancelled = False

        def stop() -> bool:
            nonlocal cancelled
            if should_stop is not None and should_stop():
                cancelled = True
                return True
            return budget is not None and budget.spent

        def after_step() -> None:
            if head is not None:
                clip_nonnegative(head)
            if budget is not None:
                budget.after_step()

        method = self._training_method()
        method.prepare(model)
        try:
            result = train(
                model,
                method,
                experiences + rehearsal,
                config,
                replay=replay,
                progress=progress,
                should_stop=stop,
                after_step=after_step,
            )
            if budget is not None and not cancelled:
                budget.finish()  # inside prepare/finish: the weights it restores are in training's parametrisation
        finally:
            method.finish(model)
        if cancelled:
            return LearnReport(result, 0.0, 0, None, True, "stopped before the end; nothing consolidated")
        result = replace(result, stopped=False)  # a spent budget ends training normally
        gamma = align_weights(head, new_classes) if head is not None else None
        return LearnReport(result, 0.0, 0, gamma, True, skipped)

    def consolidate(
        self, model: nn.Module, data: Experience | Sequence[Experience], fitted: LearnReport
    ) -> LearnReport:
        """After `fit` (on these or on part of these data): importance and anchors, the exemplar memory."""
        experiences = [data] if isinstance(data, Experience) else list(data)
        new_classes = sorted({c for e in experiences for c in e.new_classes})
        seconds, samples = 0.0, 0
        for experience in experiences:
            report = self.method.consolidate(model, experience)
            seconds += report.seconds
            samples += report.samples
            if self.memory is not None:
                self.memory.update(model, experience)
        self.experiences += 1
        protected = self.stores_samples or not new_classes or self.spec.base == "joint"
        notes = [fitted.note] if fitted.note else []
        if not protected:
            notes.append(
                "new classes were added without an exemplar memory: retention of the old classes is not "
                "protected (regularisation alone collapses in class-incremental learning)"
            )
        return LearnReport(fitted.train, seconds, samples, fitted.gamma, protected, "; ".join(notes) or None)

    @property
    def stores_samples(self) -> bool:
        """Whether the learner keeps past samples (an exemplar memory, or a method with its own, e.g. DER++)."""
        return self.memory is not None or type(self.method).memory_argument is not None

    def forget(self, ids: set[int]) -> int:
        """Drop the kept samples (exemplar memory and the method's own) of deleted sample ids; how many were held."""
        removed = self.memory.forget(ids) if self.memory is not None else 0
        return removed + self.method.forget(ids)

    def observe(self, model: nn.Module, inputs: Tensor) -> ConsolidationReport:
        """Measure importance on unlabeled inputs without training: the companion MAS when there is one, else the
        method itself (MAS, SLNID, and EWC variants with the true Fisher need no labels)."""
        experience = Experience(inputs)
        target = self.unlabeled if self.unlabeled is not None else self.method
        return target.consolidate(model, experience)

    def state_dict(self) -> dict[str, Tensor]:
        state = {f"method.{k}": v for k, v in self.method.state_dict().items()}
        if self.memory is not None:
            state.update({f"memory.{k}": v for k, v in self.memory.state_dict().items()})
        if self.unlabeled is not None:
            state.update({f"unlabeled.{k}": v for k, v in self.unlabeled.state_dict().items()})
        state["learner.experiences"] = torch.tensor(self.experiences)
        return state

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        parts: dict[str, dict[str, Tensor]] = {"method": {}, "memory": {}, "unlabeled": {}, "learner": {}}
        for key, value in state.items():
            prefix, _, rest = key.partition(".")
            if prefix not in parts or not rest:
                raise ValueError(f"unexpected learner state key {key!r}")
            parts[prefix][rest] = value
        if parts["memory"] and self.memory is None:
            raise ValueError(f"{self.name!r} has no exemplar memory, but the state holds one")
        if parts["unlabeled"] and self.unlabeled is None:
            raise ValueError(f"{self.name!r} has no companion MAS, but the state holds one")
        self.method.load_state_dict(parts["method"])
        if self.memory is not None:
            self.memory.load_state_dict(parts["memory"])
        if self.unlabeled is not None:
            self.unlabeled.load_state_dict(parts["unlabeled"])
        self.experiences = int(parts["learner"].get("experiences", torch.tensor(0)))


def evaluate_accuracy(
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    active_outputs: Sequence[int] | None = None,
    *,
    batch_size: int = 1024,
) -> float:
    """Accuracy of argmax over the active outputs (eval mode); targets beyond the head count as errors."""
    if len(targets) == 0:
        raise ValueError("no samples to evaluate")
    was_training = model.training
    model.eval()
    param = next(model.parameters())
    correct = 0
    try:
        with torch.no_grad():
            for start in range(0, len(targets), batch_size):
                logits = model(inputs[start : start + batch_size].to(param.device, param.dtype)).cpu()
                if active_outputs is not None:
                    active = torch.as_tensor(list(active_outputs))
                    predicted = active[logits[:, active].argmax(1)]
                else:
                    predicted = logits.argmax(1)
                correct += int((predicted == targets[start : start + batch_size].cpu()).sum())
    finally:
        model.train(was_training)
    return correct / len(targets)
