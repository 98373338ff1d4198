"""The forgetting report (`GET /v1/models/{name}/metrics`): its size and its reads do not grow with the history, its
ACC/BWT/forgetting cover the whole history, records written before the ledger still report, hostile parameters are
a 422."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from cl_core.metrics import summarize
from registry import LocalStore
from tests.worker.histories import CountingStore, Step, commit, new_model, steps
from worker.evaluation import accuracy_matrix, lineage


def filled(data_dir: Path, made: list[Step], ledger: bool = True) -> LocalStore:
    store = LocalStore(data_dir)
    new_model(store)
    for step in made:
        commit(store, step, ledger=ledger)
    return store


def gauge(exposition: str, name: str) -> float:
    match = re.search(rf'^{name}{{model="m"}} (\S+)$', exposition, re.MULTILINE)
    assert match, name
    return float(match.group(1))


def test_a_thousand_experiences_report_in_a_small_answer_from_one_record(
    tmp_path: Path, app_at: Callable[..., TestClient]
) -> None:
    made = list(steps(1000, width=10, opener_share=1.0))
    filled(tmp_path / "store", made[-1:])  # only the live version is kept: its ancestors were deleted
    client = app_at(tmp_path / "store")
    runtime = client.app.state.runtime  # type: ignore[attr-defined]
    counting = CountingStore(runtime.store)
    runtime.store = counting
    answer = client.get("/v1/models/m/metrics")
    assert answer.status_code == 200, answer.text
    assert len(answer.content) < 100_000
    assert counting.version_reads == 1 and counting.listings == 0
    report = answer.json()
    expected = made[-1].stored.aggregates(made[-1].own)
    assert (report["acc"], report["bwt"], report["forgetting"]) == (expected.acc, expected.bwt, expected.forgetting)
    assert report["experiences"] == 1000 and report["window"] == 10 and report["history"] == "ledger"
    assert report["matrix"]["columns"] == report["matrix"]["rows"] == list(range(991, 1001))
    assert [len(row) for row in report["matrix"]["values"]] == list(range(1, 11))  # lower-triangular
    assert report["ledger"] is None
    # the Prometheus gauges show the same figures
    exposition = client.get("/metrics").text
    assert gauge(exposition, "cl_model_acc_ratio") == report["acc"]
    assert gauge(exposition, "cl_model_bwt_ratio") == report["bwt"]
    assert gauge(exposition, "cl_model_forgetting_ratio") == report["forgetting"]
    # asked for: fewer or more columns (at most what the version kept), every experience's figures
    assert client.get("/v1/models/m/metrics?window=3").json()["matrix"]["columns"] == [998, 999, 1000]
    assert client.get("/v1/models/m/metrics?window=100").json()["window"] == 11  # 10 kept, and its own
    full = client.get("/v1/models/m/metrics?full=true")
    ledger = full.json()["ledger"]
    assert ledger["experiences"] == list(range(1, 1001)) and len(full.content) < 250_000
    assert ledger["last"][-1] == ledger["first"][-1] == made[-1].own and ledger["best"][-1] is None
    assert counting.version_reads == 4 and counting.listings == 0
    versions = client.get("/v1/models/m/versions").json()["versions"]
    assert "history" not in versions[0]["metrics"] and versions[0]["metrics"]["acc"] == report["acc"]


def test_the_report_covers_the_whole_history_beyond_the_window(
    tmp_path: Path, app_at: Callable[..., TestClient]
) -> None:
    made = list(steps(30, width=10, seed=7, opener_share=0.6))
    store = filled(tmp_path / "store", made)
    matrix = accuracy_matrix(lineage(store, "m", made[-1].version))
    assert len(matrix.columns) > 12
    s = summarize(matrix.values)  # type: ignore[arg-type]
    client = app_at(tmp_path / "store", report_window=5)
    report = client.get("/v1/models/m/metrics").json()
    assert (report["acc"], report["bwt"], report["forgetting"]) == (s.acc, s.bwt, s.forgetting)
    assert report["matrix"]["columns"] == matrix.columns[-5:] and report["experiences"] == len(matrix.columns)
    assert report["matrix"]["values"][-1] == matrix.values[-1][-5:]


def test_records_written_before_the_ledger_still_report(tmp_path: Path, app_at: Callable[..., TestClient]) -> None:
    made = list(steps(12, width=10, seed=2))
    store = filled(tmp_path / "store", made, ledger=False)
    matrix = accuracy_matrix(lineage(store, "m", made[-1].version))
    s = summarize(matrix.values)  # type: ignore[arg-type]
    client = app_at(tmp_path / "store")
    report = client.get("/v1/models/m/metrics").json()
    assert report["history"] == "replay" and report["matrix"]["columns"] == matrix.columns[-10:]
    assert (report["acc"], report["bwt"], report["forgetting"]) == (s.acc, s.bwt, s.forgetting)
    store.delete_version("m", made[4].version)  # an ancestor deleted: what is known is still reported
    partial = client.get("/v1/models/m/metrics").json()
    assert partial["history"] == "partial replay" and partial["acc"] == pytest.approx(s.acc)
    assert partial["bwt"] is None and partial["forgetting"] is None


def test_a_model_without_a_live_version_has_an_empty_report(tmp_path: Path, app_at: Callable[..., TestClient]) -> None:
    new_model(LocalStore(tmp_path / "store"))
    report = app_at(tmp_path / "store").get("/v1/models/m/metrics").json()
    assert report["live_version"] is None and report["matrix"] == {"rows": [], "columns": [], "values": []}
    assert report["acc"] is None and report["experiences"] == 0


@pytest.mark.parametrize(
    "query",
    ["window=0", "window=-1", "window=101", f"window={10**30}", "window=abc", "window=1.5", "window=", "full=maybe"],
)
def test_hostile_report_parameters_are_a_422(tmp_path: Path, app_at: Callable[..., TestClient], query: str) -> None:
    filled(tmp_path / "store", list(steps(3, width=10)))
    client = app_at(tmp_path / "store")
    answer = client.get(f"/v1/models/m/metrics?{query}")
    assert answer.status_code == 422, answer.text
    assert query.split("=")[0] in answer.text
    assert client.get("/v1/models/m/metrics").status_code == 200


def test_a_page_of_versions_stays_small_however_long_the_history(
    tmp_path: Path, app_at: Callable[..., TestClient]
) -> None:
    made = list(steps(1000, width=10, opener_share=1.0))
    filled(tmp_path / "store", made[-50:])  # the newest 50 versions, each measured on up to 1,000 experiences
    client = app_at(tmp_path / "store")
    answer = client.get("/v1/models/m/versions")
    assert answer.status_code == 200, answer.text
    assert len(answer.content) < 100_000
    newest = answer.json()["versions"][0]["metrics"]
    assert list(newest["experience_accuracy"]) == [str(v) for v in range(990, 1000)]
    assert newest["experiences_measured"] > 10 and "history" not in newest
