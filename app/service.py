"""The service's parts wired together once: pool, store, executor, run service and metrics. The
app's lifespan, ``nsx run`` and the packs' tools (through ``open_runner``) all start it here."""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from modules import words
from modules.base import Pack
from modules.gallery import Galleries
from modules.pool import Pool

from .executor import Executor
from .metrics import Metrics
from .runs import RunLimits, RunService
from .settings import Settings
from .store import RedisStore, Store, open_store, scoped


@dataclass
class Service:
    settings: Settings
    pool: Pool
    store: Store
    runs: RunService
    metrics: Metrics
    loading: asyncio.Task[None] | None = None
    galleries: Galleries = field(default_factory=Galleries)
    # The text model and the vocabularies' embeddings, loaded in the background once the modules
    # are: readiness does not wait for them (exact words never need them).
    warming: asyncio.Task[None] | None = None
    _views: dict[str, Store] = field(default_factory=dict)
    lag: LoopLag = field(default_factory=lambda: LoopLag())  # a lambda: LoopLag is defined below

    @property
    def ready(self) -> bool:
        return self.pool.ready and self.loading is not None and self.loading.done()

    @property
    def text_model(self) -> words.TextModelState:
        return words.text_model_state()

    def store_for(self, tenant: str) -> Store:
        """The store as ``tenant`` sees it: its runs, uploads, artifacts and step outputs under its own
        name; the step cache and its artifacts common to all with ``NSX_SHARE_CACHE``."""
        view = self._views.get(tenant)
        if view is None:
            shared = frozenset({"step", "art"}) if self.settings.share_cache else frozenset()
            # Tenants are the configured ones, so this stays as small as the key list.
            view = self._views[tenant] = scoped(self.store, tenant, shared)
        return view


def make_pool(settings: Settings, packs: Sequence[Pack], metrics: Metrics) -> Pool:
    pool = Pool(packs, settings.pool_config(), on_batch=metrics.observe_batch)
    metrics.watch_memory(pool.memory)
    return pool


@asynccontextmanager
async def running(settings: Settings, pool: Pool, metrics: Metrics, *, wait: bool = False,
                  load: Iterable[str] | None = None,
                  text_model: Literal["background", "lazy"] = "background") -> AsyncIterator[Service]:
    """The service over ``pool`` until the block ends. Models load in the background (``/readyz``
    tells when they are warm) unless ``wait``, which returns once every module has loaded (and the
    text model, when it loads in the background). ``load``: only these qualified modules (the rest
    on first need). ``text_model``: "background" loads the shared text model once the modules are
    loaded, "lazy" only when a phrase needs it."""
    store = open_store(settings.redis_url, settings.memory_store_mb * 1024 * 1024, on_event=metrics.on_store_event,
                       durable=settings.redis_durable)
    if isinstance(store, RedisStore):
        await store.check_durability()
    executor = Executor(pool, store, step_ttl_s=settings.step_ttl_s, step_timeout_s=settings.step_timeout_s,
                        on_cache=metrics.on_cache,
                        # Artifacts outlive the runs that link them; a hit sets their life anew.
                        artifact_ttl_s=max(settings.step_ttl_s, settings.run_ttl_s))
    runs = RunService(pool, store, executor, limits=settings.program_limits(),
                      run_limits=RunLimits(settings.run_timeout_s, settings.max_concurrent_runs, settings.run_ttl_s),
                      metrics=metrics)
    galleries = Galleries.of(pool.packs, store, max_bytes=settings.max_image_bytes,
                             max_pixels=settings.max_image_pixels)
    svc = Service(settings, pool, store, runs, metrics, galleries=galleries)
    galleries.shelves = svc.store_for
    galleries.expect_load()
    freeze = settings.gc_freeze
    svc.loading = asyncio.create_task(_start(pool, galleries, settings.gallery_dir, load, freeze))
    watching = asyncio.create_task(svc.lag.watch(metrics))
    if text_model == "background":
        svc.warming = asyncio.create_task(_warm_words(svc.loading, pool, freeze))
    try:
        if wait:
            await svc.loading
            if svc.warming is not None:
                await svc.warming
        yield svc
    finally:
        for task in (svc.loading, svc.warming, watching):
            if task is not None and not task.done():
                task.cancel()
        await runs.live.close(settings.shutdown_timeout_s)
        await pool.close()
        await store.close()


async def _start(pool: Pool, galleries: Galleries, folder: Path | None, load: Iterable[str] | None,
                 freeze: bool) -> None:
    # Galleries after the models: embedding their images needs the same models, and /readyz waits
    # for both, so no run meets a gallery that is still half loaded. Loaded even when a model
    # fails, since writes to the galleries wait for it.
    try:
        await pool.start(load)
    finally:
        await galleries.load(folder)
        if freeze:
            settle_heap(collect=True)


async def _warm_words(loading: asyncio.Task[None], pool: Pool, freeze: bool) -> None:
    # After the modules, whatever became of them: start-up does not share the CPU with it.
    await asyncio.wait([loading])
    await pool.warm_words()
    if freeze:
        settle_heap(collect=False)


def settle_heap(*, collect: bool) -> None:
    """Move everything loading left alive (modules, weights' Python objects, vocabularies) out of
    the collector's sight. A full collection walks every tracked object while it holds the GIL:
    with the models' hundreds of thousands of objects, each one took about 250 ms and, at 64
    clients, 1-2 s of every 10 s; frozen, they are never walked again. ``collect`` first, so the
    loading's garbage is freed rather than frozen; only while nothing is served yet, since the
    collection itself is one such pause. Off (``NSX_GC_FREEZE=false``) where many services start
    and stop in one process, as in the tests: each freeze would keep its predecessors' cycles."""
    if collect:
        gc.collect()
    gc.freeze()


class LoopLag:
    """How long the event loop is kept from running its callbacks (and so from answering anything):
    a timer every ``every_s`` and how late it fired, into ``nsx_event_loop_lag_seconds``. ``worst``
    is the longest since ``reset``: what a test of "nothing blocks the loop" reads."""

    def __init__(self, every_s: float = 0.02) -> None:
        self.every_s = every_s
        self.worst = 0.0

    def reset(self) -> None:
        self.worst = 0.0

    async def watch(self, metrics: Metrics) -> None:
        while True:
            t0 = time.perf_counter()
            await asyncio.sleep(self.every_s)
            late = max(0.0, time.perf_counter() - t0 - self.every_s)
            self.worst = max(self.worst, late)
            metrics.loop_lag.observe(late)


class ModulesFailed(RuntimeError):
    """Modules a tool needs could not load."""


@asynccontextmanager
async def open_runner(packs: Sequence[Pack], *, device: str = "auto", store_mb: int = 256,
                      max_queue: int = 1 << 16) -> AsyncIterator[RunService]:
    """A run service in this process over ``packs``, on the in-memory store, every module loaded:
    what benchmarks and a pack's tools run programs with (``modules.commands.Runner``)."""
    settings = Settings(redis_url=None, device=device, memory_store_mb=store_mb, max_queue=max_queue, gc_freeze=False,
                        step_timeout_s=600, run_timeout_s=24 * 3600, max_concurrent_runs=1 << 20,
                        api_keys=None, packs=None, lazy_load=False)
    metrics = Metrics()
    async with running(settings, make_pool(settings, packs, metrics), metrics, wait=True) as svc:
        failed = {q: s.error for q, s in svc.pool.states.items() if s.state == "failed"}
        if failed:
            raise ModulesFailed("modules failed to load: " + "; ".join(f"{k}: {v}" for k, v in failed.items()))
        yield svc.runs
