"""Hostile input against the in-process app: every answer is a 4xx that changes nothing, never a 5xx.

Traversing names in an imported archive, ids that overflow the store's range, integers beyond float32, API keys in
the URL, huge values echoed in errors, compressed bodies.
"""

from __future__ import annotations

import io
import json
import logging
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.service.conftest import blobs, create, post_samples, trained, wait_update

ECHO_LIMIT = 200


def tree(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` with its content."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def with_manifest(archive: bytes, change: Callable[[dict[str, Any]], None]) -> bytes:
    """The archive with its manifest.json changed by ``change``."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(archive)) as source, zipfile.ZipFile(out, "w") as target:
        for info in source.infolist():
            data = source.read(info.filename)
            if info.filename == "manifest.json":
                manifest = json.loads(data)
                change(manifest)
                data = json.dumps(manifest).encode()
            target.writestr(info.filename, data)
    return out.getvalue()


# -- 6: names from an imported archive --------------------------------------------------------------------------


def traversals(tmp_path: Path) -> list[str]:
    return ["../../victim", "../victim", str(tmp_path / "victim"), "..", "a/b", "Digits", "x" * 65, "a{b}", ""]


def test_an_archive_naming_a_path_outside_the_store_is_refused(
    app_at: Callable[..., TestClient], tmp_path: Path
) -> None:
    client = app_at(tmp_path / "data")
    trained(client)
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "precious.txt").write_text("do not delete")
    archive = client.get("/v1/models/m/export").content
    before = tree(tmp_path)
    for name in traversals(tmp_path):
        bad = with_manifest(archive, lambda m, name=name: m["model"].__setitem__("name", name))  # type: ignore[misc]
        answer = client.post("/v1/models/import", content=bad, headers={"Content-Type": "application/zip"})
        assert answer.status_code == 422, (name, answer.text)
        assert "model name" in answer.json()["detail"]
    assert tree(tmp_path) == before
    assert [m["name"] for m in client.get("/v1/models").json()["models"]] == ["m"]


@pytest.mark.parametrize(
    "change",
    [
        lambda m: m.__setitem__("model", "not an object"),
        lambda m: m.pop("versions"),
        lambda m: m["versions"][0].__setitem__("version", "../../x"),
        lambda m: m["versions"][0].__setitem__("version", 2**70),
        lambda m: m.__setitem__("live_version", "1; rm"),
        lambda m: m["experiences"][0].__setitem__("version", -3),
    ],
)
def test_a_malformed_manifest_is_a_422_and_leaves_nothing(client: TestClient, change: Callable[..., None]) -> None:
    trained(client)
    archive = client.get("/v1/models/m/export").content
    client.delete("/v1/models/m")
    bad = with_manifest(archive, change)
    answer = client.post("/v1/models/import", content=bad, headers={"Content-Type": "application/zip"})
    assert answer.status_code == 422, answer.text
    assert client.get("/v1/models").json()["models"] == []


@pytest.mark.parametrize(
    "path",
    [
        "/v1/models/m/updates/" + "u" * 65,
        "/v1/models/m/updates/a.b",
        "/v1/models/m/versions/0",
        "/v1/models/m/versions/-1",
        "/v1/models/m/versions/99999999999999999999999",
        "/v1/models/M",
    ],
)
def test_ids_in_paths_are_validated(client: TestClient, path: str) -> None:
    create(client)
    answer = client.get(path)
    assert answer.status_code == 422, answer.text


# -- 7: deletion ids ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "ids",
    [
        ["99999999999999999999999"],
        ["9223372036854775808"],
        ["²"],
        ["-1"],
        ["0"],
        ["007"],
        ["1e3"],
        [7],
        [None],
        [["1"]],
        ["1" * 100_000],
        ["1"] * 100_001,
    ],
    ids=lambda ids: repr(ids)[:30],
)
def test_bad_deletion_ids_are_a_422_and_write_nothing(client: TestClient, ids: list[Any]) -> None:
    trained(client)
    posted = post_samples(client, "m", *blobs(["a"], 3, seed=4))
    root = client.app.state.runtime.store.root  # type: ignore[attr-defined]
    before = tree(root)
    answer = client.post("/v1/models/m/samples/delete", json={"ids": [posted["ids"][0], *ids]})
    assert answer.status_code == 422, answer.text
    assert answer.json()["field"] == "ids" and len(answer.text) < 1000
    assert tree(root) == before
    follow = client.post("/v1/models/m/samples/delete", json={"ids": [posted["ids"][0]]})
    assert follow.status_code == 200 and follow.json()["deleted"] == 1


def test_a_store_poisoned_by_the_old_deletion_code_is_repaired_at_start(
    app_at: Callable[..., TestClient], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data = tmp_path / "data"
    client = app_at(data)
    trained(client)  # version 1 holds an exemplar memory: an update forgets tombstoned ids from it
    client.__exit__(None, None, None)
    record = data / "models" / "m" / "deleted.json"
    record.write_text(json.dumps(sorted({3, int("99999999999999999999999")})))  # what the old code wrote
    with caplog.at_level(logging.WARNING):
        client = app_at(data)
    assert "deletion record" in caplog.text
    assert json.loads(record.read_text()) == [3]
    answer = post_samples(client, "m", *blobs(["a", "b", "d"], 30, seed=7))
    status = wait_update(client, "m", answer["update_id"])
    assert status["status"] in ("succeeded", "rejected"), status
    assert client.post("/v1/models/m/samples/delete", json={"ids": ["4"]}).status_code == 200


# -- 8: numbers beyond float32 -------------------------------------------------------------------------------------

HUGE = "1" * 400


@pytest.mark.parametrize("value", [HUGE, "-" + HUGE, "1e39", "-3.5e38"])
def test_numbers_beyond_float32_are_a_422(client: TestClient, value: str) -> None:
    trained(client)
    row = f"[{value}, 0, 0, 0, 0, 0, 0, 0]"
    headers = {"Content-Type": "application/json"}
    predict = client.post("/v1/models/m/predict", content=f'{{"inputs": [{row}]}}', headers=headers)
    assert predict.status_code == 422, predict.text
    assert predict.json()["field"] == "inputs" and "float32" in predict.json()["detail"]
    pending = client.get("/v1/models/m").json()["pending"]
    body = f'{{"samples": [{{"input": [0, 0, 0, 0, 0, 0, 0, 0], "label": "a"}}, {{"input": {row}, "label": "a"}}]}}'
    samples = client.post("/v1/models/m/samples", content=body, headers=headers)
    assert samples.status_code == 422, samples.text
    assert samples.json()["index"] == 1 and "float32" in samples.json()["detail"]
    assert client.get("/v1/models/m").json()["pending"] == pending


def test_a_huge_integer_label_is_a_422(client: TestClient) -> None:
    create(client)
    body = f'{{"samples": [{{"input": [0, 0, 0, 0, 0, 0, 0, 0], "label": {HUGE}}}]}}'
    answer = client.post("/v1/models/m/samples", content=body, headers={"Content-Type": "application/json"})
    assert answer.status_code == 422 and answer.json()["field"] == "label", answer.text
    assert len(answer.text) < 1000


# -- 9: keys in the URL, echoed values, compressed bodies ------------------------------------------------------------


@pytest.mark.parametrize("param", ["api_key", "API_KEY", "Api_Key", "apikey", "access_token"])
def test_an_api_key_in_the_url_is_refused(make_client: Callable[..., TestClient], param: str) -> None:
    client = make_client(api_keys={"k" * 20: "admin"})
    for method, path in (("GET", "/v1/models"), ("POST", "/v1/models/m/predict"), ("GET", "/healthz")):
        answer = client.request(method, f"{path}?x=1&{param}={'k' * 20}", json={"inputs": [[0.0]]})
        assert answer.status_code == 400, answer.text
        assert "Authorization" in answer.json()["detail"] and "k" * 20 not in answer.text
    assert client.get("/v1/models", headers={"Authorization": f"Bearer {'k' * 20}"}).status_code == 200


def test_huge_values_are_echoed_at_most_200_characters(client: TestClient) -> None:
    create(client)
    huge = "x" * 1_000_000
    attempts = [
        ("POST", "/v1/models/m/samples", {"samples": [{"input": [0.0] * 8, "label": huge}]}),
        ("POST", "/v1/models/m/samples", {"samples": [{"input": [0.0] * 8}], huge: 1}),
        ("POST", "/v1/models/m/predict", {"inputs": [[0.0] * 8], huge: 1}),
        ("POST", "/v1/models/m/updates", {"method": huge}),
        ("POST", "/v1/models/m/updates", {"method": "ewc+" + huge}),
        ("POST", "/v1/models", {"name": "n", "architecture": huge, "input_shape": [8]}),
        ("POST", "/v1/models", {"name": "n", "architecture": "mlp", "input_shape": [8], "method": huge}),
        ("POST", "/v1/models", {"name": "n", "architecture": "mlp", "input_shape": [8], "options": {huge: 1}}),
        ("POST", "/v1/models", {"name": "n", "architecture": "mlp", "input_shape": [8], "classes": [huge]}),
        ("POST", "/v1/models", {"name": huge, "architecture": "mlp", "input_shape": [8]}),
        ("POST", "/v1/models/m/samples/delete", {"ids": [huge]}),
    ]
    for method, path, body in attempts:
        answer = client.request(method, path, json=body)
        assert answer.status_code == 422, (path, answer.text[:300])
        assert "x" * (ECHO_LIMIT + 1) not in answer.text, (path, answer.text[:300])
        assert len(answer.text) < 1200, (path, answer.text[:300])


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "br", "GZIP", "identity, gzip"])
def test_compressed_bodies_are_a_415(client: TestClient, encoding: str) -> None:
    import gzip

    create(client)
    body = gzip.compress(json.dumps({"samples": [{"input": [0.0] * 8, "label": "a"}]}).encode())
    headers = {"Content-Type": "application/json", "Content-Encoding": encoding}
    answer = client.post("/v1/models/m/samples", content=body, headers=headers)
    assert answer.status_code == 415, answer.text
    assert "Content-Encoding" in answer.json()["detail"] and answer.json()["field"] == "content-encoding"
    assert client.get("/v1/models/m").json()["pending"]["labeled"] == 0
    plain = {"Content-Type": "application/json", "Content-Encoding": "identity"}
    ok = client.post("/v1/models/m/samples", content=gzip.decompress(body), headers=plain)
    assert ok.status_code == 202, ok.text
