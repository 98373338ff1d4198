"""Method names as the command line and the API write them: ``base[+replay][+wa]``.

``mas+replay+wa`` is MAS with an exemplar memory and weight aligning; ``finetune+replay`` is plain experience
replay; ``joint`` (training once on everything, the upper bound) takes no suffix.  The bases are the registered
methods (`cl_core.methods.METHODS`) plus ``joint``; a method that keeps its own memory of past samples (DER++) takes
no ``+replay``.
"""

from __future__ import annotations

from dataclasses import dataclass

from cl_core.methods import METHODS
from cl_core.validation import shown

BASES: tuple[str, ...] = ("finetune", "joint", *(name for name in METHODS if name != "finetune"))
SUFFIXES = ("replay", "wa")


@dataclass(frozen=True)
class MethodSpec:
    """A parsed method name."""

    base: str
    replay: bool = False
    weight_align: bool = False

    @property
    def name(self) -> str:
        """The canonical spelling (suffixes in a fixed order)."""
        parts = [self.base]
        if self.replay:
            parts.append("replay")
        if self.weight_align:
            parts.append("wa")
        return "+".join(parts)


def parse_method_name(name: str) -> MethodSpec:
    """Parse ``base[+replay][+wa]``; an unknown or malformed name is a ValueError listing the known ones."""
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"empty method name; known bases: {', '.join(BASES)}")
    base, *suffixes = [part.strip().lower() for part in name.split("+")]
    if base not in BASES:
        raise ValueError(f"unknown method {shown(base)} in {shown(name)}; known bases: {', '.join(BASES)}")
    for suffix in suffixes:
        if suffix not in SUFFIXES:
            raise ValueError(f"unknown suffix {shown(suffix)} in {shown(name)}; known suffixes: {', '.join(SUFFIXES)}")
    if len(set(suffixes)) != len(suffixes):
        raise ValueError(f"repeated suffix in {shown(name)}")
    if base == "joint" and suffixes:
        raise ValueError(f"{shown(name)}: joint training sees all data at once and takes no suffix")
    if "replay" in suffixes and base != "joint" and METHODS[base].memory_argument is not None:
        raise ValueError(f"{shown(name)}: {base} keeps its own memory of past samples and takes no '+replay'")
    return MethodSpec(base, replay="replay" in suffixes, weight_align="wa" in suffixes)
