"""`clbench load`: the service under bounded load on loopback.

Starts its own `clserve` processes (embedded store in a temporary directory) and measures, in one run:

* predict throughput, p50/p99 latency and the server's CPU time per request at concurrency 1, 8 and 32,
  micro-batching on and off, with the same input sent as JSON, as an .npy array and as a PNG image, on the
  protocol MLP and on the small CNN, against the raw batched forward pass of the same model as the limit;
* the service's overhead at concurrency 1 over the bare forward pass of the same model;
* requests failed while the live version is swapped 20 times under load, and while updates and promotions run
  during predictions at concurrency 32.

Every load loop is bounded in requests and time and targets 127.0.0.1 only.  The server's CPU time is read from
/proc (Linux): user + system time of the `clserve` process, all its threads, over the measurement.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import socket
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import torch
from PIL import Image

from cl_core.models import ModelSpec, build_model
from registry import tensors
from service.launcher import ClserveProcess, child_env, running_clserve

ARCHITECTURES: dict[str, tuple[list[int], dict[str, Any]]] = {
    "mlp": ([784], {"hidden": [400, 400]}),
    "cnn": ([1, 28, 28], {}),
}


BODIES = ("json", "npy", "png")
PREPROCESSING = {"mode": "L", "size": [28, 28]}  # MNIST-like: 28×28 grey, pixel / 255


@dataclass
class LoadResult:
    architecture: str
    body: str
    batching: bool
    concurrency: int
    requests: int
    failed: int
    seconds: float
    p50_ms: float
    p99_ms: float
    server_cpu_s: float = float("nan")
    client_cpu_s: float = float("nan")  # the load generator's (this process's) CPU time over the measurement

    @property
    def throughput(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def cpu_ms_per_request(self) -> float:
        return 1e3 * self.server_cpu_s / self.requests if self.requests else float("nan")

    @property
    def client_cpu_ms_per_request(self) -> float:
        return 1e3 * self.client_cpu_s / self.requests if self.requests else float("nan")


@dataclass
class LoadReport:
    results: list[LoadResult] = field(default_factory=list)
    overhead: dict[str, float] = field(default_factory=dict)  # architecture → p50 service − bare forward (ms)
    bare_forward_ms: dict[str, float] = field(default_factory=dict)
    batched_ms_per_input: dict[str, float] = field(default_factory=dict)  # forward at batch 32, per input
    swap_failures: dict[str, int] = field(default_factory=dict)
    mixed: dict[str, Any] = field(default_factory=dict)
    gc_tuned: bool = True

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        for row, result in zip(data["results"], self.results, strict=True):
            row["throughput"] = result.throughput
            row["cpu_ms_per_request"] = result.cpu_ms_per_request
            row["client_cpu_ms_per_request"] = result.client_cpu_ms_per_request
        return data

    def forward_limit(self, architecture: str) -> float:
        """Inputs per second of the raw forward pass at batch 32 (one torch thread): what batching can approach."""
        per_input = self.batched_ms_per_input.get(architecture)
        return 1e3 / per_input if per_input else float("nan")


@contextlib.contextmanager
def serve_process(data_dir: Path, env: dict[str, str]) -> Iterator[ClserveProcess]:
    """A `clserve` process on a free loopback port (warnings only in its log, which is discarded), stopped when the
    block ends."""
    with running_clserve(data_dir, args=["--log-level", "warning"], env=child_env(env)) as server:
        yield server


@contextlib.contextmanager
def serve(data_dir: Path, env: dict[str, str]) -> Iterator[str]:
    """`serve_process`, yielding its base URL."""
    with serve_process(data_dir, env) as server:
        yield server.url


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and all its threads so far (Linux /proc; NaN elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime (fields 14 and 15)


def weights_for(architecture: str, seed: int) -> tuple[bytes, torch.nn.Module]:
    shape, options = ARCHITECTURES[architecture]
    model = build_model(ModelSpec(architecture, tuple(shape), [str(i) for i in range(10)], options), seed=seed)
    return tensors.dumps(model.state_dict()), model.eval()


def prepare_model(url: str, architecture: str) -> list[int]:
    """Create a 10-class model that also takes 28×28 grey images and import two weight sets (versions 1 and 2,
    version 2 live)."""
    shape, options = ARCHITECTURES[architecture]
    with httpx.Client(base_url=url, timeout=60) as client:
        client.post(
            "/v1/models",
            json={
                "name": "bench",
                "architecture": architecture,
                "input_shape": shape,
                "options": options,
                "classes": [str(i) for i in range(10)],
                "preprocessing": PREPROCESSING,
            },
        ).raise_for_status()
        versions = []
        for seed in (1, 2):
            data, _ = weights_for(architecture, seed)
            answer = client.put(
                "/v1/models/bench/weights", content=data, headers={"Content-Type": "application/octet-stream"}
            )
            answer.raise_for_status()
            versions.append(int(answer.json()["version"]))
        return versions


def sample_pixels(seed: int = 0) -> np.ndarray:
    """One 28×28 grey image."""
    return np.random.default_rng(seed).integers(0, 256, (28, 28), dtype=np.uint8)


def sample_input(architecture: str, seed: int = 0) -> list[Any]:
    """The image's pixels / 255 shaped for the model, to 3 decimals (as JSON clients commonly round: 0.373, not
    the 17 digits of the float32 nearest to it)."""
    shape, _ = ARCHITECTURES[architecture]
    values: list[Any] = (sample_pixels(seed) / 255).round(3).reshape(shape).tolist()
    return values


@dataclass(frozen=True)
class Body:
    kind: str
    content_type: str
    data: bytes


def bodies_for(architecture: str) -> dict[str, Body]:
    """One input in each form: JSON and .npy carry the same numbers, the PNG the pixels they were made from."""
    example = sample_input(architecture)
    npy, png = io.BytesIO(), io.BytesIO()
    np.save(npy, np.asarray([example], dtype=np.float32))
    Image.fromarray(sample_pixels()).save(png, format="PNG")
    return {
        "json": Body("json", "application/json", json.dumps({"inputs": [example]}).encode()),
        "npy": Body("npy", "application/x-npy", npy.getvalue()),
        "png": Body("png", "image/png", png.getvalue()),
    }


class Connection:
    """One keep-alive HTTP/1.1 connection that sends a request encoded once beforehand and reads the answer with a
    minimal reader (status line, ``Content-Length``, the whole body).

    The client is the instrument and shares the machine's cores with the server: http.client spent about 0.13-0.15
    ms of CPU per request here (message objects, header parsing, buffered files), this about 0.05 ms, so that less
    of the cores goes to measuring.  An answer without ``Content-Length`` (the service always sends one) counts as
    a failure."""

    def __init__(self, address: tuple[str, int], timeout: float = 30) -> None:
        self.address, self.timeout = address, timeout
        self._sock: socket.socket | None = None
        self._buffer = b""

    def exchange(self, request: bytes) -> int:
        """Send ``request``, read the whole answer; its status (OSError or ValueError when the exchange fails)."""
        if self._sock is None:
            self._sock = socket.create_connection(self.address, timeout=self.timeout)
            self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._buffer = b""
        sock = self._sock
        sock.sendall(request)
        buffer = self._buffer
        end = buffer.find(b"\r\n\r\n")
        while end < 0:
            buffer += self._receive(sock)
            end = buffer.find(b"\r\n\r\n")
        head, buffer = buffer[:end].lower(), buffer[end + 4 :]
        start = head.find(b"\r\ncontent-length:")
        if not head.startswith(b"http/1.1 ") or start < 0:
            raise ValueError("an answer without a status line or a Content-Length")
        stop = head.find(b"\r\n", start + 17)
        length = int(head[start + 17 : stop if stop > 0 else len(head)])
        while len(buffer) < length:
            buffer += self._receive(sock)
        self._buffer = buffer[length:]
        return int(head[9:12])

    @staticmethod
    def _receive(sock: socket.socket) -> bytes:
        data = sock.recv(65536)
        if not data:
            raise ConnectionError("the server closed the connection")
        return data

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


class Driver:
    """``concurrency`` client threads, each with one keep-alive `Connection` (one request at a time on it),
    sending until ``requests`` were sent, the deadline passed or `stop`; a request's latency runs from sending its
    first byte to reading its answer's last, and it failed unless the answer was a 200."""

    def __init__(
        self,
        url: str,
        path: str,
        body: bytes,
        concurrency: int,
        requests: int,
        deadline_s: float,
        content_type: str = "application/json",
    ) -> None:
        host, port = url.removeprefix("http://").split(":")
        self.address = (host, int(port))
        self.request = (
            f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode() + body
        self.concurrency, self.remaining, self.deadline_s = concurrency, requests, deadline_s
        self.latencies: list[float] = []
        self.failed = 0
        self.seconds = 0.0
        self.cpu_s = 0.0  # this process's CPU time (all threads) while the clients ran
        self._lock = threading.Lock()
        self._stop = threading.Event()

    def _take(self) -> bool:
        with self._lock:
            if self.remaining <= 0 or self._stop.is_set():
                return False
            self.remaining -= 1
            return True

    def _client(self, stop_at: float) -> None:
        connection = Connection(self.address)
        while time.monotonic() < stop_at and self._take():
            start = time.perf_counter()
            try:
                ok = connection.exchange(self.request) == 200
            except (OSError, ValueError):
                ok = False
                connection.close()
            elapsed = time.perf_counter() - start
            with self._lock:
                self.latencies.append(elapsed)
                self.failed += not ok
        connection.close()

    def run(self) -> Driver:
        stop_at = time.monotonic() + self.deadline_s
        threads = [threading.Thread(target=self._client, args=(stop_at,)) for _ in range(self.concurrency)]
        cpu, start = time.process_time(), time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        self.seconds = time.perf_counter() - start
        self.cpu_s = time.process_time() - cpu
        return self

    def stop(self) -> None:
        self._stop.set()


def predict_driver(url: str, body: dict[str, Any] | Body, concurrency: int, requests: int, deadline_s: float) -> Driver:
    """Predictions of ``body`` (a JSON object, or a `Body` of any form)."""
    path = "/v1/models/bench/predict"
    if isinstance(body, Body):
        return Driver(url, path, body.data, concurrency, requests, deadline_s, body.content_type)
    return Driver(url, path, json.dumps(body).encode(), concurrency, requests, deadline_s)


def percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def bare_forward_ms(model: torch.nn.Module, example: list[Any], repeats: int = 200, batch: int = 1) -> float:
    """Median time of one forward pass over ``batch`` copies of ``example`` (ms), on one torch thread like the
    servers measured."""
    x = torch.tensor([example] * batch, dtype=torch.float32)
    times = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.inference_mode():
            for _ in range(repeats):
                start = time.perf_counter()
                torch.softmax(model(x), dim=1)
                times.append(time.perf_counter() - start)
    finally:
        torch.set_num_threads(threads)
    return 1e3 * statistics.median(times)


def measure(
    architectures: Sequence[str] = ("mlp", "cnn"),
    concurrencies: Sequence[int] = (1, 8, 32),
    requests: int = 600,
    swaps: int = 20,
    mixed_requests: int = 2000,
    bodies: Sequence[str] = BODIES,
    gc_tuned: bool = True,
    on_step: Callable[[str], None] = lambda _: None,
) -> LoadReport:
    """Everything `clbench load` prints (``swaps`` or ``mixed_requests`` 0: that part is skipped)."""
    report = LoadReport(gc_tuned=gc_tuned)
    base_env = {"CL_TORCH_THREADS": "1", "OMP_NUM_THREADS": "1", "CL_MAX_WAIT_MS": "2"}
    if not gc_tuned:
        base_env["CL_GC_FREEZE"] = "false"
    for architecture in architectures:
        forms = bodies_for(architecture)
        for batching in (True, False):
            env = {**base_env, "CL_MAX_BATCH_SIZE": "64" if batching else "1"}
            with tempfile.TemporaryDirectory() as tmp, serve_process(Path(tmp), env) as server:
                versions = prepare_model(server.url, architecture)
                for kind in bodies:
                    predict_driver(server.url, forms[kind], 4, 100, 30).run()  # warm-up
                    for concurrency in concurrencies:
                        on_step(f"{architecture} {kind} batching={'on' if batching else 'off'} clients={concurrency}")
                        before = cpu_seconds(server.pid)
                        d = predict_driver(server.url, forms[kind], concurrency, requests, 120).run()
                        cpu = cpu_seconds(server.pid) - before
                        p50, p99 = 1e3 * percentile(d.latencies, 50), 1e3 * percentile(d.latencies, 99)
                        report.results.append(
                            LoadResult(
                                architecture,
                                kind,
                                batching,
                                concurrency,
                                len(d.latencies),
                                d.failed,
                                d.seconds,
                                p50,
                                p99,
                                cpu,
                                d.cpu_s,
                            )
                        )
                if batching and swaps > 0:
                    on_step(f"{architecture}: {swaps} version swaps under load")
                    report.swap_failures[architecture] = swap_under_load(server.url, forms[bodies[0]], versions, swaps)
        _, model = weights_for(architecture, 2)
        report.bare_forward_ms[architecture] = bare_forward_ms(model, sample_input(architecture))
        report.batched_ms_per_input[architecture] = bare_forward_ms(model, sample_input(architecture), 50, 32) / 32
        single = next(
            (r for r in report.results if r.architecture == architecture and r.batching and r.concurrency == 1), None
        )
        if single is not None:
            report.overhead[architecture] = single.p50_ms - report.bare_forward_ms[architecture]
    if mixed_requests > 0:
        on_step("predictions at concurrency 32 while updates and promotions run")
        report.mixed = mixed_load(mixed_requests, gc_tuned=gc_tuned)
    return report


def swap_under_load(url: str, body: dict[str, Any] | Body, versions: list[int], swaps: int) -> int:
    """Failed predictions (8 clients) while the live version is promoted back and forth ``swaps`` times."""
    driver = predict_driver(url, body, 8, 10**9, 120)
    runner = threading.Thread(target=driver.run)
    runner.start()
    with httpx.Client(base_url=url, timeout=30) as client:
        for i in range(swaps):
            time.sleep(0.05)
            client.post(f"/v1/models/bench/versions/{versions[i % 2]}/promote").raise_for_status()
    time.sleep(0.2)
    driver.stop()
    runner.join()
    return driver.failed


def mixed_load(requests: int, *, gc_tuned: bool = True) -> dict[str, Any]:
    """Predictions at concurrency 32 on a trained model while updates (new samples) and promotions run."""
    from service.demo import demo_digits

    env = {
        "CL_TORCH_THREADS": "1",
        "OMP_NUM_THREADS": "1",
        "CL_EPOCHS": "3",
        "CL_POLICY_MIN_SAMPLES_PER_NEW_CLASS": "50",
    }
    if not gc_tuned:
        env["CL_GC_FREEZE"] = "false"
    inputs, labels = demo_digits([0, 1, 2, 3, 4, 5, 6, 7, 8, 9])
    with (
        tempfile.TemporaryDirectory() as tmp,
        serve(Path(tmp), env) as url,
        httpx.Client(base_url=url, timeout=120) as c,
    ):
        c.post(
            "/v1/models",
            json={"name": "bench", "architecture": "mlp", "input_shape": [784], "options": {"hidden": [400, 400]}},
        ).raise_for_status()
        first = [i for i, y in enumerate(labels) if y in "01234"][:1000]
        answer = c.post(
            "/v1/models/bench/samples", json={"samples": [{"input": inputs[i], "label": labels[i]} for i in first]}
        ).json()
        _wait(c, answer["update_id"])
        body = {"inputs": [inputs[0]]}
        counts = {"updates": 0, "promotions": 0}
        driver = predict_driver(url, body, 32, requests, 120)
        runner = threading.Thread(target=driver.run)
        runner.start()
        rest = [i for i in range(len(labels)) if i not in set(first)]
        for chunk in range(3):  # new data arrives, updates run, versions are promoted back and forth
            part = rest[chunk * 300 : (chunk + 1) * 300]
            c.post(
                "/v1/models/bench/samples", json={"samples": [{"input": inputs[i], "label": labels[i]} for i in part]}
            )
            if c.post("/v1/models/bench/updates", json={}).status_code == 202:
                counts["updates"] += 1
            time.sleep(0.5)
            for v in c.get("/v1/models/bench/versions").json()["versions"][-2:]:
                if c.post(f"/v1/models/bench/versions/{v['version']}/promote").status_code == 200:
                    counts["promotions"] += 1
        runner.join()
        latencies, failed, seconds = driver.latencies, driver.failed, driver.seconds
    return {
        "requests": len(latencies),
        "failed": failed,
        "seconds": seconds,
        "throughput": len(latencies) / seconds if seconds else 0.0,
        "p50_ms": 1e3 * percentile(latencies, 50),
        "p99_ms": 1e3 * percentile(latencies, 99),
        **counts,
    }


def _wait(client: httpx.Client, update_id: str | None, timeout: float = 300) -> None:
    if update_id is None:
        return
    deadline = time.monotonic() + timeout
    while client.get(f"/v1/models/bench/updates/{update_id}").json()["status"] in ("queued", "running"):
        if time.monotonic() > deadline:
            raise RuntimeError("the first update did not finish")
        time.sleep(0.2)
