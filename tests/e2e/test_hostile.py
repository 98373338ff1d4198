"""Hostile input against one real `clserve` process: an archive whose manifest names a path outside the data
folder, and secrets in query strings, which must never reach its log."""

from __future__ import annotations

import httpx
import pytest

from tests.e2e.conftest import clserve
from tests.service.test_hostile import tree, with_manifest


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_a_real_clserve_refuses_traversing_imports_and_logs_no_query_strings(tmp_path) -> None:  # type: ignore[no-untyped-def]
    folder = tmp_path / "folder"  # the data folder and, beside it, the victim
    victim = folder / "victim"
    victim.mkdir(parents=True)
    (victim / "precious.txt").write_text("do not delete")
    log = tmp_path / "clserve.log"
    model = {"name": "m", "architecture": "mlp", "input_shape": [4], "options": {"hidden": [8]}}
    with clserve(folder / "data", log=log) as url, httpx.Client(base_url=url, timeout=30) as client:
        assert client.post("/v1/models", json=model).status_code == 201
        archive = client.get("/v1/models/m/export").content
        before = tree(folder)
        for name in ("../../victim", str(victim)):
            bad = with_manifest(archive, lambda m, name=name: m["model"].__setitem__("name", name))  # type: ignore[misc]
            answer = client.post("/v1/models/import", content=bad, headers={"Content-Type": "application/zip"})
            assert answer.status_code == 422 and "model name" in answer.json()["detail"], answer.text
        assert tree(folder) == before
        assert [m["name"] for m in client.get("/v1/models").json()["models"]] == ["m"]

        refused = client.get("/v1/models", params={"API_KEY": "SECRET-KEY-IN-URL"})
        assert refused.status_code == 400 and "Authorization" in refused.json()["detail"]
        assert client.get("/v1/models", params={"probe": "QUERY-MARK"}).status_code == 200
    text = log.read_text()
    assert '"GET /v1/models HTTP/1.1" 400' in text and '"GET /v1/models HTTP/1.1" 200' in text  # lines are logged
    assert "SECRET-KEY-IN-URL" not in text and "QUERY-MARK" not in text and "?" not in text.split("Uvicorn")[-1]
