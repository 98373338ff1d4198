"""Published accuracies on full MNIST (60k training images), shown beside ours with their source named.

They are a reference, not a target: our protocol trains on 15× less data (MNIST-5k) and differs in the ways each
source's ``setting`` lists.  Every figure below was read from text that quotes the paper; a cell that could not be
found is absent (shown empty), never filled in from memory.  Final average accuracy over all tasks, in percent.

Where the figures were read (stored copies, retrieved for this module):
* van de Ven & Tolias, arXiv:1904.07734 v1: split MNIST (their Table 4, 20 seeds) from several independent copies of
  the table; the Offline (joint) figure only for Class-IL; permuted MNIST from one copy of their permuted table.
* Hsu et al., arXiv:1810.12488 v4 (their Table 2, split MNIST, 10 runs): the Class-IL column, and the Task-/Domain-IL
  figures of the replay rows (naive rehearsal, GEM, DGR).  The Task-/Domain-IL figures of their regularisation rows
  (EWC, online EWC, SI, MAS) and baselines could not be retrieved: those cells are empty.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Figure:
    """One published accuracy (percent) and, where it is not the same method as ours, what it measures."""

    value: float
    label: str = ""  # e.g. "SGD" where the source's baseline differs from ours

    def text(self) -> str:
        return f"{self.value:.2f}" + (f" ({self.label})" if self.label else "")


@dataclass(frozen=True)
class Source:
    key: str
    column: str  # the column header: who, when, on what
    citation: str
    setting: str  # how the source's protocol differs from ours
    # scenario -> row name (ours, or the source's own name for methods we do not run) -> figure
    figures: dict[str, dict[str, Figure]] = field(default_factory=dict)


VAN_DE_VEN_2019 = Source(
    key="vandeven2019",
    column="van de Ven & Tolias 2019, full MNIST",
    citation=(
        'G. M. van de Ven, A. S. Tolias, "Three scenarios for continual learning", arXiv:1904.07734 (v1, 2019), '
        "split MNIST (Table 4) and permuted MNIST"
    ),
    setting=(
        "60,000 training images; split MNIST: MLP 784-400-400, Adam lr 1e-3, batch 128, 2,000 iterations per task "
        "(≈ 21 epochs of a 12k-image task); permuted MNIST: 10 tasks (ours: 5), MLP 784-1000-1000, Adam lr 1e-4, "
        "5,000 iterations per task (≈ 11 epochs); mean of 20 seeds"
    ),
    figures={
        "split-task": {
            "finetune": Figure(87.19, "None"),
            "ewc": Figure(98.64),
            "online-ewc": Figure(99.12),
            "si": Figure(99.09),
            "lwf": Figure(99.57),
            "DGR": Figure(99.50),
            "DGR+distill": Figure(99.61),
        },
        "split-domain": {
            "finetune": Figure(59.21, "None"),
            "ewc": Figure(63.95),
            "online-ewc": Figure(64.32),
            "si": Figure(65.36),
            "lwf": Figure(71.50),
            "DGR": Figure(95.72),
            "DGR+distill": Figure(96.83),
        },
        "split-class": {
            "finetune": Figure(19.90, "None"),
            "joint": Figure(97.94, "Offline"),
            "ewc": Figure(20.01),
            "online-ewc": Figure(19.96),
            "si": Figure(19.99),
            "lwf": Figure(23.85),
            "DGR": Figure(90.79),
            "DGR+distill": Figure(91.79),
            "iCaRL (2,000 exemplars)": Figure(94.57),
        },
        "permuted": {  # their Domain-IL permuted MNIST, 10 tasks
            "finetune": Figure(78.51, "None, 10 tasks"),
            "ewc": Figure(94.31, "10 tasks"),
            "online-ewc": Figure(94.42, "10 tasks"),
            "si": Figure(95.33, "10 tasks"),
            "lwf": Figure(72.64, "10 tasks"),
            "DGR": Figure(95.09, "10 tasks"),
            "DGR+distill": Figure(97.35, "10 tasks"),
        },
    },
)

HSU_2018 = Source(
    key="hsu2018",
    column="Hsu et al. 2018, full MNIST",
    citation=(
        'Y.-C. Hsu, Y.-C. Liu, A. Ramasamy, Z. Kira, "Re-evaluating Continual Learning Scenarios: A Categorization '
        'and Case for Strong Baselines", arXiv:1810.12488 (v4, 2019), Table 2 (split MNIST)'
    ),
    setting=(
        "60,000 training images padded to 32×32 (1,024 inputs); MLP 1024-400-400, Adam lr 1e-3, batch 128, "
        "4 epochs per task; mean of 10 runs; replay methods share one static memory budget (as our protocol 2 does: "
        "200 in all; protocol 1 kept 20 per class); "
        "no permuted MNIST in this table"
    ),
    figures={
        "split-task": {
            "finetune+replay": Figure(99.40, "naive rehearsal"),
            "GEM": Figure(98.42),
            "DGR": Figure(99.47),
        },
        "split-domain": {
            "finetune+replay": Figure(95.16, "naive rehearsal"),
            "GEM": Figure(96.16),
            "DGR": Figure(95.74),
        },
        "split-class": {
            "finetune": Figure(19.46, "SGD"),
            "joint": Figure(97.53, "Offline"),
            "ewc": Figure(19.80),
            "online-ewc": Figure(19.77),
            "mas": Figure(19.52),
            "finetune+replay": Figure(90.78, "naive rehearsal"),
            "si": Figure(19.67),
            "L2": Figure(22.52),
            "lwf": Figure(24.17),
            "GEM": Figure(92.20),
            "DGR": Figure(91.24),
        },
    },
)

SOURCES: tuple[Source, ...] = (VAN_DE_VEN_2019, HSU_2018)


def figure(source: Source, scenario: str, row: str) -> Figure | None:
    """The published figure for one of our method names (or a source's own row name), or None where none exists."""
    return source.figures.get(scenario, {}).get(row)


def published_only_rows(scenario: str, ours: list[str]) -> list[str]:
    """Rows some source reports for ``scenario`` that are not among our methods (kept in first-seen order)."""
    rows: list[str] = []
    for source in SOURCES:
        for row in source.figures.get(scenario, {}):
            if row not in ours and row not in rows and row not in _OUR_NAMES:
                rows.append(row)
    return rows


_OUR_NAMES = {"finetune", "joint", "ewc", "online-ewc", "mas", "finetune+replay", "si", "lwf", "derpp"}
