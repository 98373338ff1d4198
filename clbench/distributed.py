"""`clbench distributed`: what the distributed mode costs, measured on loopback with its own redis-server.

* snapshot write and read (a version's weights plus one importance tensor per parameter, as online EWC keeps):
  seconds and bytes for the protocol MLP, the small CNN and a 25M-parameter MLP;
* the time from an update's commit to every API replica serving the new version (commit, promote, pub/sub,
  each replica loading it from Redis), with the replicas' pointer re-read set far apart so that only the
  notification can explain a fast swap;
* update throughput with 1 and 2 Celery worker processes (one pool process each).

It starts and stops its own redis-server (never the system one), `clserve` replicas and `celery` workers;
every wait is bounded.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import redis
import torch

from cl_core.data import load_mnist5k
from cl_core.models import ModelSpec, build_model
from clbench.load import serve
from registry import ModelRecord, UpdateRecord, VersionRecord
from registry import tensors as st
from registry.redis_store import RedisStore
from service.launcher import free_port
from worker.celery_executor import CeleryExecutor
from worker.config import WorkerSettings

CLASSES = [str(d) for d in range(10)]
SNAPSHOT_MODELS: dict[str, ModelSpec] = {
    "protocol MLP 784-400-400-10": ModelSpec("mlp", (784,), CLASSES, {"hidden": [400, 400]}),
    "small CNN (1,28,28)": ModelSpec("cnn", (1, 28, 28), CLASSES, {}),
    "MLP 784-4096-4096-1280-10 (25M)": ModelSpec("mlp", (784,), CLASSES, {"hidden": [4096, 4096, 1280]}),
}
Step = Callable[[str], None]


@dataclass
class SnapshotRow:
    model: str
    parameters: int
    bytes: int
    chunks: int
    write_s: float
    read_s: float

    @property
    def write_mb_s(self) -> float:
        return self.bytes / self.write_s / 1e6 if self.write_s else 0.0


@dataclass
class SwapRow:
    replicas: int
    repeats: int
    commit_s: float  # median time of commit_version
    all_serving_s: float  # median time from the commit's start until every replica serves it
    slowest_s: float  # the slowest repeat


@dataclass
class ThroughputRow:
    workers: int
    updates: int
    seconds: float

    @property
    def per_minute(self) -> float:
        return 60 * self.updates / self.seconds if self.seconds else 0.0


@dataclass
class DistributedReport:
    snapshots: list[SnapshotRow] = field(default_factory=list)
    swaps: list[SwapRow] = field(default_factory=list)
    throughput: list[ThroughputRow] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        for row, snapshot in zip(data["snapshots"], self.snapshots, strict=True):
            row["write_mb_s"] = snapshot.write_mb_s
        for row, measured in zip(data["throughput"], self.throughput, strict=True):
            row["per_minute"] = measured.per_minute
        return data


# -- processes ------------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def redis_server(directory: Path) -> Iterator[str]:
    """A redis-server of our own on a free loopback port (no persistence); yields its URL."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
    port = free_port()
    command = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    command += ["--dir", str(directory), "--maxmemory-policy", "noeviction", "--logfile", str(directory / "redis.log")]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    try:
        _wait(lambda: _pings(url), 15, "redis-server", process)
        yield url
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)


def _pings(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=1).ping())
    except redis.RedisError:
        return False


def _wait(condition: Callable[[], bool], timeout: float, what: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} was not ready within {timeout} s")
        time.sleep(0.05)


@contextlib.contextmanager
def celery_workers(url: str, count: int, directory: Path, env: dict[str, str]) -> Iterator[None]:
    """``count`` worker processes (`celery -A worker.app worker -Q updates --concurrency 1`), stopped afterwards."""
    processes = []
    base = {k: v for k, v in os.environ.items() if not k.startswith("CL_")}
    base.update({"CL_REDIS_URL": url, "CL_WORKER_METRICS_PORT": "0", "OMP_NUM_THREADS": "1", **env})
    try:
        for i in range(count):
            log = directory / f"worker{i}.log"
            command = [sys.executable, "-m", "celery", "-A", "worker.app", "worker", "-Q", "updates"]
            command += ["--concurrency", "1", "--hostname", f"bench{i}@%h", "--loglevel", "INFO"]
            command += ["--without-gossip", "--without-mingle", "--without-heartbeat"]
            with log.open("ab") as out:
                processes.append(
                    (
                        subprocess.Popen(
                            command, env=base, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
                        ),
                        log,
                    )
                )
        for process, log in processes:
            _wait(_logged(log, b" ready."), 120, f"celery worker ({log})", process)
        yield
    finally:
        for process, _ in processes:
            process.send_signal(signal.SIGTERM)
        for process, _ in processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def _logged(log: Path, text: bytes) -> Callable[[], bool]:
    return lambda: text in log.read_bytes()


# -- measurements ---------------------------------------------------------------------------------------------------


def _version(name: str, spec: ModelSpec) -> VersionRecord:
    return VersionRecord(model=name, version=0, parent=None, spec=spec.to_json(), learner={}, method="import")


def _snapshot(spec: ModelSpec, seed: int) -> tuple[bytes, bytes, int]:
    model = build_model(spec, seed=seed)
    weights = st.dumps(model.state_dict())
    state = st.dumps({f"method.importance.{k}": torch.rand_like(p) for k, p in model.named_parameters()})
    return weights, state, sum(p.numel() for p in model.parameters())


def measure_snapshots(url: str, repeats: int, large: bool, on_step: Step) -> list[SnapshotRow]:
    store = RedisStore(url)
    rows = []
    try:
        for i, (label, spec) in enumerate(SNAPSHOT_MODELS.items()):
            if "25M" in label and not large:
                continue
            on_step(f"snapshots: {label}")
            name = f"snapshot{i}"
            store.create_model(ModelRecord(name, spec.architecture, list(spec.input_shape), CLASSES, spec.options))
            weights, state, parameters = _snapshot(spec, seed=i)
            writes, reads = [], []
            for _ in range(repeats):
                started = time.perf_counter()
                version = store.commit_version(_version(name, spec), weights, state).version
                writes.append(time.perf_counter() - started)
                started = time.perf_counter()
                got = store.read_weights(name, version), store.read_state(name, version)
                reads.append(time.perf_counter() - started)
                assert got == (weights, state), "a snapshot did not read back exactly"
                store.delete_version(name, version)  # bounded memory: one snapshot at a time
            size = len(weights) + len(state)
            chunks = sum(-(-len(b) // store.chunk_bytes) for b in (weights, state) if len(b) > store.chunk_bytes)
            rows.append(
                SnapshotRow(label, parameters, size, chunks, statistics.median(writes), statistics.median(reads))
            )
            store.delete_model(name)
    finally:
        store.close()
    return rows


def measure_swaps(url: str, replicas: int, repeats: int, directory: Path, on_step: Step) -> SwapRow:
    """Commit and promote a protocol-MLP version; time until every replica's /readyz names it."""
    spec = SNAPSHOT_MODELS["protocol MLP 784-400-400-10"]
    store = RedisStore(url)
    name = "swap"
    store.create_model(ModelRecord(name, spec.architecture, list(spec.input_shape), CLASSES, spec.options))
    weights, state, _ = _snapshot(spec, seed=0)
    store.promote(name, store.commit_version(_version(name, spec), weights, state).version, by="bench")
    env = {"CL_REDIS_URL": url, "CL_RELOAD_INTERVAL_S": "3600", "CL_TORCH_THREADS": "1", "OMP_NUM_THREADS": "1"}
    commits, totals = [], []
    with contextlib.ExitStack() as stack:
        urls = []
        for i in range(replicas):
            on_step(f"swaps: starting replica {i + 1}/{replicas}")
            urls.append(stack.enter_context(serve(directory / f"replica{i}", env)))
        client = stack.enter_context(httpx.Client(timeout=10))
        for r in range(repeats):
            on_step(f"swaps: {r + 1}/{repeats}")
            started = time.perf_counter()
            version = store.commit_version(_version(name, spec), weights, state).version
            commits.append(time.perf_counter() - started)
            store.promote(name, version, by="bench")
            waiting = set(urls)
            deadline = time.monotonic() + 30
            while waiting:
                for replica in list(waiting):
                    if client.get(f"{replica}/readyz").json().get("models", {}).get(name) == version:
                        waiting.discard(replica)
                if time.monotonic() > deadline:
                    raise RuntimeError(f"replicas {sorted(waiting)} did not serve version {version} within 30 s")
                time.sleep(0.002)
            totals.append(time.perf_counter() - started)
    store.close()
    return SwapRow(replicas, repeats, statistics.median(commits), statistics.median(totals), max(totals))


def _posted(store: RedisStore, models: int, per_model: int) -> None:
    """``models`` protocol-MLP models, each with ``per_model`` batches of 200 MNIST digits (two classes each)."""
    train = load_mnist5k().train
    spec = SNAPSHOT_MODELS["protocol MLP 784-400-400-10"]
    for m in range(models):
        name = f"throughput{m}"
        store.create_model(ModelRecord(name, spec.architecture, list(spec.input_shape), [], spec.options))
        for b in range(per_model):
            digits = [(2 * (m + b)) % 10, (2 * (m + b) + 1) % 10]
            x = torch.cat([train.inputs[train.labels == d][:100] for d in digits])
            store.append_samples(name, x.reshape(len(x), -1), [str(d) for d in digits for _ in range(100)], 0.2)


def measure_throughput(url: str, workers: int, updates: int, directory: Path, on_step: Step) -> ThroughputRow:
    """``updates`` first updates of as many models, all requested at once; seconds until the last finished."""
    client = redis.Redis.from_url(url)
    client.flushdb()
    env = {"CL_EPOCHS": "10", "CL_TORCH_THREADS": "1", "CL_DEVICE": "cpu", "CL_CELERY_LOCK_RETRY_S": "0.5"}
    settings = WorkerSettings(redis_url=url)
    store = RedisStore(url)
    _posted(store, updates, 1)  # one model per update: this measures parallelism, not one model's queue
    executor = CeleryExecutor(store, settings)
    with celery_workers(url, workers, directory, env):
        on_step(f"throughput: {updates} updates, {workers} worker(s)")
        started = time.perf_counter()
        records = []
        for i in range(updates):
            record = UpdateRecord(update_id=f"bench{i}", model=f"throughput{i}", method="auto")
            store.put_update(record)
            executor.submit(record.model, record.update_id)
            records.append(record)
        deadline = time.monotonic() + 600
        while not all(store.get_update(r.model, r.update_id).finished for r in records):
            if time.monotonic() > deadline:
                raise RuntimeError("updates did not finish within 600 s")
            time.sleep(0.05)
        seconds = time.perf_counter() - started
    outcomes = {r.update_id: store.get_update(r.model, r.update_id).status for r in records}
    failed = {u: status for u, status in outcomes.items() if status not in ("succeeded", "rejected")}  # gate: done
    executor.shutdown()
    store.close()
    if failed:
        raise RuntimeError(f"updates {failed} did not succeed (logs in {directory})")
    return ThroughputRow(workers, updates, seconds)


def measure(
    *, repeats: int, large: bool, replicas: int, swaps: int, updates: int, on_step: Step = lambda _: None
) -> DistributedReport:
    report = DistributedReport()
    with tempfile.TemporaryDirectory(prefix="clbench-distributed-") as tmp:
        directory = Path(tmp)
        with redis_server(directory) as url:
            report.snapshots = measure_snapshots(url, repeats, large, on_step)
            report.swaps.append(measure_swaps(url, replicas, swaps, directory, on_step))
            for workers in (1, 2):
                report.throughput.append(measure_throughput(url, workers, updates, directory, on_step))
    return report
