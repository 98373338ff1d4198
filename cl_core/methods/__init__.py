"""One file per method behind one protocol (`base.ContinualMethod`); `build_method` makes one by base name.

`METHODS` is discovered, not listed: every module of this package is imported and each concrete `ContinualMethod`
subclass that defines its own ``name`` (and does not set ``registered = False``, as `Combined` does) is registered
under that name.  Method names (`cl_core.naming.BASES`), the benchmark's method lists and the service's accepted
names all derive from it, so a new method is one new file here.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from typing import Any

from cl_core.methods.base import ConsolidationReport, ContinualMethod, QuadraticPenalty
from cl_core.methods.derpp import DERPP
from cl_core.methods.ewc import EWC
from cl_core.methods.finetune import FineTune
from cl_core.methods.lwf import LwF
from cl_core.methods.mas import MAS
from cl_core.methods.online_ewc import OnlineEWC
from cl_core.methods.rewc import REWC
from cl_core.methods.si import SI
from cl_core.methods.slnid import SLNID


def _discover() -> dict[str, type[ContinualMethod]]:
    """Every registered method class of this package's modules by name, fine-tuning (the baseline) first."""
    found: dict[str, type[ContinualMethod]] = {}
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
        module = importlib.import_module(f"{__name__}.{info.name}")
        for obj in vars(module).values():
            if (
                not isinstance(obj, type)
                or not issubclass(obj, ContinualMethod)
                or obj.__module__ != module.__name__
                or inspect.isabstract(obj)
                or "name" not in obj.__dict__
                or not obj.__dict__.get("registered", True)
            ):
                continue
            if obj.name in found and found[obj.name] is not obj:
                raise TypeError(f"two methods are named {obj.name!r}: {found[obj.name].__name__} and {obj.__name__}")
            found[obj.name] = obj
    first = {name: cls for name, cls in found.items() if name == "finetune"}
    return {**first, **{name: cls for name, cls in found.items() if name != "finetune"}}


METHODS: dict[str, type[ContinualMethod]] = _discover()


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
    "DERPP",
    "EWC",
    "MAS",
    "METHODS",
    "REWC",
    "SI",
    "SLNID",
    "ConsolidationReport",
    "ContinualMethod",
    "FineTune",
    "LwF",
    "OnlineEWC",
    "QuadraticPenalty",
    "build_method",
]
