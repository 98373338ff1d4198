"""The micro-batcher: a lone request is never held for the wait; concurrent requests share forward passes."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch

from service.batching import MicroBatcher
from service.serving import LiveModel


class SlowModel(torch.nn.Module):
    """Doubles its input; each forward waits on a gate so that requests pile up behind it."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()
        self.gate.set()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.gate.wait(10)
        return 2 * x


class Server:
    def __init__(self, model: torch.nn.Module) -> None:
        self.live = LiveModel("m", 1, ("a", "b"), (2,), model, torch.device("cpu"), {})

    def current(self, name: str) -> LiveModel:
        return self.live


def batcher(model: torch.nn.Module, sizes: list[int], max_wait_s: float) -> MicroBatcher:
    return MicroBatcher(
        Server(model),  # type: ignore[arg-type]
        "m",
        ThreadPoolExecutor(2),
        max_batch=64,
        max_wait_s=max_wait_s,
        queue_limit=1000,
        on_batch=lambda _name, n: sizes.append(n),
    )


def test_a_lone_request_is_dispatched_at_once() -> None:
    sizes: list[int] = []

    async def run() -> Any:
        b = batcher(SlowModel(), sizes, max_wait_s=60.0)  # a wait that would exceed the timeout below
        result = await asyncio.wait_for(b.infer(torch.tensor([[1.0, 0.0]])), timeout=5)
        await b.close()
        return result

    live, probs = asyncio.run(run())
    assert live.version == 1 and probs.shape == (1, 2) and sizes == [1]


def test_requests_arriving_during_a_forward_form_one_batch_with_their_own_results() -> None:
    sizes: list[int] = []
    model = SlowModel()

    async def run() -> list[Any]:
        b = batcher(model, sizes, max_wait_s=0.0)
        model.gate.clear()
        first = asyncio.create_task(b.infer(torch.tensor([[0.0, 1.0]])))
        await asyncio.sleep(0.05)  # the first forward is now blocked on the gate
        rest = [asyncio.create_task(b.infer(torch.tensor([[float(i), 0.0]]))) for i in range(10)]
        await asyncio.sleep(0.05)
        model.gate.set()
        results = await asyncio.gather(first, *rest)
        await b.close()
        return results

    results = asyncio.run(run())
    assert sizes == [1, 10]
    for i, (_, probs) in enumerate(results[1:]):
        expected = torch.softmax(torch.tensor([[2.0 * i, 0.0]]), dim=1)
        torch.testing.assert_close(probs, expected)
