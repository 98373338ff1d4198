"""What a benchmark invocation covers: scenarios, method names and seeds, parsed and checked up front.

Method names go through the core's parser (``base[+replay][+wa]``), so an invalid name such as ``joint+replay``
fails before any training starts.  The default method list follows what the core offers (`METHODS`): methods
added to the core later join the benchmark without a change here.
"""

from __future__ import annotations

from cl_core.data import SCENARIOS
from cl_core.methods import METHODS
from cl_core.naming import parse_method_name

QUICK_METHODS = ("finetune", "joint", "ewc", "mas")
CORE_BENCHMARK = (
    "finetune",
    "joint",
    "ewc",
    "online-ewc",
    "mas",
    "finetune+replay",
    "ewc+replay+wa",
    "mas+replay+wa",
)
LATER_BASES = ("rewc", "slnid", "lwf", "si", "derpp")  # run by default as soon as the core registers them


def split_list(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def available(method: str) -> bool:
    """Whether the core can build ``method`` now (joint trains with fine-tuning's method)."""
    base = parse_method_name(method).base
    return base == "joint" or base in METHODS


def default_methods() -> list[str]:
    return [*CORE_BENCHMARK, *(base for base in LATER_BASES if base in METHODS)]


def parse_scenarios(text: str | None) -> list[str]:
    """Comma-separated scenario names; None or ``all`` means every scenario of the protocol."""
    if text is None or text.strip() == "all":
        return list(SCENARIOS)
    names = split_list(text)
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown or not names:
        raise ValueError(f"unknown scenario {unknown or text!r}; known: {', '.join(SCENARIOS)}")
    return names


def parse_methods(text: str | None, default: list[str] | tuple[str, ...]) -> list[str]:
    """Comma-separated method names, each checked by the core's parser and against the methods it registers."""
    names = list(default) if text is None else split_list(text)
    if not names:
        raise ValueError("no method given")
    for name in names:
        parse_method_name(name)  # raises ValueError with the known names
        if not available(name):
            base = parse_method_name(name).base
            raise ValueError(f"{name!r}: the core does not provide {base!r} yet; available: {', '.join(METHODS)}")
    return names


def parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in split_list(text)]
    except ValueError as exc:
        raise ValueError(f"seeds must be integers separated by commas, got {text!r}") from exc
    if not seeds:
        raise ValueError("no seed given")
    return seeds


def profile_methods() -> list[str]:
    """Every method the service can run (joint is a benchmark bound, not an update), with replay variants."""
    bases = ["finetune", *(base for base in METHODS if base != "finetune")]
    return [*bases, "finetune+replay", "ewc+replay+wa", "mas+replay+wa", "derpp+wa"]
