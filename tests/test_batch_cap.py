"""The adaptive batch cap (NSX_BATCH_ADAPT): a saturated queue is cut at the size measured cheapest
per item, it never leaves the module's own maximum, and batches the callers could not fill never
move it. The policy is fed measured times directly; one test runs it inside a real Batcher."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from app.metrics import Metrics
from app.settings import Settings
from modules.base import Module
from modules.batching import BatchCap, Batcher, BatchStats
from program_dsl import param, signature


def saturate(cap: BatchCap, per_item: Callable[[int], float], batches: int) -> list[int]:
    """Batches always cut by the cap, each taking ``size × per_item(size)`` s; the caps used."""
    used = []
    for _ in range(batches):
        size = cap.cap
        used.append(size)
        cap.observe(size, size * per_item(size))
    return used


def cache_bound(size: int) -> float:
    # Shaped like the demo conv net on two CPU cores: cheapest per item at 8-16.
    return {1: 2.3, 2: 1.8, 4: 1.4, 8: 1.27, 16: 1.26, 32: 2.2, 64: 2.5}[size] / 1000


def test_a_saturated_queue_settles_where_an_item_is_cheapest() -> None:
    cap = BatchCap(64)
    assert cap.cap == 64 and cap.sizes == [1, 2, 4, 8, 16, 32, 64]
    used = saturate(cap, cache_bound, 400)
    late = used[200:]
    # Every size is tried again now and then, but the cap lives in the cheap sizes.
    assert sum(s in (8, 16) for s in late) / len(late) > 0.85
    assert used[-1] in (8, 16)


def test_when_bigger_is_always_cheaper_the_cap_stays_at_the_limit() -> None:
    cap = BatchCap(16)
    used = saturate(cap, lambda n: 0.01 / n, 300)
    assert sum(s == 16 for s in used) / len(used) > 0.9
    assert used[-1] == 16


def test_the_cap_never_passes_the_module_s_limit_and_tries_only_sizes_it_has() -> None:
    cap = BatchCap(12)
    assert cap.sizes == [1, 2, 4, 8, 12]
    used = saturate(cap, lambda n: 0.001 * n, 300)  # smaller always cheaper per item
    assert set(used) <= set(cap.sizes)
    assert used[-1] == 1


def test_batches_the_callers_could_not_fill_leave_the_cap_where_it_is() -> None:
    cap = BatchCap(64)
    for _ in range(200):
        cap.observe(3, 3 * cache_bound(4))
    assert cap.cap == 64
    assert cap.cost(3) == cap.cost(4) is not None  # what that size costs is still learnt


def test_with_adapt_off_the_cap_is_the_limit() -> None:
    cap = BatchCap(64, adapt=False)
    assert set(saturate(cap, cache_bound, 200)) == {64}


def test_the_setting_reaches_the_pool() -> None:
    assert Settings().pool_config().adapt_batch is True
    assert Settings(batch_adapt=False).pool_config().adapt_batch is False


class Cliff(Module):
    """Batchable; a forward sleeps 0.2 ms an item up to 4 items and 3 ms an item beyond."""

    signature = signature("CLIFF", "Number", param("n", "Number"), pack="t")
    batchable = True
    max_batch_size = 32

    def load(self, device: str) -> None:
        self.device = device

    def forward(self, batch: Sequence[dict[str, Any]]) -> list[Any]:
        time.sleep(len(batch) * (0.0002 if len(batch) <= 4 else 0.003))
        return [a["n"] for a in batch]


async def test_a_batcher_under_load_moves_its_cap_and_reports_it() -> None:
    metrics = Metrics()
    seen: list[BatchStats] = []

    def hook(stats: BatchStats) -> None:
        seen.append(stats)
        metrics.observe_batch(stats)

    with ThreadPoolExecutor(1) as worker:
        module = Cliff()
        module.load("cpu")
        batcher = Batcher(module, worker, max_batch_size=32, max_wait_ms=1, max_queue=4096, on_batch=hook)
        try:
            # Keep far more calls queued than the cap, so every batch is cut by it.
            for _ in range(8):
                got = await asyncio.gather(*(batcher.submit({"n": i}) for i in range(400)))
                assert [c.value for c in got] == list(range(400))
        finally:
            await batcher.close()
    assert batcher.cap.cap <= 4
    assert max(s.size for s in seen[-20:]) <= 8
    assert f'nsx_module_batch_cap{{module="CLIFF"}} {float(batcher.cap.cap)}' in metrics.render().decode()
