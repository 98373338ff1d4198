"""Benchmarks of the production data loop.

* `measure_capture` (`clbench load --capture RATE`): what capturing a share of the traffic costs the predict path.
  One `clserve` process serves two copies of one trained model (digits 0-4 of the protocol's train split, so that
  the drift monitor has a reference and tests windows as it would in production): "on" captures ``rate`` of its
  predicted inputs, "off" captures nothing.  Rounds alternate the order (off-on, on-off, …) so that slow drift of
  the shared machine hits both alike; each measurement is the same bounded load (``requests`` predictions at
  ``concurrency`` clients, one input per request, JSON).  Reported: each round's figures, the medians and their
  spread (min-max), and the cost: 1 − median throughput on / off, median p99 on / off − 1.
* `measure_drift` (`clbench drift`): the drift test's detection power and false-positive rate per shift type and
  window size, in the features of the protocol MLP trained on digits 0-4 (10 epochs, Adam 1e-3, batch 128, seed 0):
  the reference is 20 % of the train split's 0-4 held out from training (as the service holds out), traffic windows
  are drawn from the test split, never seen in training.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import torch
from torch import Tensor

from cl_core.data import load_mnist5k, rotate_images
from cl_core.drift import two_sample_test
from cl_core.models import Classifier, ModelSpec, build_model
from clbench.load import Driver, cpu_seconds, percentile, serve_process

# -- capture on vs off ----------------------------------------------------------------------------------------------


@dataclass
class CaptureRound:
    order: str
    off_rps: float
    on_rps: float
    off_p50_ms: float
    on_p50_ms: float
    off_p99_ms: float
    on_p99_ms: float
    off_cpu_ms: float
    on_cpu_ms: float
    on_failed: int
    off_failed: int


@dataclass
class CaptureReport:
    rate: float
    concurrency: int
    requests: int
    rounds: list[CaptureRound] = field(default_factory=list)
    captured: dict[str, Any] = field(default_factory=dict)

    def median(self, key: str) -> float:
        return statistics.median(getattr(r, key) for r in self.rounds)

    def spread(self, key: str) -> tuple[float, float]:
        values = [getattr(r, key) for r in self.rounds]
        return min(values), max(values)

    @property
    def throughput_cost(self) -> float:
        return 1 - self.median("on_rps") / self.median("off_rps")

    @property
    def p99_cost(self) -> float:
        return self.median("on_p99_ms") / self.median("off_p99_ms") - 1

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "throughput_cost": self.throughput_cost, "p99_cost": self.p99_cost}


def _train_served_model(client: httpx.Client, inputs: list[Any], labels: list[str]) -> None:
    client.post(
        "/v1/models",
        json={"name": "off", "architecture": "mlp", "input_shape": [784], "options": {"hidden": [400, 400]}},
    ).raise_for_status()
    first = [i for i, y in enumerate(labels) if y in "01234"][:1000]
    answer = client.post(
        "/v1/models/off/samples", json={"samples": [{"input": inputs[i], "label": labels[i]} for i in first]}
    )
    answer.raise_for_status()
    update_id = answer.json()["update_id"] or client.post("/v1/models/off/updates", json={}).json()["update_id"]
    deadline = time.monotonic() + 600
    while client.get(f"/v1/models/off/updates/{update_id}").json()["status"] in ("queued", "running"):
        if time.monotonic() > deadline:
            raise RuntimeError("the model's first update did not finish")
        time.sleep(0.2)
    archive = client.get("/v1/models/off/export")
    archive.raise_for_status()
    client.post(
        "/v1/models/import", params={"name": "on"}, content=archive.content, headers={"Content-Type": "application/zip"}
    ).raise_for_status()


def measure_capture(
    rate: float = 0.1,
    rounds: int = 5,
    requests: int = 2000,
    concurrency: int = 32,
    on_step: Callable[[str], None] = lambda _: None,
) -> CaptureReport:
    """Capture on against off, interleaved rounds in one server (see the module's docstring)."""
    from service.demo import demo_digits

    env = {"CL_TORCH_THREADS": "1", "OMP_NUM_THREADS": "1", "CL_EPOCHS": "3", "CL_MAX_WAIT_MS": "2"}
    inputs, _ = demo_digits([0, 1, 2, 3, 4], "test")
    train_inputs, train_labels = demo_digits([0, 1, 2, 3, 4])
    report = CaptureReport(rate, concurrency, requests)
    with (
        tempfile.TemporaryDirectory() as tmp,
        serve_process(Path(tmp), env) as server,
        httpx.Client(base_url=server.url, timeout=600) as client,
    ):
        on_step("training the served model")
        _train_served_model(client, train_inputs, train_labels)
        client.patch("/v1/models/on", json={"capture": {"rate": rate, "max_samples": 10_000}}).raise_for_status()
        body = {"inputs": [inputs[0]]}
        for name in ("off", "on"):  # warm-up
            _drive(server.url, name, body, concurrency, 200)
        for n in range(rounds):
            order = ("off", "on") if n % 2 == 0 else ("on", "off")
            figures: dict[str, tuple[float, float, float, float, int]] = {}
            for name in order:
                on_step(f"round {n + 1} of {rounds}: capture {name}")
                before = cpu_seconds(server.pid)
                driver = _drive(server.url, name, body, concurrency, requests)
                cpu = cpu_seconds(server.pid) - before
                figures[name] = (
                    len(driver.latencies) / driver.seconds,
                    1e3 * percentile(driver.latencies, 50),
                    1e3 * percentile(driver.latencies, 99),
                    1e3 * cpu / max(1, len(driver.latencies)),
                    driver.failed,
                )
            off, on = figures["off"], figures["on"]
            report.rounds.append(
                CaptureRound("-".join(order), off[0], on[0], off[1], on[1], off[2], on[2], off[3], on[3], on[4], off[4])
            )
        time.sleep(1.0)  # the last captures are stored
        info = client.get("/v1/models/on").json()
        drift = client.get("/v1/models/on/drift").json()
        report.captured = {
            "stored": info["captured"]["stored"],
            "drift_windows_kept": len(drift["windows"]),
            "drift_status": drift["status"],
        }
    return report


def _drive(url: str, name: str, body: dict[str, Any], concurrency: int, requests: int) -> Any:
    driver = Driver(url, f"/v1/models/{name}/predict", json.dumps(body).encode(), concurrency, requests, 300)
    return driver.run()


# -- drift: power and false-positive rate ----------------------------------------------------------------------------


SHIFTS = ("none", "noise 0.1", "noise 0.3", "rotated 30°", "permuted pixels", "25 % unseen classes", "unseen classes")


@dataclass
class DriftCell:
    shift: str
    window: int
    windows: int
    detected: int
    mmd_detected: int
    class_detected: int
    ms_per_test: float

    @property
    def rate(self) -> float:
        return self.detected / self.windows if self.windows else float("nan")


@dataclass
class DriftReport:
    reference: int
    permutations: int
    alpha: float
    test_accuracy: float
    cells: list[DriftCell] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _trained_mlp(x: Tensor, y: Tensor, seed: int = 0, epochs: int = 10) -> Classifier:
    spec = ModelSpec("mlp", (784,), [str(i) for i in range(5)], {"hidden": [400, 400]})
    model = build_model(spec, seed=seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for batch in torch.randperm(len(x), generator=g).split(128):
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(x[batch]), y[batch]).backward()
            optimizer.step()
    return model.eval()


def measure_drift(
    windows: int = 30,
    sizes: Sequence[int] = (50, 100, 200),
    shifts: Sequence[str] = SHIFTS,
    reference: int = 500,
    permutations: int = 200,
    alpha: float = 0.01,
    on_step: Callable[[str], None] = lambda _: None,
    epochs: int = 10,
) -> DriftReport:
    """Detection rate per shift and window size (for "none": the false-positive rate)."""
    unknown = set(shifts) - set(SHIFTS)
    if unknown:
        raise ValueError(f"unknown shifts {sorted(unknown)}; known: {', '.join(SHIFTS)}")
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    data = load_mnist5k()
    seen = data.train.where(data.train.labels < 5)
    order = torch.randperm(len(seen), generator=g)
    held, fit = order[: len(seen) // 5], order[len(seen) // 5 :]
    on_step("training the MLP on digits 0-4")
    model = _trained_mlp(seen.inputs[fit], seen.labels[fit], epochs=epochs)
    test_seen = data.test.where(data.test.labels < 5).inputs
    test_unseen = data.test.where(data.test.labels >= 5).inputs
    with torch.inference_mode():
        accuracy = float((model(test_seen).argmax(1) == data.test.where(data.test.labels < 5).labels).float().mean())
        ref_x = seen.inputs[held][:reference]
        ref_features, ref_labels = model.features(ref_x), model(ref_x).argmax(1)
    pixels = torch.randperm(784, generator=g)

    def window_of(shift: str, n: int) -> Tensor:
        if shift == "unseen classes":
            return test_unseen[torch.randperm(len(test_unseen), generator=g)[:n]]
        if shift == "25 % unseen classes":
            k = n // 4
            return torch.cat([_draw(test_seen, n - k, g), _draw(test_unseen, k, g)])
        x = _draw(test_seen, n, g)
        if shift.startswith("noise"):
            sigma = float(shift.split()[1])
            return (x + sigma * torch.randn(x.shape, generator=g)).clamp(0, 1)
        if shift == "rotated 30°":
            return rotate_images(x, 30.0)
        if shift == "permuted pixels":
            return x[:, pixels]
        return x

    report = DriftReport(len(ref_labels), permutations, alpha, accuracy)
    for shift in shifts:
        for size in sizes:
            on_step(f"{shift}, windows of {size}")
            detected = by_mmd = by_class = 0
            start = time.perf_counter()
            for _ in range(windows):
                x = window_of(shift, size)
                with torch.inference_mode():
                    features, predicted = model.features(x), model(x).argmax(1)
                result = two_sample_test(
                    ref_features,
                    ref_labels,
                    features,
                    predicted,
                    5,
                    permutations=permutations,
                    alpha=alpha,
                    generator=g,
                )
                detected += result.detected
                by_mmd += result.mmd_p <= alpha / 2
                by_class += result.chi2_p <= alpha / 2
            ms = 1e3 * (time.perf_counter() - start) / max(1, windows)
            report.cells.append(DriftCell(shift, size, windows, detected, by_mmd, by_class, ms))
    return report


def _draw(pool: Tensor, n: int, g: torch.Generator) -> Tensor:
    """``n`` rows of ``pool`` without replacement (with replacement when the pool is smaller)."""
    if n <= len(pool):
        return pool[torch.randperm(len(pool), generator=g)[:n]]
    return pool[torch.randint(len(pool), (n,), generator=g)]


def rate_text(detected: int, windows: int) -> str:
    return f"{detected}/{windows} ({100 * detected / windows:.0f} %)" if windows else "—"


def spread_text(values: tuple[float, float], digits: int) -> str:
    return f"{values[0]:.{digits}f}–{values[1]:.{digits}f}"
