"""The forgetting history a version carries, so that neither the report nor the next update walks the lineage.

The accuracy matrix R of a lineage has one column per experience j (the held-out part of the data the version
O_j consumed; O_j *opened* the column) and one row per opener, plus the last version's row when it opened nothing.
ACC, BWT and forgetting (`cl_core.metrics`, as the benchmark computes them) need only three numbers per column
once the last row T is known:

* ``first[j]`` = R[j, j], the opener's accuracy on its own experience (BWT);
* ``best[j]`` = max over the opener rows t with j ≤ t < T of R[t, j], the best accuracy before the last row
  (forgetting);
* ``last[j]`` = R[T, j], the version's own accuracy (ACC, BWT, forgetting).

A version's **ledger** holds them for every experience of its ancestors; its own experience, when it opened one, is
``own_experience_accuracy`` (first = last = that, no best yet).  A child derives its ledger from its parent's and
its own evaluation: first is copied, best takes the parent's row when the parent opened a column (only opener rows
are rows of the matrix), last is what the child measured.  So the aggregates are exact — the same floating-point
sums, in the same order, as `cl_core.metrics.summarize` over the full matrix — without reading any ancestor, and
deleting ancestors (version retention) changes nothing.

Beside the ledger a version keeps a **window**: the rows of the openers of the last ``width`` ancestor columns,
restricted to those columns (at most ``width`` × ``width`` numbers), from which the report shows the bottom-right
corner of the matrix.  A ledger is O(experiences) numbers per version (about 70 bytes of JSON an experience).

What is measured, not exact: ``last[j]`` is the accuracy on the held-out samples of experience j that the store
still keeps (a held-out reservoir may have evicted some, and deleted samples are gone); an experience with no
samples left keeps its last measured value, and the ledger says which version measured it (``carried``).  Version
records written before the ledger existed are replayed from their stored rows (one read per version back to the
first one that has a ledger); if one of those ancestors was deleted, the experiences opened before the oldest kept
version have no known diagonal, and BWT and forgetting are null (ACC stays exact).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from registry import NotFound, Store, VersionRecord

log = logging.getLogger(__name__)

HISTORY_KEY = "history"
"""Where a version's stored metrics keep its history (`StoredHistory` JSON); never shown in version listings."""

DEFAULT_WIDTH = 10

Source = Literal["ledger", "replay", "partial replay"]
"""How a history was read: from the version's record, replayed from rows written before the ledger existed, or
replayed with an ancestor missing."""


@dataclass
class Ledger:
    """Per experience, in column order (the order their openers appear along the lineage): the numbers the
    aggregates need.  None marks a number that is not known (a version written before the ledger whose ancestor was
    deleted); ``carried`` maps an experience whose ``last`` was not measured by this version (no held-out samples
    left) to the version that measured it."""

    experiences: list[int] = field(default_factory=list)
    first: list[float | None] = field(default_factory=list)
    best: list[float | None] = field(default_factory=list)
    last: list[float | None] = field(default_factory=list)
    carried: dict[int, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.experiences)

    def append(self, experience: int, first: float | None, best: float | None, last: float | None) -> None:
        self.experiences.append(experience)
        self.first.append(first)
        self.best.append(best)
        self.last.append(last)

    def to_json(self) -> dict[str, Any]:
        return {
            "experiences": self.experiences,
            "first": self.first,
            "best": self.best,
            "last": self.last,
            "carried": {str(k): v for k, v in self.carried.items()},
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Ledger:
        ledger = cls(
            [int(v) for v in data["experiences"]],
            _accuracies(data["first"]),
            _accuracies(data["best"]),
            _accuracies(data["last"]),
            {int(k): int(v) for k, v in data.get("carried", {}).items()},
        )
        if not len(ledger.first) == len(ledger.best) == len(ledger.last) == len(ledger):
            raise ValueError("a ledger's columns differ in length")
        return ledger


@dataclass
class Window:
    """A corner of the accuracy matrix: the last columns, the rows of their openers (row i has entries for columns
    0..i) and possibly a last row (a version that opened nothing) with an entry for every column."""

    rows: list[int | None] = field(default_factory=list)
    columns: list[int] = field(default_factory=list)
    values: list[list[float | None]] = field(default_factory=list)

    def last(self, width: int) -> Window:
        """The last ``width`` columns, without the rows of the openers of the columns left out."""
        k = max(0, len(self.columns) - max(width, 0))
        return Window(self.rows[k:], self.columns[k:], [row[k:] for row in self.values[k:]])

    def to_json(self) -> dict[str, Any]:
        return {"rows": self.rows, "columns": self.columns, "values": self.values}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Window:
        window = cls(
            [int(r) for r in data["rows"]], [int(c) for c in data["columns"]], [_accuracies(r) for r in data["values"]]
        )
        if len(window.rows) != len(window.values):
            raise ValueError("a window's rows and values differ in length")
        return window


def _accuracies(values: Any) -> list[float | None]:
    """Stored accuracies: numbers in [0, 1] or null (anything else is not a history this code wrote)."""
    out: list[float | None] = []
    for v in values:
        if v is not None and (isinstance(v, bool) or not isinstance(v, int | float) or not 0 <= v <= 1):
            raise ValueError(f"not an accuracy: {v!r}")
        out.append(None if v is None else float(v))
    return out


@dataclass
class StoredHistory:
    """What a version record keeps under ``metrics["history"]``: the ledger of its ancestors' experiences (with its
    own ``last`` values) and the window of its ancestors' opener rows.  Its own experience is not in it (the version
    number is assigned at commit): it is the record's ``own_experience_accuracy``."""

    ledger: Ledger
    window: Window
    width: int
    depth: int  # versions along the lineage, this one included (an update's seed depends on it)

    def to_json(self) -> dict[str, Any]:
        return {
            "ledger": self.ledger.to_json(),
            "window": self.window.to_json(),
            "width": self.width,
            "depth": self.depth,
        }

    def stored(self) -> str:
        """The form kept in a version's metrics: one JSON text.  A listing of versions parses every record it
        shows, and this history holds O(experiences) numbers; as a string it is skipped over, not parsed, and only
        the forgetting report and an update (`from_metrics`) decode it."""
        return json.dumps(self.to_json(), separators=(",", ":"))

    @classmethod
    def from_metrics(cls, metrics: Mapping[str, Any]) -> StoredHistory | None:
        """The stored history, or None for a record without a readable one (written before the ledger existed, or
        imported from an archive that holds something else there: the report replays the rows instead).  Both the
        JSON text `stored` writes and an object (as the first records with a ledger held it) are read."""
        data = metrics.get(HISTORY_KEY)
        if isinstance(data, str):
            try:
                data = json.loads(data)
            except ValueError:
                log.warning("a version's stored history is not JSON; its report is replayed from the stored rows")
                return None
        if not isinstance(data, Mapping):
            return None
        try:
            ledger, window = Ledger.from_json(data["ledger"]), Window.from_json(data["window"])
            return cls(ledger, window, int(data["width"]), int(data["depth"]))
        except (KeyError, TypeError, ValueError):
            log.warning("a version's stored history is unreadable; its report is replayed from the stored rows")
            return None

    def remeasured(self, version: int, measured: Mapping[int, float | None]) -> StoredHistory:
        """The same version's history with its accuracies measured again (``measured``): what it knows of its
        ancestors' rows does not change; an experience with no samples left keeps its value."""
        ledger = Ledger(list(self.ledger.experiences), list(self.ledger.first), list(self.ledger.best), [], {})
        for i, experience in enumerate(self.ledger.experiences):
            value = measured.get(experience)
            if value is None:
                value = self.ledger.last[i]
                ledger.carried[experience] = self.ledger.carried.get(experience, version)
            ledger.last.append(value)
        return StoredHistory(ledger, self.window, self.width, self.depth)

    def aggregates(self, own: float | None) -> Aggregates:
        """The aggregates of the version that stores this, with its own experience's accuracy ``own`` (before its
        number is known)."""
        extra: list[float | None] = [] if own is None else [own]
        ledger = self.ledger
        return aggregates(ledger.first + extra, ledger.best + [None] * len(extra), ledger.last + extra, bool(extra))

    def resolve(self, version: int | None, own: float | None, source: Source = "ledger") -> History:
        """The version's whole history: its ancestors' experiences, then its own (when it opened one)."""
        ledger = Ledger(
            list(self.ledger.experiences),
            list(self.ledger.first),
            list(self.ledger.best),
            list(self.ledger.last),
            dict(self.ledger.carried),
        )
        index = {e: i for i, e in enumerate(ledger.experiences)}
        row = [ledger.last[index[c]] for c in self.window.columns]
        window = Window(list(self.window.rows), list(self.window.columns), [list(r) for r in self.window.values])
        if own is not None:
            if version is None:
                raise ValueError("an uncommitted version's own experience has no number yet")
            ledger.append(version, own, None, own)
            window.columns.append(version)
            row.append(own)
        window.rows.append(version)
        window.values.append(row)
        return History(version, ledger, own is not None, window, self.width, self.depth, source)


@dataclass
class Aggregates:
    acc: float | None
    bwt: float | None
    forgetting: float | None


@dataclass
class History:
    """A version's whole forgetting history: the ledger of every experience of its lineage (its own last, when it
    opened one), and the window of the matrix ending with its row."""

    version: int | None
    ledger: Ledger
    opened: bool  # the version opened the last experience of the ledger
    window: Window
    width: int = DEFAULT_WIDTH
    depth: int = 0  # versions along the lineage, this one included
    source: Source = "ledger"

    @classmethod
    def empty(cls) -> History:
        return cls(None, Ledger(), False, Window())

    @property
    def experiences(self) -> list[int]:
        return list(self.ledger.experiences)

    def aggregates(self) -> Aggregates:
        return aggregates(self.ledger.first, self.ledger.best, self.ledger.last, self.opened)


def aggregates(
    first: list[float | None], best: list[float | None], last: list[float | None], opened: bool
) -> Aggregates:
    """ACC, BWT and forgetting exactly as `cl_core.metrics.summarize` computes them on the full matrix (the same
    terms, summed in the same order), from a ledger's columns (``opened``: the last one is the version's own
    experience); None where the matrix has no such figure or a needed number is unknown."""
    n = len(last)
    if n == 0:
        return Aggregates(None, None, None)
    final = _known(last)
    acc = None if final is None else sum(final) / n
    earlier = n - 1 if opened else n  # the columns before the last row
    if earlier == 0:
        return Aggregates(acc, None, None)
    now, diagonal, most = _known(last[:earlier]), _known(first[:earlier]), _known(best[:earlier])
    bwt = None if now is None or diagonal is None else sum(now[j] - diagonal[j] for j in range(earlier)) / earlier
    forgetting = None if now is None or most is None else sum(most[j] - now[j] for j in range(earlier)) / earlier
    return Aggregates(acc, bwt, forgetting)


def _known(values: list[float | None]) -> list[float] | None:
    """The values when all are known, else None."""
    known = [v for v in values if v is not None]
    return known if len(known) == len(values) else None


def derive(parent: History | None, measured: Mapping[int, float | None], width: int) -> StoredHistory:
    """A new version's stored history from its parent's (None: a first version) and its own accuracy on the
    parent's experiences that still have held-out samples (``measured``; the others keep their last value)."""
    ledger = Ledger()
    window = Window()
    depth = 1 if parent is None else parent.depth + 1
    if parent is not None and len(parent.ledger):
        p = parent.ledger
        for i, experience in enumerate(p.experiences):
            opened_by_parent = parent.opened and i == len(p) - 1
            before, now = p.best[i], p.last[i]
            if opened_by_parent:
                best = now  # the parent's row is the first row of its own column
            elif parent.opened:  # the parent's row is a row of the matrix: it takes part in the best
                best = None if before is None or now is None else max(before, now)
            else:  # a version that opened nothing is no row of its descendants' matrices
                best = before
            value = measured.get(experience)
            if value is None:
                value = p.last[i]
                if experience in p.carried:
                    ledger.carried[experience] = p.carried[experience]
                elif parent.version is not None:
                    ledger.carried[experience] = parent.version
            ledger.append(experience, p.first[i], best, value)
        rows, columns, values = parent.window.rows, parent.window.columns, parent.window.values
        if not parent.opened:  # drop the parent's own last row: only opener rows stay
            rows, values = rows[:-1], values[:-1]
        window = Window(list(rows), list(columns), [list(r) for r in values]).last(width)
    return StoredHistory(ledger, window, width, depth)


def _accuracy(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def _own(record: VersionRecord) -> float | None:
    return _accuracy(record.metrics.get("own_experience_accuracy"))


def _row(record: VersionRecord) -> dict[int, float | None]:
    """A version's stored row (what it measured on its ancestors' experiences), entries that are no numbers left
    out."""
    row = record.metrics.get("experience_accuracy")
    if not isinstance(row, Mapping):
        return {}
    return {int(k): _accuracy(v) for k, v in row.items() if str(k).isdigit() and _accuracy(v) is not None}


def _unknown_parent(record: VersionRecord) -> History:
    """Stands for a deleted parent of a version written before the ledger: the experiences its row names, with
    nothing known about them but what that version measures."""
    ledger = Ledger()
    for experience in sorted(_row(record)):
        ledger.append(experience, None, None, None)
    return History(record.parent, ledger, False, Window(), source="partial replay")  # depth unknown: counted from 0


def history_of(store: Store, name: str, version: int | None, width: int = DEFAULT_WIDTH) -> History:
    """A version's history (None: no version, an empty history): see `history_from`."""
    if version is None:
        return History.empty()
    return history_from(store, store.get_version(name, version), width)


def history_from(store: Store, record: VersionRecord, width: int = DEFAULT_WIDTH) -> History:
    """A version's history: from its record (no further read), or, for a record written before the ledger existed,
    replayed from the stored rows back to the first ancestor that has one (``width``: the window kept while
    replaying)."""
    pending: list[VersionRecord] = []  # records without a ledger, newest first
    base: History | None = None
    seen = {record.version}
    while True:
        stored = StoredHistory.from_metrics(record.metrics)
        if stored is not None:
            base = stored.resolve(record.version, _own(record), source="ledger")
            break
        pending.append(record)
        if record.parent is None or record.parent in seen:
            break
        seen.add(record.parent)
        try:
            record = store.get_version(record.model, record.parent)
        except NotFound:  # deleted by version retention
            base = _unknown_parent(pending[-1])
            break
    source: Source = base.source if base is not None else "ledger"
    if pending:
        source = "partial replay" if source == "partial replay" else "replay"
    for record in reversed(pending):
        base = derive(base, _row(record), width).resolve(record.version, _own(record), source)
    assert base is not None
    return base


def measured_row(metrics: Mapping[str, Any]) -> dict[str, float | None]:
    """What a version measured on each of its ancestors' experiences (its full row of the matrix), experience
    number (decimal) → accuracy: the stored ``experience_accuracy`` when it is whole, else (a version with a ledger
    keeps only the newest few, `compact_row`) the ledger's ``last`` values that this version measured (not
    carried)."""
    row = metrics.get("experience_accuracy")
    stored = StoredHistory.from_metrics(metrics) if "experiences_measured" in metrics else None
    if stored is None:  # the stored row is whole
        return dict(row) if isinstance(row, Mapping) else {}
    ledger = stored.ledger
    return {str(e): v for e, v in zip(ledger.experiences, ledger.last, strict=True) if e not in ledger.carried}


def compact_row(row: Mapping[str, float | None], columns: int | None = DEFAULT_WIDTH) -> dict[str, Any]:
    """``experience_accuracy`` cut to the newest ``columns`` experiences (None: all), with the number measured as
    ``experiences_measured`` when something was cut: what version records and listings keep, so that a record's
    size does not grow with the history (`measured_row` gives the whole row back from the ledger)."""
    if columns is None or len(row) <= columns:
        return {"experience_accuracy": dict(row)}
    newest = sorted(row, key=lambda k: (len(k), k))[-columns:]  # decimal version numbers, oldest first
    return {"experience_accuracy": {k: row[k] for k in newest}, "experiences_measured": len(row)}


def without_history(metrics: Mapping[str, Any], columns: int | None = DEFAULT_WIDTH) -> dict[str, Any]:
    """A version's metrics as listings and update records show them: without the history (O(experiences) numbers,
    read by the forgetting report) and with ``experience_accuracy`` cut to the newest ``columns`` experiences (None:
    all), so that a page of versions or updates stays bounded however long the history; the number of experiences
    measured is kept as ``experiences_measured``.  The forgetting report has every figure."""
    out = {k: v for k, v in metrics.items() if k != HISTORY_KEY}
    measured = out.get("experience_accuracy")
    if isinstance(measured, dict) and columns is not None and len(measured) > columns:
        out.update(compact_row(measured, columns))
    return out
