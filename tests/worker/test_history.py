"""The forgetting history a version carries (`worker.history`): its ACC/BWT/forgetting equal `cl_core.metrics` over
the whole accuracy matrix, read from one record; deleted ancestors change nothing; records written before the ledger
are replayed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from cl_core.metrics import summarize
from registry import LocalStore, ModelRecord, UpdateRecord
from tests.worker.histories import CountingStore, Step, commit, new_model, steps
from worker.config import WorkerSettings
from worker.evaluation import VersionMetrics, accuracy_matrix, lineage
from worker.history import History, StoredHistory, Window, derive, history_of, measured_row
from worker.pipeline import run_update
from worker.scheduling import new_update_id
from worker.tasks import evaluate_version

WIDTH = 4


def reference(store: LocalStore, version: int) -> tuple[dict[str, float | None], Window]:
    """ACC/BWT/forgetting by `cl_core.metrics.summarize` over the whole matrix (walking the lineage), and that
    matrix."""
    matrix = accuracy_matrix(lineage(store, "m", version))
    assert all(v is not None for row in matrix.values for v in row)
    s = summarize(matrix.values)  # type: ignore[arg-type]
    columns = [c for c in matrix.columns if c is not None]
    return {"acc": s.acc, "bwt": s.bwt, "forgetting": s.forgetting}, Window(matrix.rows, columns, matrix.values)


def corner(matrix: Window, width: int) -> Window:
    """The last ``width`` columns of the whole matrix and every row that has an entry in them, entry by entry."""
    keep = matrix.columns[-width:]
    rows, values = [], []
    for row, entries in zip(matrix.rows, matrix.values, strict=True):
        kept = [entries[matrix.columns.index(c)] for c in keep if matrix.columns.index(c) < len(entries)]
        if kept:
            rows.append(row)
            values.append(kept)
    return Window(rows, keep, values)


def figures(history: History) -> dict[str, float | None]:
    a = history.aggregates()
    return {"acc": a.acc, "bwt": a.bwt, "forgetting": a.forgetting}


def built(tmp_path: Path, count: int, ledger: bool = True, **options: float) -> tuple[LocalStore, list[Step]]:
    store = LocalStore(tmp_path / "store")
    new_model(store)
    made = list(steps(count, width=WIDTH, **options))  # type: ignore[arg-type]
    for step in made:
        commit(store, step, ledger=ledger)
    return store, made


def test_aggregates_equal_the_whole_matrix_beyond_the_window(tmp_path: Path) -> None:
    store, made = built(tmp_path, 30)
    kinds = set()
    for step in made:
        history = history_of(store, "m", step.version, WIDTH)
        expected, matrix = reference(store, step.version)
        assert figures(history) == expected  # exactly: the same terms summed in the same order
        assert len(history.ledger) == len(matrix.columns)
        shown = history.window.last(WIDTH)
        assert shown == corner(matrix, WIDTH)
        assert shown.rows[-1] == step.version
        stored = store.get_version("m", step.version).metrics
        assert (stored["acc"], stored["bwt"], stored["forgetting"]) == tuple(expected.values())
        kinds.add((history.opened, len(matrix.columns) > WIDTH))
    assert kinds == {(True, True), (False, True), (True, False), (False, False)}  # every shape was checked
    assert len(history_of(store, "m", made[-1].version).ledger) > 3 * WIDTH


def test_a_report_reads_one_record_and_deleted_ancestors_change_nothing(tmp_path: Path) -> None:
    store, made = built(tmp_path, 20)
    live = made[-1].version
    before = history_of(store, "m", live, WIDTH)
    counting = CountingStore(store)
    assert history_of(counting, "m", live, WIDTH) == before  # type: ignore[arg-type]
    assert counting.version_reads == 1 and counting.listings == 0
    for step in made[:-1]:
        store.delete_version("m", step.version)
    assert [r.version for r in lineage(store, "m", live)] == [live]  # the walk stops at the deleted parent
    after = history_of(store, "m", live, WIDTH)
    assert after == before and after.source == "ledger"
    child = derive(after, dict.fromkeys(after.experiences, 0.5), WIDTH)  # an update of the live version
    assert child.ledger.experiences == after.experiences


def test_an_experience_without_samples_keeps_its_last_measured_value(tmp_path: Path) -> None:
    store, made = built(tmp_path, 25, unmeasured_share=0.3)
    effective: dict[int, dict[int, float]] = {}  # version → its (carried) accuracy per experience
    openers: list[int] = []
    for step in made:
        row = dict(effective.get(step.parent, {})) if step.parent is not None else {}
        row.update({e: a for e, a in step.measured.items() if a is not None})
        if step.own is not None:
            row[step.version] = step.own
            openers.append(step.version)
        effective[step.version] = row
        rows = openers if openers and openers[-1] == step.version else [*openers, step.version]
        matrix = [[effective[r][c] for c in openers if c <= r] for r in rows]
        s = summarize(matrix)
        history = history_of(store, "m", step.version, WIDTH)
        assert figures(history) == {"acc": s.acc, "bwt": s.bwt, "forgetting": s.forgetting}
        for experience, measured_by in history.ledger.carried.items():
            assert experience not in step.measured and experience != step.version
            assert effective[measured_by][experience] == history.ledger.last[history.experiences.index(experience)]
    assert history.ledger.carried  # some columns were carried


def test_records_written_before_the_ledger_are_replayed(tmp_path: Path) -> None:
    store, made = built(tmp_path, 15, ledger=False)
    live = made[-1].version
    counting = CountingStore(store)
    history = history_of(counting, "m", live, WIDTH)  # type: ignore[arg-type]
    expected, matrix = reference(store, live)
    assert figures(history) == expected and history.source == "replay"
    assert history.window.last(WIDTH) == corner(matrix, WIDTH)
    assert counting.version_reads == len(made)
    # the next version written by this code carries a ledger derived from the replay: one read from then on
    more = LocalStore(tmp_path / "mixed")
    new_model(more)
    mixed = list(steps(16, width=WIDTH, seed=3))
    for i, step in enumerate(mixed):
        commit(more, step, ledger=i >= 10)
    for step in mixed:
        expected, _ = reference(more, step.version)
        assert figures(history_of(more, "m", step.version, WIDTH)) == expected


def test_an_old_record_whose_ancestor_was_deleted_keeps_acc_and_says_so(tmp_path: Path) -> None:
    store, made = built(tmp_path, 12, ledger=False)
    live = made[-1].version
    expected, _ = reference(store, live)
    store.delete_version("m", made[5].version)
    history = history_of(store, "m", live, WIDTH)
    assert history.source == "partial replay"
    assert history.aggregates().acc == pytest.approx(expected["acc"])  # the same columns: every row names them
    assert history.aggregates().bwt is None and history.aggregates().forgetting is None  # diagonals unknown


def test_a_stored_history_round_trips_and_an_unreadable_one_is_replayed() -> None:
    made = list(steps(8, width=WIDTH))
    for step in made:
        assert StoredHistory.from_metrics(step.metrics()) == step.stored
    broken: list[Any] = [{"ledger": {}}, {"ledger": "x"}, "nonsense", {"ledger": {"experiences": [1], "first": [2.0]}}]
    for broken_history in broken:
        assert StoredHistory.from_metrics({"history": broken_history}) is None
    assert isinstance(made[-1].metrics()["history"], str)  # kept as one JSON text: listings skip over it
    bad = json.loads(made[-1].stored.stored())  # a copy (to_json shares its lists with the history)
    bad["ledger"]["last"][0] = "NaN"
    assert StoredHistory.from_metrics({"history": bad}) is None
    assert StoredHistory.from_metrics({"history": json.dumps(bad)}) is None
    assert StoredHistory.from_metrics({"history": "{not json"}) is None
    # the object form the first ledgers were stored in still reads
    assert StoredHistory.from_metrics({"history": made[-1].stored.to_json()}) == made[-1].stored


def test_first_versions_and_empty_histories() -> None:
    assert History.empty().aggregates().acc is None and History.empty().experiences == []
    only = derive(None, {}, WIDTH)
    assert only.depth == 1 and only.aggregates(0.75).acc == 0.75 and only.aggregates(0.75).bwt is None
    assert only.aggregates(None).acc is None  # a first version without held-out data: no matrix yet
    resolved = only.resolve(1, 0.75)
    assert resolved.window == Window([1], [1], [[0.75]])
    nothing = derive(resolved, {}, WIDTH).resolve(2, None)  # a child that measured nothing (no samples left)
    assert nothing.ledger.carried == {1: 1} and nothing.aggregates().bwt == 0.0
    assert nothing.window == Window([1, 2], [1], [[0.75], [0.75]])


@pytest.mark.slow
def test_a_real_history_of_updates_matches_the_whole_matrix_and_survives_deleted_ancestors(tmp_path: Path) -> None:
    """16 small updates through the pipeline (every fourth brings unlabeled data only, so it opens no column), then
    every ancestor of the live version deleted: the next update still reads the trusted held-out samples of every
    experience (from its parent's ledger) and its figures still equal the whole matrix's."""
    store = LocalStore(tmp_path / "store")
    store.create_model(ModelRecord(name="m", architecture="mlp", input_shape=[8], classes=[], options={"hidden": [16]}))
    settings = WorkerSettings(
        epochs=1,
        batch_size=32,
        device="cpu",
        max_forgetting=1.0,
        max_class_drop=1.0,
        screening=False,
        report_window=WIDTH,
        keep_versions=None,
    )
    generator = torch.Generator().manual_seed(0)

    def post(step: int) -> None:
        classes = [str(step % 6), str((step + 1) % 6)]
        inputs = torch.cat([torch.eye(8)[int(c)] * 3 + 0.3 * torch.randn(15, 8, generator=generator) for c in classes])
        labels: list[str | None] = [c for c in classes for _ in range(15)]
        store.append_samples("m", inputs, [None] * len(labels) if step % 4 == 3 else labels, 0.2)

    def update() -> int:
        record = UpdateRecord(update_id=new_update_id(), model="m", method="auto", triggered_by="test")
        store.put_update(record)
        result = run_update(store, "m", record.update_id, settings)
        assert result.status == "succeeded" and result.version is not None, result.error
        assert store.live_version("m") == result.version
        assert "history" not in result.metrics  # the update's record shows the figures, not the ledger
        return result.version

    for step in range(16):
        post(step)
        live = update()
        expected, matrix = reference(store, live)
        stored = store.get_version("m", live).metrics
        assert (stored["acc"], stored["bwt"], stored["forgetting"]) == tuple(expected.values())
        assert history_of(store, "m", live, WIDTH).window.last(WIDTH) == corner(matrix, WIDTH)
    assert len(matrix.columns) > 2 * WIDTH and 4 not in matrix.columns  # unlabeled updates opened no column
    assert matrix.rows[-1] == live not in matrix.columns  # the live version opened none either: a row of its own
    chain = lineage(store, "m", live)
    parent = history_of(store, "m", live, WIDTH)
    old_classes = set(store.get_version("m", live).spec["classes"])
    trusted = sum(label in old_classes for e in parent.experiences for label in store.experience_samples("m", e).labels)
    for record in chain[:-1]:
        store.delete_version("m", record.version)
    again = evaluate_version(store, "m", live, WIDTH)["metrics"]  # its parent is gone: its own ledger stands in
    stored = store.get_version("m", live).metrics
    assert (again["acc"], again["bwt"], again["forgetting"]) == (stored["acc"], stored["bwt"], stored["forgetting"])
    assert "history" not in again
    post(16)
    newest = update()
    record = store.get_version("m", newest)
    assert record.metrics["gate"]["samples"] == trusted > 0  # the gate still judges on every trusted sample
    s = accuracy_matrix([*chain, record]).summary()
    assert (record.metrics["acc"], record.metrics["bwt"], record.metrics["forgetting"]) == (
        s["acc"],
        s["bwt"],
        s["forgetting"],
    )


def test_a_version_measured_again_keeps_what_it_knew_of_its_ancestors() -> None:
    first = derive(None, {}, WIDTH).resolve(1, 0.75)
    stored = derive(first, {1: 0.5}, WIDTH)
    same = stored.remeasured(2, {})  # no samples left: the values it measured stay, said to be version 2's
    assert same.ledger.last == [0.5] and same.ledger.carried == {1: 2} and same.ledger.first == [0.75]
    fresh = stored.remeasured(2, {1: 0.25})
    assert fresh.ledger.last == [0.25] and fresh.ledger.carried == {} and fresh.ledger.best == stored.ledger.best
    assert fresh.aggregates(None).bwt == 0.25 - 0.75 and fresh.window == stored.window


def test_a_record_keeps_the_newest_row_entries_and_its_ledger_gives_the_whole_row() -> None:
    """A version record's size must not grow with the history through its row: it keeps the newest columns and
    `measured_row` gives back every measured value, equal to what was measured."""
    made = list(steps(40, width=10, seed=3, unmeasured_share=0.2))
    last = made[-1]
    measured = {str(k): v for k, v in last.measured.items()}
    metrics = VersionMetrics(1, None, {}, measured, last.own, None, None, None, history=last.stored).to_json()
    assert len(measured) > 10 and len(metrics["experience_accuracy"]) == 10
    assert metrics["experiences_measured"] == len(measured)
    assert set(metrics["experience_accuracy"]) == set(sorted(measured, key=int)[-10:])
    assert measured_row(metrics) == measured
    whole = VersionMetrics(1, None, {}, dict(list(measured.items())[:5]), None, None, None, None).to_json()
    assert measured_row(whole) == dict(list(measured.items())[:5]) and "experiences_measured" not in whole
