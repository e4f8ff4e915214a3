"""The pool: every enabled module loaded once onto its device and kept there; calls run off the
event loop on one worker per device, and batchable modules merge concurrent calls into one forward."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from program_dsl import Catalog, Plan

from .base import Module, ModuleError, Pack
from .batching import Batcher, BatchHook, BatchStats, Called, QueueFull, run_forward
from .device import resolve_device
from .packs import build_catalog, resolve_modules
from .routing import Router

log = logging.getLogger("nsx.pool")


class ModuleUnavailable(ModuleError):
    """The program names a module that is declared but no enabled pack here runs."""


@dataclass
class PoolConfig:
    device: str = "auto"
    batching: bool = True
    max_batch_size: int | None = None  # None: each module's own
    max_wait_ms: float = 5.0
    max_queue: int = 256
    lazy: bool = False
    choose: Mapping[str, str] = field(default_factory=dict)
    # True when packs were named explicitly (NSX_PACKS): then a module that fails to load keeps the
    # service unready. By default a module that cannot load here is reported and left out.
    strict: bool = False


@dataclass
class ModuleState:
    pack: str
    state: str = "pending"  # pending | loading | ready | failed
    load_ms: float = 0.0
    error: str | None = None


class Pool:
    def __init__(self, packs: Iterable[Pack], device: str | PoolConfig = "auto", *,
                 on_batch: BatchHook | None = None) -> None:
        self.config = device if isinstance(device, PoolConfig) else PoolConfig(device=device)
        self.packs = list(packs)
        self.device = resolve_device(self.config.device)
        self.modules, self.default = resolve_modules(self.packs, self.config.choose)
        self.catalog: Catalog = build_catalog(self.packs, self.config.choose)
        self.states = {q: ModuleState(q.split(".", 1)[0]) for q in self.modules}
        self.on_batch = on_batch
        self._workers: dict[str, ThreadPoolExecutor] = {}
        self._batchers: dict[str, Batcher] = {}
        self._load_locks: dict[str, asyncio.Lock] = {}
        for qname, module in self.modules.items():
            if module.batchable and self.config.batching:
                size = self.config.max_batch_size or module.max_batch_size
                self._batchers[qname] = Batcher(module, self._worker(self._device_for(module)), max_batch_size=size,
                                                max_wait_ms=self.config.max_wait_ms, max_queue=self.config.max_queue,
                                                on_batch=on_batch)

    def _device_for(self, module: Module) -> str:
        return "cpu" if module.cheap else self.device

    def _worker(self, device: str) -> ThreadPoolExecutor:
        # One worker per device: kernels on one device queue there anyway, and the loop stays free.
        if device not in self._workers:
            self._workers[device] = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"nsx-{device}")
        return self._workers[device]

    # -- lifecycle ----------------------------------------------------------------------------
    @property
    def ready(self) -> bool:
        counted = [s for s in self.states.values() if self.config.strict or s.state != "failed"]
        if self.config.lazy:
            return all(s.state != "failed" for s in counted)
        return all(s.state == "ready" for s in counted)

    async def start(self) -> None:
        """Load and warm every module (unless lazy); one that fails is marked failed, not fatal."""
        if self.config.lazy:
            return
        for qname in self.modules:
            await self._ensure_loaded(qname)
        for route in self.catalog.routes.values():
            if isinstance(route, Router):
                # Off the loop: it may load the text model; until it is done a compile that needs
                # the embedding loads it itself.
                await asyncio.get_running_loop().run_in_executor(self._worker("cpu"), route.warm)

    async def _ensure_loaded(self, qname: str) -> None:
        state = self.states[qname]
        if state.state in ("ready", "failed"):
            return
        lock = self._load_locks.setdefault(qname, asyncio.Lock())
        async with lock:
            if state.state in ("ready", "failed"):
                return
            module = self.modules[qname]
            state.state = "loading"
            t0 = time.perf_counter()
            try:
                device = self._device_for(module)
                await asyncio.get_running_loop().run_in_executor(self._worker(device), self._load, module, device)
                state.state = "ready"
            except Exception as e:
                log.exception("module %s failed to load", qname)
                state.state, state.error = "failed", f"{type(e).__name__}: {e}"
            state.load_ms = (time.perf_counter() - t0) * 1000

    @staticmethod
    def _load(module: Module, device: str) -> None:
        module.load(device)
        module.device = device
        module.warmup()

    async def close(self) -> None:
        for b in self._batchers.values():
            await b.close()
        for w in self._workers.values():
            w.shutdown(wait=False, cancel_futures=True)

    # -- calls --------------------------------------------------------------------------------------
    def qualified(self, name: str, pack: str | None = None) -> str | None:
        if pack is not None and f"{pack}.{name}" in self.modules:
            return f"{pack}.{name}"
        return self.default.get(name)

    def find(self, name: str, pack: str | None = None) -> Module | None:
        q = self.qualified(name, pack)
        return self.modules[q] if q is not None else None

    def _unavailable(self, name: str, pack: str | None) -> ModuleUnavailable:
        sig = self.catalog.get(name)
        wanted = pack or (sig.pack if sig is not None else "?")
        return ModuleUnavailable(f"{name} needs the '{wanted}' pack, which is not enabled here "
                                 f"(enabled packs: {', '.join(p.name for p in self.packs) or 'none'})")

    def admit(self, plan: Plan) -> None:
        """Refuse a run up front (QueueFull → 429) when a module it needs has a full queue, rather
        than letting queues and memory grow without bound."""
        for step in plan.steps:
            q = self.qualified(step.module, step.pack)
            batcher = self._batchers.get(q) if q else None
            if batcher is not None and batcher.depth >= batcher.max_queue:
                raise QueueFull(step.module, batcher.retry_after_s())

    async def call(self, name: str, args: dict[str, Any], pack: str | None = None) -> Called:
        """Run one call; raises ModuleError (or the module's own exception) for a failed item."""
        q = self.qualified(name, pack)
        if q is None:
            raise self._unavailable(name, pack)
        module = self.modules[q]
        state = self.states[q]
        if state.state != "ready":
            await self._ensure_loaded(q)
        if state.state != "ready":
            raise ModuleUnavailable(f"{name} could not be loaded ({state.error})")
        if module.cheap:
            t0 = time.perf_counter()
            value = module.forward([args])[0]
            if isinstance(value, BaseException):
                raise value
            return Called(value, 1, 0.0, (time.perf_counter() - t0) * 1000, "cpu")
        batcher = self._batchers.get(q)
        if batcher is not None:
            return await batcher.submit(args)
        # Batching off: still off the loop, one call per forward.
        t_in = time.perf_counter()
        loop = asyncio.get_running_loop()
        results, compute_s = await loop.run_in_executor(self._worker(module.device), run_forward, module, [args])
        queue_ms = (time.perf_counter() - t_in - compute_s) * 1000
        if self.on_batch is not None:
            self.on_batch(BatchStats(module.name, 1, (queue_ms / 1000,), compute_s,
                                     int(isinstance(results[0], BaseException))))
        if isinstance(results[0], BaseException):
            raise results[0]
        return Called(results[0], 1, queue_ms, compute_s * 1000, module.device)

    # -- introspection ------------------------------------------------------------------------------
    def describe(self) -> list[dict[str, Any]]:
        out = []
        for qname, m in sorted(self.modules.items()):
            s = self.states[qname]
            batcher = self._batchers.get(qname)
            out.append({
                "name": m.name, "qualified": qname, "pack": s.pack, "version": m.version,
                "device": self._device_for(m), "state": s.state, "load_ms": round(s.load_ms, 3), "error": s.error,
                "parameters": m.parameter_count(), "default": self.default.get(m.name) == qname,
                "batching": {"enabled": batcher is not None, "max_batch_size": batcher.max_batch_size if batcher else 1,
                             "max_wait_ms": self.config.max_wait_ms if batcher else 0,
                             "max_queue": batcher.max_queue if batcher else None,
                             "queued": batcher.depth if batcher else 0},
                "signature": m.signature.to_dict(),
            })
        return out
