"""The one small protocol every continual-learning method follows, and the quadratic penalty most share.

A method is told about each finished experience (`consolidate`: estimate importance, store anchors), adds its
`penalty` while the next one trains, and keeps its whole state as a plain name→tensor dict (`state_dict`) plus a
small JSON-able configuration (`hparams`), so that any store can save it as safetensors.  Hooks with no-op
defaults let a method re-parametrise the model for training (`prepare`/`finish`, R-EWC), add a loss on
activations (`training_hooks`/`extra_loss`, SLNID), add a loss on the batch and the model's outputs before backward
(`batch_loss`: LwF's distillation, DER++'s replayed logits), read the data loss's gradient (`after_backward`) and
follow every optimiser step (`after_step`: SI's path integral).

Every concrete subclass in the package's modules is registered by its ``name`` (`cl_core.methods.METHODS`), and the
method names the benchmark and the service accept derive from that registry: adding a method is adding one file.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import Tensor, nn

from cl_core.experience import Experience

if TYPE_CHECKING:  # the trainer imports this module: its batch type is only needed for annotations here
    from cl_core.trainer import Batch

JSONValue = Any  # what json.dumps accepts


@dataclass(frozen=True)
class ConsolidationReport:
    """What one consolidation measured: how many samples and how long importance estimation took."""

    samples: int
    seconds: float


class ContinualMethod(ABC):
    """Protocol: consolidate after an experience, penalise while training, state as name→tensor dicts."""

    name: ClassVar[str]
    closed_form_grad: ClassVar[bool] = False
    """True when `add_penalty_grad` is implemented: the trainer then adds the penalty's gradient directly."""
    strength: ClassVar[str | None] = "lam"
    """The constructor argument that sets the method's strength (``clbench run --lambda`` sets it); None: none."""
    tuning_grid: ClassVar[dict[str, list[float]] | None] = None
    """The grid ``clbench tune`` searches on the validation split (None: the benchmark's grid for the method)."""
    memory_argument: ClassVar[str | None] = None
    """The constructor argument that sizes a memory of past samples the method keeps itself (DER++'s buffer): the
    benchmark passes its exemplar budget there, and such a method takes no ``+replay`` (it replays already)."""
    registered: ClassVar[bool] = True
    """False for a helper that is not a method of its own (built by name); see `cl_core.methods.METHODS`."""
    grows_with_experiences: ClassVar[bool] = False
    """True when the state keeps something per past experience (so its size grows, linearly); else it is bounded."""

    def __init__(self, lam: float = 1.0) -> None:
        if not lam >= 0:
            raise ValueError(f"lambda must be non-negative, got {lam}")
        self.lam = float(lam)

    # -- the protocol ------------------------------------------------------------------------------------------
    @abstractmethod
    def consolidate(self, model: nn.Module, experience: Experience) -> ConsolidationReport:
        """Estimate importance on a finished experience's data and store the anchors."""

    @abstractmethod
    def penalty(self, model: nn.Module) -> Tensor:
        """The regulariser's value, differentiable with respect to the model's parameters."""

    @abstractmethod
    def state_dict(self) -> dict[str, Tensor]:
        """Everything learned, as name→tensor (safetensors-ready; scalars as 0-d tensors)."""

    @abstractmethod
    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        """Restore what `state_dict` returned (the hyper-parameters come from `hparams`)."""

    def hparams(self) -> dict[str, JSONValue]:
        """Hyper-parameters as JSON; ``type(self)(**hparams)`` rebuilds an equivalent empty method."""
        return {"lam": self.lam}

    # -- optional hooks ----------------------------------------------------------------------------------------
    def add_penalty_grad(self, model: nn.Module) -> None:
        """Add the penalty's gradient to ``.grad`` in closed form (only when `closed_form_grad` is True)."""
        raise NotImplementedError(f"{type(self).__name__} has no closed-form penalty gradient")

    def prepare(self, model: nn.Module) -> None:
        """Called before an experience trains (a method may re-parametrise the model in place)."""

    def finish(self, model: nn.Module) -> None:
        """Called after an experience trained, before `consolidate` (undo what `prepare` did)."""

    @contextmanager
    def training_hooks(self, model: nn.Module) -> Iterator[None]:
        """Active while training; a method that regularises activations records them here."""
        yield

    def extra_loss(self) -> Tensor | None:
        """A loss on what `training_hooks` recorded in the last forward pass, or None."""
        return None

    def batch_loss(self, model: nn.Module, batch: Batch, outputs: Tensor) -> Tensor | None:
        """Called every training step before backward with the batch and the model's outputs on it: a loss to add
        (differentiable with respect to the parameters), or None.  The method may run the model again (replay)."""
        return None

    def after_backward(self, model: nn.Module) -> None:
        """Called after the data loss's backward (``.grad`` holds ∂L/∂θ of the batch's loss and `batch_loss`),
        before the penalty's gradient is added and before the optimiser steps."""

    def after_step(self, model: nn.Module) -> None:
        """Called after every optimiser step (and after the trainer's own constraint, e.g. weight aligning's clip)."""

    def forget(self, ids: set[int]) -> int:
        """Drop what the method keeps of deleted samples (by the store's sample id); returns how many it held."""
        return 0

    def stored_samples(self) -> int:
        """How many past samples the method keeps itself (0 unless it has a memory, see `memory_argument`)."""
        return 0


def budget_subset(experience: Experience, max_samples: int | None, seed: int = 0) -> Experience:
    """At most ``max_samples`` samples of an experience, drawn without replacement by a fixed seed."""
    if max_samples is None or len(experience) <= max_samples:
        return experience
    if max_samples < 1:
        raise ValueError(f"max_samples must be positive, got {max_samples}")
    generator = torch.Generator().manual_seed(seed)
    return experience.subset(torch.randperm(len(experience), generator=generator)[:max_samples])


def _grow_to(value: Tensor, shape: torch.Size, fill: Tensor) -> Tensor:
    """Embed ``value`` in a tensor of the (larger) ``shape``; the new entries come from ``fill``."""
    if any(new < old for new, old in zip(shape, value.shape, strict=True)):
        raise ValueError(f"a parameter shrank from {tuple(value.shape)} to {tuple(shape)}; only growth is supported")
    grown = fill.detach().clone().to(value.dtype)
    grown[tuple(slice(0, n) for n in value.shape)] = value
    return grown


class QuadraticPenalty(ContinualMethod):
    """Penalty Σᵢ λ/2 · Ωᵢ (θᵢ − θ*ᵢ)² over the parameters that have importance.

    Subclasses decide how Ω and θ* are updated in `consolidate`.  When a parameter has grown (a classifier head
    that gained classes), its importance is padded with zeros and its anchor with the current values, so the
    old rows stay protected and the new rows start free.
    """

    def __init__(self, lam: float = 1.0) -> None:
        super().__init__(lam)
        self.importance: dict[str, Tensor] = {}
        self.anchor: dict[str, Tensor] = {}
        self._scaled: dict[str, Tensor] = {}  # λ·Ω on the parameters' device, rebuilt when state changes

    def penalty_weight(self) -> float:
        """The scalar that multiplies Ω in the penalty: λ here; online EWC's is γλ (Progress & Compress)."""
        return self.lam

    # -- state ----------------------------------------------------------------------------------------------------
    def _set(self, importance: dict[str, Tensor], anchor: dict[str, Tensor]) -> None:
        self.importance = {k: v.detach().clone() for k, v in importance.items()}
        self.anchor = {k: v.detach().clone() for k, v in anchor.items()}
        self._scaled = {}

    def _sync(self, model: nn.Module) -> list[tuple[Tensor, Tensor, Tensor]]:
        """(parameter, λΩ, θ*) triples on the parameters' devices, growing state to grown parameters."""
        params = dict(model.named_parameters())
        triples: list[tuple[Tensor, Tensor, Tensor]] = []
        for name, omega in self.importance.items():
            param = params.get(name)
            if param is None:
                raise KeyError(f"the model has no parameter {name!r} that the method has importance for")
            if omega.shape != param.shape:
                self.importance[name] = omega = _grow_to(omega, param.shape, torch.zeros_like(param))
                self.anchor[name] = _grow_to(self.anchor[name], param.shape, param)
                self._scaled.pop(name, None)
            scaled = self._scaled.get(name)
            if scaled is None or scaled.device != param.device:
                scaled = self._scaled[name] = (self.penalty_weight() * omega).to(param.device, param.dtype)
                self.anchor[name] = self.anchor[name].to(param.device, param.dtype)
            triples.append((param, scaled, self.anchor[name]))
        return triples

    def penalty(self, model: nn.Module) -> Tensor:
        triples = self._sync(model)
        if not triples:
            first = next(model.parameters())
            return first.new_zeros(())
        # λ/2 Σ Ω (θ − θ*)²
        return 0.5 * sum((scaled * (param - anchor).square()).sum() for param, scaled, anchor in triples)  # type: ignore[return-value]

    closed_form_grad = True

    def add_penalty_grad(self, model: nn.Module) -> None:
        """∂/∂θ of λ/2 Ω (θ−θ*)² is λΩ(θ−θ*): added with three fused foreach ops, no autograd graph."""
        triples = self._sync(model)
        if not triples:
            return
        params = [p for p, _, _ in triples]
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        diffs = torch._foreach_sub([p.detach() for p in params], [a for _, _, a in triples])
        torch._foreach_mul_(diffs, [s for _, s, _ in triples])
        torch._foreach_add_([p.grad for p in params], diffs)  # type: ignore[misc, arg-type]

    def state_dict(self) -> dict[str, Tensor]:
        state = {f"importance.{k}": v.detach().cpu().contiguous() for k, v in self.importance.items()}
        state.update({f"anchor.{k}": v.detach().cpu().contiguous() for k, v in self.anchor.items()})
        return state

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        importance = {k.removeprefix("importance."): v for k, v in state.items() if k.startswith("importance.")}
        anchor = {k.removeprefix("anchor."): v for k, v in state.items() if k.startswith("anchor.")}
        if importance.keys() != anchor.keys():
            raise ValueError("method state must hold an anchor for every importance tensor")
        self._set(importance, anchor)

    # -- helpers for subclasses -----------------------------------------------------------------------------------
    @staticmethod
    def current_parameters(model: nn.Module, like: dict[str, Tensor]) -> dict[str, Tensor]:
        """The model's present values of the parameters named in ``like`` (detached copies)."""
        params = dict(model.named_parameters())
        return {name: params[name].detach().clone() for name in like}

    def grown_state(self, new: dict[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """Current importance and anchors padded to the shapes of ``new`` (for parameters that grew)."""
        importance, anchor = {}, {}
        for name, value in new.items():
            if name in self.importance:
                old = self.importance[name].to(value.device, value.dtype)
                importance[name] = _grow_to(old, value.shape, torch.zeros_like(value))
                anchor[name] = _grow_to(self.anchor[name].to(value.device, value.dtype), value.shape, value)
        return importance, anchor
