"""One file per method behind one protocol (`base.ContinualMethod`); `build_method` makes one by base name."""

from __future__ import annotations

from typing import Any

from cl_core.methods.base import ConsolidationReport, ContinualMethod, QuadraticPenalty
from cl_core.methods.ewc import EWC
from cl_core.methods.finetune import FineTune
from cl_core.methods.mas import MAS
from cl_core.methods.online_ewc import OnlineEWC
from cl_core.methods.rewc import REWC
from cl_core.methods.slnid import SLNID

METHODS: dict[str, type[ContinualMethod]] = {cls.name: cls for cls in (FineTune, EWC, OnlineEWC, MAS, REWC, SLNID)}


def build_method(base: str, **hparams: Any) -> ContinualMethod:
    """A fresh method by base name (``joint`` trains like fine-tuning on all data at once)."""
    cls = METHODS.get("finetune" if base == "joint" else base)
    if cls is None:
        raise ValueError(f"unknown method {base!r}; known: {', '.join(sorted(METHODS))}")
    try:
        return cls(**hparams)
    except TypeError as exc:
        raise ValueError(f"bad hyper-parameters for {base!r}: {exc}") from exc


__all__ = [
    "EWC",
    "MAS",
    "METHODS",
    "REWC",
    "SLNID",
    "ConsolidationReport",
    "ContinualMethod",
    "FineTune",
    "OnlineEWC",
    "QuadraticPenalty",
    "build_method",
]
