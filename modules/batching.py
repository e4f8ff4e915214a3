"""Dynamic batching: calls to one module from many steps, programs and clients are gathered for a
few milliseconds (or until the batch is full) and run as one forward pass on the module's device."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

from .base import Module


class QueueFull(Exception):
    """The module's queue is at its bound: the caller should come back later (HTTP 429)."""

    def __init__(self, module: str, retry_after_s: float) -> None:
        super().__init__(f"{module} is busy ({module} queue full); retry in {retry_after_s:.0f} s")
        self.module = module
        self.retry_after_s = retry_after_s


@dataclass(frozen=True)
class Called:
    """One call's value and how it was computed, for the step record and metrics."""

    value: Any
    batch_size: int
    queue_ms: float
    compute_ms: float
    device: str


@dataclass(frozen=True)
class BatchStats:
    module: str
    size: int
    queue_wait_s: tuple[float, ...]
    compute_s: float
    errors: int


BatchHook = Callable[[BatchStats], None]


def run_forward(module: Module, batch: Sequence[dict[str, Any]]) -> tuple[list[Any], float]:
    """The module's forward, timed; on CUDA the clock waits for the kernels, not just their launch.
    If the whole batch raises, each item is retried alone so one bad input fails only its own call."""
    cuda = module.device.startswith("cuda")
    if cuda:
        import torch

        torch.cuda.synchronize(module.device)
    t0 = time.perf_counter()
    try:
        results = list(module.forward(batch))
        if len(results) != len(batch):
            raise RuntimeError(f"{module.name} returned {len(results)} results for {len(batch)} inputs")
    except Exception as whole:  # noqa: BLE001 - isolate the bad item below
        if len(batch) == 1:
            results = [whole]
        else:
            results = []
            for item in batch:
                try:
                    results.append(module.forward([item])[0])
                except Exception as e:  # noqa: BLE001 - this item's own failure
                    results.append(e)
    if cuda:
        import torch

        torch.cuda.synchronize(module.device)
    return results, time.perf_counter() - t0


class Batcher:
    """One per batchable module. A single collector task forms batches; each batch runs on the
    device's worker thread, and the next batch fills while it runs."""

    def __init__(self, module: Module, worker: Executor, *, max_batch_size: int, max_wait_ms: float,
                 max_queue: int, on_batch: BatchHook | None = None) -> None:
        self.module = module
        self.worker = worker
        self.max_batch_size = max(1, max_batch_size)
        self.max_wait_s = max(0.0, max_wait_ms) / 1000
        self.max_queue = max(self.max_batch_size, max_queue)
        self.on_batch = on_batch
        self._items: list[tuple[dict[str, Any], asyncio.Future[Called], float]] = []
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._recent_batch_s = 0.05
        self._last_size = 0

    @property
    def depth(self) -> int:
        return len(self._items)

    def retry_after_s(self) -> float:
        """A guess at how long the queue takes to drain, so a 429's Retry-After means something."""
        batches = self.depth / self.max_batch_size + 1
        return max(1.0, batches * self._recent_batch_s)

    async def submit(self, args: dict[str, Any]) -> Called:
        if len(self._items) >= self.max_queue:
            raise QueueFull(self.module.name, self.retry_after_s())
        loop = asyncio.get_running_loop()
        if self._task is None or self._task.done():
            self._wake = asyncio.Event()
            self._task = loop.create_task(self._collect(), name=f"batcher-{self.module.name}")
        fut: asyncio.Future[Called] = loop.create_future()
        self._items.append((args, fut, time.perf_counter()))
        assert self._wake is not None
        self._wake.set()
        return await fut

    async def _collect(self) -> None:
        assert self._wake is not None
        loop = asyncio.get_running_loop()
        while True:
            if not self._items:
                self._wake.clear()
                await self._wake.wait()
                continue
            # Wait for company — until the batch is full or the oldest call has waited max_wait — but
            # only when there is company to expect (calls queued together, or the last batch had
            # several): a lone client is not made to wait for callers that are not there.
            wait = self.max_wait_s if (len(self._items) > 1 or self._last_size > 1) else 0.0
            deadline = self._items[0][2] + wait
            while len(self._items) < self.max_batch_size:
                remaining = deadline - time.perf_counter()
                if remaining <= 0:
                    break
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), remaining)
                except TimeoutError:
                    break
            batch = self._items[: self.max_batch_size]
            del self._items[: self.max_batch_size]
            live = [(a, f, t) for a, f, t in batch if not f.done()]
            if not live:
                continue
            started = time.perf_counter()
            try:
                results, compute_s = await loop.run_in_executor(self.worker, run_forward, self.module,
                                                                [a for a, _, _ in live])
            except Exception as e:  # noqa: BLE001 - the worker itself failed (shut down): fail these calls
                results, compute_s = [e] * len(live), time.perf_counter() - started
            self._recent_batch_s = 0.8 * self._recent_batch_s + 0.2 * compute_s
            self._last_size = len(live)
            errors = 0
            for (_, fut, t_in), result in zip(live, results):
                if fut.done():
                    continue
                if isinstance(result, BaseException):
                    errors += 1
                    fut.set_exception(result)
                else:
                    fut.set_result(Called(result, len(live), (started - t_in) * 1000, compute_s * 1000,
                                          self.module.device))
            if self.on_batch is not None:
                self.on_batch(BatchStats(self.module.name, len(live), tuple(started - t for _, _, t in live),
                                         compute_s, errors))

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        for _, fut, _ in self._items:
            if not fut.done():
                fut.cancel()
        self._items.clear()
