"""A long history through the API: paginated versions and updates, pins, version retention after updates, and the
model summary's count from the store's counters."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient

from registry import Store, UpdateRecord, VersionRecord
from registry import tensors as st
from tests.service.conftest import blobs, create, post_samples, trained, wait_update

KEYS = {"t" * 20: "train", "a" * 20: "admin"}
ADMIN = {"Authorization": f"Bearer {'a' * 20}"}


def store_of(client: TestClient) -> Store:
    store: Store = client.app.state.runtime.store  # type: ignore[attr-defined]
    return store


def commit(store: Store, n: int) -> list[int]:
    meta = VersionRecord(model="m", version=0, parent=None, spec={"classes": ["a"]}, learner={}, method="auto")
    return [store.commit_version(meta, st.dumps({}), st.dumps({})).version for _ in range(n)]


def every_page(client: TestClient, path: str, key: str, limit: int) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": limit, **({"cursor": cursor} if cursor else {})}
        answer = client.get(path, params=params)
        assert answer.status_code == 200, answer.text
        records += answer.json()[key]
        cursor = answer.json()["next_cursor"]
        if cursor is None:
            return records


def test_versions_and_updates_come_in_pages_each_record_once_while_new_ones_arrive(client: TestClient) -> None:
    create(client)
    store = store_of(client)
    old_versions = set(commit(store, 23))
    for i in range(17):
        store.create_update(UpdateRecord(update_id=f"old{i}", model="m", method="auto", status="succeeded"))
    stop = threading.Event()

    def writer() -> None:  # versions committed and updates created while the client pages
        i = 0
        while not stop.is_set():
            commit(store, 1)
            store.create_update(UpdateRecord(update_id=f"new{i}", model="m", method="auto", status="succeeded"))
            i += 1

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        versions = [v["version"] for v in every_page(client, "/v1/models/m/versions", "versions", 4)]
        updates = [u["update_id"] for u in every_page(client, "/v1/models/m/updates", "updates", 3)]
    finally:
        stop.set()
        thread.join()
    assert versions == sorted(versions, reverse=True) and len(set(versions)) == len(versions)
    assert old_versions <= set(versions)
    assert len(set(updates)) == len(updates) and {f"old{i}" for i in range(17)} <= set(updates)
    count = store.version_counts("m").count
    first = client.get("/v1/models/m/versions").json()  # the default page: 20
    assert len(first["versions"]) == min(20, count) and (first["next_cursor"] is None) == (count <= 20)
    assert client.get("/v1/models/m").json()["versions"] == count == len(store.list_versions("m"))
    assert client.get("/v1/models/nope/versions").status_code == 404
    assert client.get("/v1/models/nope/updates").status_code == 404


@pytest.mark.parametrize("path", ["/v1/models/m/versions", "/v1/models/m/updates"])
@pytest.mark.parametrize(
    ("query", "field"),
    [
        ({"limit": 0}, "limit"),
        ({"limit": -1}, "limit"),
        ({"limit": 501}, "limit"),
        ({"limit": 10**30}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"cursor": "0"}, "cursor"),
        ({"cursor": "-3"}, "cursor"),
        ({"cursor": "007"}, "cursor"),
        ({"cursor": "1e3"}, "cursor"),
        ({"cursor": "abc"}, "cursor"),
        ({"cursor": "../../etc"}, "cursor"),
        ({"cursor": str(2**63)}, "cursor"),
        ({"cursor": "9" * 65}, "cursor"),
        ({"cursor": ""}, "cursor"),
    ],
)
def test_hostile_page_parameters_are_refused(client: TestClient, path: str, query: dict[str, Any], field: str) -> None:
    create(client)
    answer = client.get(path, params=query)
    assert answer.status_code == 422, answer.text
    assert answer.json()["field"] == field and field in answer.json()["detail"]


def test_pins_need_admin_and_survive_retention(
    make_client: Callable[..., TestClient], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="cl.audit")
    client = make_client(api_keys=KEYS)
    assert client.post("/v1/models", json={"name": "m", "architecture": "mlp", "input_shape": [8]}, headers=ADMIN)
    store = store_of(client)
    commit(store, 4)
    train = {"Authorization": f"Bearer {'t' * 20}"}
    assert client.post("/v1/models/m/versions/2/pin", headers=train).status_code == 403
    pinned = client.post("/v1/models/m/versions/2/pin", headers=ADMIN)
    assert pinned.status_code == 200 and pinned.json()["pinned"] and pinned.json()["version"] == 2
    assert client.post("/v1/models/m/versions/2/pin", headers=ADMIN).json()["pinned"]  # idempotent
    assert client.get("/v1/models/m/versions/2", headers=train).json()["pinned"]
    for version in ("0", "-1", str(2**63), "1.5", "two", "99999999999999999999999"):
        answer = client.post(f"/v1/models/m/versions/{version}/pin", headers=ADMIN)
        assert answer.status_code == 422, (version, answer.text)
    assert client.post("/v1/models/m/versions/9/pin", headers=ADMIN).status_code == 404
    assert client.delete("/v1/models/m/versions/9/pin", headers=ADMIN).status_code == 404
    assert client.post("/v1/models/nope/versions/1/pin", headers=ADMIN).status_code == 404
    from worker.retention import VersionRetention, prune_versions

    assert prune_versions(store, "m", VersionRetention(0, 1)) == [1, 3]  # 2 pinned, 4 the newest candidate
    assert client.get("/v1/models/m", headers=train).json()["versions"] == 2
    unpinned = client.delete("/v1/models/m/versions/2/pin", headers=ADMIN)
    assert unpinned.status_code == 200 and not unpinned.json()["pinned"]
    assert prune_versions(store, "m", VersionRetention(0, 1)) == [2]
    assert client.get("/v1/models/m", headers=train).json()["versions"] == 1
    events = [json.loads(r.getMessage()) for r in caplog.records if r.name == "cl.audit"]
    changes = [(e["event"], e.get("version"), e.get("versions")) for e in events if "version" in e["event"]]
    assert changes == [
        ("version.pinned", 2, None),
        ("version.pinned", 2, None),
        ("versions.pruned", None, [1, 3]),
        ("version.unpinned", 2, None),
        ("versions.pruned", None, [2]),
    ]
    assert all(e["actor"] != "a" * 20 for e in events)  # the key's name, never the key


def test_updates_keep_the_rollback_window_and_roll_back_within_it(make_client: Callable[..., TestClient]) -> None:
    client = make_client(keep_promoted=2, keep_candidates=0)
    trained(client)
    for seed in (1, 2):
        x, y = blobs(["a", "b", "c"], 15, seed=seed)
        answer = post_samples(client, "m", x, y)
        update_id = answer["update_id"] or client.post("/v1/models/m/updates", json={}).json()["update_id"]
        status = wait_update(client, "m", update_id)
        assert status["status"] == "succeeded", status
    listed = client.get("/v1/models/m/versions").json()
    assert [v["version"] for v in listed["versions"]] == [3, 2] and listed["next_cursor"] is None
    assert client.get("/v1/models/m").json()["versions"] == 2
    assert client.post("/v1/models/m/versions/1/promote").status_code == 404  # outside the window: deleted
    rollback = client.post("/v1/models/m/versions/2/promote")
    assert rollback.status_code == 200 and rollback.json()["previous"] == 3
    probe = [blobs(["a"], 1, seed=9)[0][0]]
    assert client.post("/v1/models/m/predict", json={"inputs": probe}).json()["version"] == 2
    report = client.get("/v1/models/m/metrics")
    assert report.status_code == 200 and report.json()["live_version"] == 2  # its ancestor 1 is gone


def test_clctl_pages_versions_and_updates_and_pins(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from service import clctl
    from service.client import Client

    monkeypatch.setattr(clctl, "client", lambda: Client(http=client))
    create(client)
    store = store_of(client)
    commit(store, 5)
    for i in range(3):
        store.create_update(UpdateRecord(update_id=f"u{i}", model="m", method="auto", status="succeeded"))
    cli = CliRunner()
    page = cli.invoke(clctl.app, ["versions", "m", "--limit", "2"])
    assert page.exit_code == 0, page.output
    assert "clctl versions m --cursor 4 (or --all)" in page.output
    rest = cli.invoke(clctl.app, ["versions", "m", "--cursor", "4"])
    assert rest.exit_code == 0 and "--cursor" not in rest.output
    api = Client(http=client)
    assert [v["version"] for v in api.versions("m")] == [1, 2, 3, 4, 5]  # every page, oldest first
    assert [u["update_id"] for u in api.updates("m")] == ["u0", "u1", "u2"]
    updates = cli.invoke(clctl.app, ["updates", "m", "--limit", "1"])
    assert updates.exit_code == 0 and "u2" in updates.output and "clctl updates m --cursor" in updates.output
    assert "u0" in cli.invoke(clctl.app, ["updates", "m", "--all"]).output
    pinned = cli.invoke(clctl.app, ["pin", "m", "3"])
    assert pinned.exit_code == 0 and "version 3 is pinned" in pinned.output
    assert [v["pinned"] for v in api.versions_page("m", limit=3)["versions"]] == [False, False, True]
    unpinned = cli.invoke(clctl.app, ["pin", "m", "3", "--unpin"])
    assert unpinned.exit_code == 0 and "version 3 is not pinned" in unpinned.output
    for args, expected in (
        (["pin", "m", "42"], "404"),
        (["pin", "m", "0"], "422"),
        (["versions", "m", "--cursor", "x"], "invalid cursor"),
        (["updates", "nope"], "404"),
    ):
        result = cli.invoke(clctl.app, args)
        lines = result.output.strip().splitlines()
        assert result.exit_code == 1 and len(lines) == 1 and lines[0].startswith("error: "), result.output
        assert expected in result.output, (args, result.output)
