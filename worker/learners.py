"""Which learner an update uses: the service's ``auto`` choice, or a method name such as ``mas+replay+wa``."""

from __future__ import annotations

import inspect
from typing import Any

from cl_core.learner import Learner
from cl_core.methods import METHODS
from cl_core.naming import parse_method_name
from worker.config import WorkerSettings

AUTO = "auto"


def validate_method(method: str, settings: WorkerSettings) -> str:
    """The canonical name of a method the service can run (ValueError naming the problem otherwise)."""
    if method == AUTO:
        return AUTO
    spec = parse_method_name(method)
    if spec.base == "joint":
        raise ValueError("'joint' retrains on everything at once; it is a benchmark bound, not an update method")
    if (spec.replay or METHODS[spec.base].memory_argument is not None) and not settings.exemplar_memory:
        raise ValueError(f"{method!r} keeps past samples, which is switched off (CL_EXEMPLAR_MEMORY=false)")
    return spec.name


def build_learner(method: str, settings: WorkerSettings, overrides: dict[str, Any] | None = None) -> Learner:
    """A fresh learner.  ``auto`` is online EWC on labeled data with exemplar replay (unless the memory is switched
    off) and weight aligning, plus MAS importance from unlabeled data.  ``overrides`` (the model's method
    settings) may set "lam", "gamma", … for the method, "memory" for the exemplar memory and "unlabeled" for the
    companion MAS."""
    overrides = dict(overrides or {})
    memory = {**settings.memory_hparams(), **overrides.pop("memory", {})}
    unlabeled = overrides.pop("unlabeled", None)
    if method == AUTO:
        name = "online-ewc+replay+wa" if settings.exemplar_memory else "online-ewc+wa"
        method_hparams = {
            "lam": settings.auto_ewc_lambda,
            "gamma": settings.auto_ewc_gamma,
            "max_samples": settings.importance_max_samples,
            **overrides,
        }
        unlabeled = {
            "lam": settings.auto_mas_lambda,
            "max_samples": settings.importance_max_samples,
            "accumulate": settings.mas_accumulate,
            **(unlabeled or {}),
        }
    else:
        name = validate_method(method, settings)
        method_hparams = overrides
        cls = METHODS[parse_method_name(name).base]
        accepted = inspect.signature(cls).parameters
        if "max_samples" in accepted and "max_samples" not in method_hparams:
            method_hparams["max_samples"] = settings.importance_max_samples
        if "accumulate" in accepted and "accumulate" not in method_hparams:  # MAS, SLNID: see mas_accumulate
            method_hparams["accumulate"] = settings.mas_accumulate
        if cls.grows_with_experiences and "max_terms" in accepted and "max_terms" not in method_hparams:
            method_hparams["max_terms"] = settings.max_penalty_terms  # every update is an experience: bound it
        if cls.memory_argument is not None and cls.memory_argument not in method_hparams:
            method_hparams[cls.memory_argument] = settings.own_memory_size()  # DER++'s buffer: the memory's total
    spec = parse_method_name(name)
    return Learner.build(
        name,
        method_hparams=method_hparams,
        memory_hparams=memory if spec.replay else None,
        unlabeled_hparams=unlabeled,
    )


def stored_learner(hparams: dict[str, Any]) -> Learner:
    """An empty learner as a stored version's settings describe it.  MAS (the auto method's companion, `mas`,
    `slnid`) averaged its importance before it learned to sum it, and a stored learner from then does not say
    so: where its settings name no ``accumulate``, it is the mean it was built with, not today's default."""
    stored = dict(hparams)
    unlabeled = stored.get("unlabeled")
    if isinstance(unlabeled, dict) and "accumulate" not in unlabeled:
        stored["unlabeled"] = {**unlabeled, "accumulate": "mean"}
    method = stored.get("method")
    if isinstance(method, dict) and "accumulate" not in method:
        cls = METHODS[parse_method_name(str(stored["name"])).base]
        if "accumulate" in inspect.signature(cls).parameters:
            stored["method"] = {**method, "accumulate": "mean"}
    return Learner.from_hparams(stored)
