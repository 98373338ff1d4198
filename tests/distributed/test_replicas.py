"""Two API replicas and a Celery worker around one Redis: updates run on the worker, every replica serves the
result, promotions and rollbacks on any replica reach all, updates of one model queue, different models don't."""

from __future__ import annotations

import re
import threading

import httpx

from service.ui import CONTENT_SECURITY_POLICY
from tests.distributed.conftest import (
    SWAP_BOUND_S,
    Cluster,
    create_model,
    metrics,
    post_samples,
    predict,
    request_update,
    served,
    update_status,
    wait_served,
    wait_update,
)
from tests.distributed.processes import wait_for


def test_an_update_posted_to_one_replica_is_served_by_the_other_and_rollback_reaches_both(cluster: Cluster) -> None:
    a, b = cluster.a, cluster.b
    create_model(a, "m")
    post_samples(a, "m", ["a", "b", "c"])
    first = request_update(a, "m")
    progress = []

    def seen_on_b() -> bool:
        status = update_status(b, "m", first)  # any replica reports the worker's progress
        progress.append(status["progress"])
        return status["status"] not in ("queued", "running")

    wait_for(seen_on_b, timeout=120, what="first update", interval=0.05)
    status = update_status(b, "m", first)
    assert status["status"] == "succeeded" and status["version"] == 1, status
    assert any(0 < p < 1 for p in progress) and progress[-1] == 1.0
    wait_served(b, "m", 1)
    wait_served(a, "m", 1)
    assert predict(b, "m").json()["version"] == 1

    post_samples(b, "m", ["d"], seed=1)  # a new class, posted to the other replica
    second = request_update(b, "m")
    assert wait_update(a, "m", second)["version"] == 2
    for replica in (a, b):
        assert wait_served(replica, "m", 2) < SWAP_BOUND_S  # pub/sub: the pointer re-read is 60 s apart here
        assert "d" in _served_classes(replica)  # the grown head, not only the number

    rollback = httpx.post(f"{b}/v1/models/m/versions/1/promote", timeout=30)
    assert rollback.status_code == 200, rollback.text
    wait_served(a, "m", 1)
    assert predict(a, "m").json()["version"] == 1
    assert cluster.store.live_version("m") == 1


def _served_classes(url: str) -> set[str]:
    x = [[0.0] * 8]
    response = httpx.post(f"{url}/v1/models/m/predict?top_k=10", json={"inputs": x}, timeout=10)
    return {str(entry["label"]) for entry in response.json()["predictions"][0]["top_k"]}


def test_update_metrics_come_from_the_worker_only(cluster: Cluster) -> None:
    if cluster.store.live_version("m") is None:  # run alone: make an update to measure
        test_an_update_posted_to_one_replica_is_served_by_the_other_and_rollback_reaches_both(cluster)
    worker = metrics(f"http://127.0.0.1:{cluster.metrics_port}")
    assert re.search(r'cl_updates_total\{model="m",outcome="succeeded"\} [1-9]', worker), worker
    assert re.search(r'cl_update_duration_seconds_count\{model="m"\} [1-9]', worker), worker
    assert "cl_update_progress_ratio" in worker
    for replica in (cluster.a, cluster.b):
        exported = metrics(replica)
        assert "cl_http_requests_total" in exported
        for name in ("cl_updates_total", "cl_update_duration_seconds", "cl_updates_running"):
            assert name not in exported, f"{replica} exports {name}"


def test_updates_of_one_model_run_one_after_the_other_and_of_two_models_in_parallel(cluster: Cluster) -> None:
    a, b = cluster.a, cluster.b
    for name in ("p", "q"):
        create_model(a, name)
    post_samples(a, "p", ["a", "b"], seed=2)
    post_samples(b, "p", ["a", "b"], seed=3)  # each update takes one batch (CL_MAX_SAMPLES_PER_UPDATE=1)
    post_samples(a, "q", ["a", "b"], seed=4)
    ids = [request_update(a, "p"), request_update(b, "p"), request_update(a, "q")]
    p1, p2, q1 = (wait_update(a, name, i) for name, i in zip(("p", "p", "q"), ids, strict=True))
    assert [s["status"] for s in (p1, p2, q1)] == ["succeeded"] * 3, (p1, p2, q1)
    first, second = sorted((p1, p2), key=lambda s: s["started_at"])
    assert first["finished_at"] <= second["started_at"], "two updates of one model overlapped"
    assert sorted([p1["version"], p2["version"]]) == [1, 2]
    overlaps = [s for s in (p1, p2) if s["started_at"] < q1["finished_at"] and q1["started_at"] < s["finished_at"]]
    assert overlaps, f"the updates of p and q never ran at the same time: {(p1, p2, q1)}"
    assert served(a, "q") == 1 or wait_served(a, "q", 1) >= 0


def test_two_replicas_asking_at_once_run_one_update_and_skip_the_other(cluster: Cluster) -> None:
    """Failure 3 of issue 12: two replicas asked for an update of one batch at the same moment; the second used to
    fail "no pending samples" (and raise UpdatesFailing); it is skipped now."""
    create_model(cluster.a, "race", ("a", "b", "c"))
    post_samples(cluster.a, "race", ["a", "b", "c"], n=10)  # one batch: whichever update runs first takes it
    barrier = threading.Barrier(2)
    accepted: list[str] = []

    def ask(replica: str) -> None:
        barrier.wait()
        accepted.append(request_update(replica, "race"))

    threads = [threading.Thread(target=ask, args=(replica,)) for replica in (cluster.a, cluster.b)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(accepted)) == 2
    ends = sorted(wait_update(cluster.b, "race", update_id)["status"] for update_id in accepted)
    assert ends == ["skipped", "succeeded"], ends
    worker = wait_for(
        lambda: (
            (text := metrics(f"http://127.0.0.1:{cluster.metrics_port}"))
            and 'cl_updates_total{model="race",outcome="skipped"}' in text
            and text
        ),
        timeout=30,
        what="the skipped update in the worker's metrics",
    )
    assert 'model="race",outcome="failed"' not in worker


def test_every_replica_serves_the_console_under_its_policy(cluster: Cluster) -> None:
    """Distributed mode serves `/ui` like the embedded default: each API replica, the same page and assets."""
    pages = [httpx.get(f"{replica}/ui", timeout=10) for replica in (cluster.a, cluster.b)]
    assert [p.status_code for p in pages] == [200, 200] and pages[0].text == pages[1].text
    for replica in (cluster.a, cluster.b):
        script = httpx.get(f"{replica}/ui/static/app.js", timeout=10)
        assert script.status_code == 200 and script.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
