"""Micro-batching of predictions: concurrent requests for a model share one forward pass.

A request that finds the model idle is dispatched at once (never held for the wait).  While a forward pass runs,
new requests queue and form the next batch; only when the previous batch served several requests (there is load)
does the dispatcher wait up to ``max_wait`` for as many to gather, capped at ``max_batch`` inputs.  The live model
is read when a batch is dispatched, so a version swap never splits a batch.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch
from torch import Tensor

from service.errors import ApiError
from service.serving import LiveModel, ModelServer


@dataclass
class _Request:
    inputs: Tensor
    future: asyncio.Future[tuple[LiveModel, Tensor]]


class MicroBatcher:
    """One per model: a queue and a dispatcher task."""

    def __init__(
        self,
        server: ModelServer,
        name: str,
        pool: ThreadPoolExecutor,
        *,
        max_batch: int,
        max_wait_s: float,
        queue_limit: int,
        on_batch: Callable[[str, int], None] | None = None,
    ) -> None:
        self.server, self.name, self.pool, self.on_batch = server, name, pool, on_batch
        self.max_batch, self.max_wait, self.queue_limit = max_batch, max_wait_s, queue_limit
        self._queue: asyncio.Queue[_Request] = asyncio.Queue()
        self._queued_inputs = 0
        self._last_requests = 1
        self._task: asyncio.Task[None] | None = None

    async def infer(self, inputs: Tensor) -> tuple[LiveModel, Tensor]:
        """Probabilities for ``inputs`` and the live model that computed them."""
        if self._queued_inputs + len(inputs) > self.queue_limit:
            raise ApiError(
                503, f"the predict queue of {self.name!r} is full; retry shortly", headers={"Retry-After": "1"}
            )
        loop = asyncio.get_running_loop()
        if self._task is None or self._task.done():
            self._task = loop.create_task(self._dispatch())
        request = _Request(inputs, loop.create_future())
        self._queued_inputs += len(inputs)
        self._queue.put_nowait(request)
        return await request.future

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _gather(self) -> list[_Request]:
        batch = [await self._queue.get()]
        size = len(batch[0].inputs)
        while size < self.max_batch and not self._queue.empty():
            batch.append(self._queue.get_nowait())
            size += len(batch[-1].inputs)
        if size < self.max_batch and self.max_wait > 0 and self._last_requests > 1:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + self.max_wait
            while size < self.max_batch and len(batch) < self._last_requests:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    request = await asyncio.wait_for(self._queue.get(), remaining)
                except TimeoutError:
                    break
                batch.append(request)
                size += len(request.inputs)
        return batch

    async def _dispatch(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._gather()
            self._queued_inputs -= sum(len(r.inputs) for r in batch)
            self._last_requests = len(batch)
            live = self.server.current(self.name)
            if live is None:
                error = ApiError(409, f"model {self.name!r} has no live version yet")
                for request in batch:
                    if not request.future.done():
                        request.future.set_exception(error)
                continue
            try:
                inputs = torch.cat([r.inputs for r in batch]) if len(batch) > 1 else batch[0].inputs
                if self.on_batch is not None:
                    self.on_batch(self.name, len(inputs))
                probs = await loop.run_in_executor(self.pool, live.probabilities, inputs)
            except Exception as exc:
                for request in batch:
                    if not request.future.done():
                        request.future.set_exception(exc)
                continue
            start = 0
            for request in batch:
                n = len(request.inputs)
                if not request.future.done():
                    request.future.set_result((live, probs[start : start + n]))
                start += n


class Batchers:
    """The batchers of all models, created on first use."""

    def __init__(
        self,
        server: ModelServer,
        *,
        max_batch: int,
        max_wait_s: float,
        queue_limit: int,
        threads: int = 2,
        on_batch: Callable[[str, int], None] | None = None,
    ) -> None:
        self.server = server
        self.pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="predict")
        self.max_batch, self.max_wait_s, self.queue_limit, self.on_batch = max_batch, max_wait_s, queue_limit, on_batch
        self._batchers: dict[str, MicroBatcher] = {}

    def get(self, name: str) -> MicroBatcher:
        batcher = self._batchers.get(name)
        if batcher is None:
            batcher = self._batchers[name] = MicroBatcher(
                self.server,
                name,
                self.pool,
                max_batch=self.max_batch,
                max_wait_s=self.max_wait_s,
                queue_limit=self.queue_limit,
                on_batch=self.on_batch,
            )
        return batcher

    async def close(self) -> None:
        for batcher in self._batchers.values():
            await batcher.close()
        self.pool.shutdown(wait=False, cancel_futures=True)
