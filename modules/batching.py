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
    cap: int = 1  # where the module's queue is cut into batches now (BatchCap)


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


class BatchCap:
    """Where a saturated queue is cut into batches, chosen by the measured time per item.

    A bigger batch is not always cheaper per item: on a CPU, once a batch's activations outgrow the
    caches, each item costs more (the demo conv net: 1.3 ms an item at 16, 2.5 at 64, on two cores).
    The cap takes one of the sizes 1, 2, 4, … ``limit``. Every ``hold`` batches cut by the cap, it
    tries for ``trial`` batches a size it has not measured in the last ``stale`` batches (nearest
    first; all of them, since costs can be flat for a while and then fall), and otherwise keeps
    whichever size it knows is cheapest by more than ``margin``. Batches smaller than the cap say
    what their size costs but never move it: then the callers, not the cap, set the size.
    The time observed is a batch's whole turn (the hop to the worker, the forward, handing back the
    results), so a small batch pays for its share of what every batch costs."""

    def __init__(self, limit: int, *, adapt: bool = True, hold: int = 4, trial: int = 2, stale: int = 200,
                 margin: float = 0.05) -> None:
        self.limit = max(1, limit)
        self.adapt = adapt
        self.hold, self.trial, self.stale, self.margin = hold, max(1, trial), stale, margin
        self.sizes = sorted({min(self.limit, 1 << k) for k in range(self.limit.bit_length() + 1)})
        self.cap = self.limit
        self._cost: dict[int, float] = {}  # size step → seconds per item (moving average)
        self._seen: dict[int, int] = {}  # size step → the batch count when it was last measured
        self._batches = 0
        self._held = 0
        self._home: int | None = None  # the cap a trial left, and returns to unless something beat it
        self._left = 0

    def step(self, size: int) -> int:
        """The smallest size step holding ``size`` items."""
        return next((s for s in self.sizes if s >= size), self.limit)

    def cost(self, size: int) -> float | None:
        """Measured seconds per item at ``size``'s step, or None when not measured recently."""
        s = self.step(size)
        fresh = s in self._cost and self._batches - self._seen[s] <= self.stale
        return self._cost[s] if fresh else None

    def observe(self, size: int, seconds: float) -> None:
        """One batch of ``size`` items took ``seconds``."""
        if size < 1:
            return
        self._batches += 1
        s = self.step(size)
        per_item = seconds / size
        old = self.cost(s)
        self._cost[s] = per_item if old is None else 0.6 * old + 0.4 * per_item
        self._seen[s] = self._batches
        if not self.adapt:
            return
        if self._home is not None:
            # Counted whether or not the trial's batches filled: a bigger size the callers cannot
            # fill ends unmeasured, and the cap goes home.
            self._left -= 1
            if self._left <= 0:
                home, self._home = self._home, None
                self.cap = self._best(home)
            return
        if size < self.cap:
            return
        self._held += 1
        if self._held < self.hold:
            return
        self._held = 0
        near = sorted(self.sizes, key=lambda n: abs(n.bit_length() - self.cap.bit_length()))
        unknown = [n for n in near if self.cost(n) is None]
        if unknown:
            self._home, self._left, self.cap = self.cap, self.trial, unknown[0]
        else:
            self.cap = self._best(self.cap)

    def _best(self, current: int) -> int:
        here = self.cost(current)
        known = [(c, n) for n in self.sizes if n != current and (c := self.cost(n)) is not None]
        if not known:
            return current
        c, best = min(known)
        return best if here is None or c < here * (1 - self.margin) else current


class Batcher:
    """One per batchable module. A single collector task forms batches; each batch runs on the
    device's worker thread, and the next batch fills while it runs."""

    def __init__(self, module: Module, worker: Executor, *, max_batch_size: int, max_wait_ms: float,
                 max_queue: int, on_batch: BatchHook | None = None, adapt: bool = True) -> None:
        self.module = module
        self.worker = worker
        self.max_batch_size = max(1, max_batch_size)
        self.cap = BatchCap(self.max_batch_size, adapt=adapt)
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
        batches = self.depth / self.cap.cap + 1
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
            cap = self.cap.cap
            while len(self._items) < cap:
                remaining = deadline - time.perf_counter()
                if remaining <= 0:
                    break
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), remaining)
                except TimeoutError:
                    break
            batch = self._items[:cap]
            del self._items[:cap]
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
            if not errors:
                # A batch that failed was retried item by item: its time says nothing about its size.
                self.cap.observe(len(live), time.perf_counter() - started)
            if self.on_batch is not None:
                self.on_batch(BatchStats(self.module.name, len(live), tuple(started - t for _, _, t in live),
                                         compute_s, errors, self.cap.cap))

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        for _, fut, _ in self._items:
            if not fut.done():
                fut.cancel()
        self._items.clear()
