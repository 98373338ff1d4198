"""Garbage collection tuned for serving: the start-up heap frozen out of the collector's view, once started."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.gc_tuning import freeze_heap, tune_for_serving
from service.settings import Settings


@pytest.fixture
def restored_gc() -> Iterator[None]:
    threshold = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)


@pytest.mark.usefixtures("restored_gc")
def test_tuning_freezes_what_is_alive_and_sets_the_young_threshold() -> None:
    alive = [{"n": i} for i in range(1000)]
    gc.unfreeze()
    tune_for_serving(5000)
    assert gc.get_freeze_count() >= len(alive)
    assert gc.get_threshold()[0] == 5000
    assert not any(obj is alive[0] for obj in gc.get_objects())  # frozen: out of the collector's view
    cycle: list[object] = []
    cycle.append(cycle)
    del cycle  # garbage made after the freeze is still collected
    assert gc.collect() >= 1
    assert freeze_heap() == gc.get_freeze_count()


@pytest.mark.usefixtures("restored_gc")
def test_the_app_runs_its_start_hook_once_started(tmp_path: Path) -> None:
    seen: list[bool] = []
    app = create_app(Settings(data_dir=tmp_path), on_started=lambda: seen.append(hasattr(app.state, "runtime")))
    assert seen == []
    with TestClient(app) as client:
        assert seen == [True]
        assert client.get("/healthz").status_code == 200
    assert seen == [True]
