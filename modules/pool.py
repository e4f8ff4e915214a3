"""The pool: every enabled module loaded once onto its device and kept there; calls run off the
event loop on one worker per device, and batchable modules merge concurrent calls into one forward.

Placement: each module goes where ``NSX_MODULE_DEVICES`` puts it (by name, or pack-qualified), else on
the pool's device; with ``NSX_DEVICE=auto|cuda``, several CUDA devices visible and no mapping for a
module, models with weights are spread across the devices by size (``device.spread``). Symbolic
(``cheap``) modules whose time is ``bounded`` by their arguments run on the event loop, and so do the
calls such a module marks ``inline`` (a filter by known words): they never queue behind a device's
batches. Other symbolic modules run on the symbolic worker, where a step's timeout can act.

Memory: with a budget for a device (``NSX_DEVICE_MEMORY_MB``), a module about to load there first
unloads the least recently used idle modules on that device until its size fits (its measured size
after an earlier load, else ``expected_bytes``). A module with calls queued or running is never
unloaded; an unloaded one loads again on its next call. Loads on a budgeted device are serialised,
so two loads never both count the same free bytes.

Start-up: packs load at the same time where there are cores to spare (``LOAD_THREADS``), each
pack's modules one after another (they may share a model), on load threads of their own, so the
device workers stay free and one pack's file reads and device copies overlap another's. The shared
text model (``modules.words``) is not loaded then: it
loads on first need, or when ``warm_words`` is called (the service does so once it is ready)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from program_dsl import Catalog, Plan

from . import words
from .base import FunctionModule, Module, ModuleError, Pack
from .batching import Batcher, BatchHook, BatchStats, Called, QueueFull, run_forward
from .device import (
    PlacementError,
    canonical,
    check_present,
    configure_switch_interval,
    configure_torch,
    cuda_count,
    resolve_device,
    spread,
)
from .packs import build_catalog, resolve_modules

log = logging.getLogger("nsx.pool")


def _load_threads() -> int:
    # Packs loading at once at start-up. Most of a load holds the GIL (imports, graph building);
    # only file reads, runtime sessions, warm-up forwards and device copies overlap. On two cores
    # two load threads were slower than one (more CPU, lost to contention), so a core is left over.
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(4, cores - 1))


LOAD_THREADS = _load_threads()


class ModuleUnavailable(ModuleError):
    """The program names a module that is declared but no enabled pack here runs."""


@dataclass
class PoolConfig:
    device: str = "auto"
    batching: bool = True
    max_batch_size: int | None = None  # None: each module's own
    max_wait_ms: float = 5.0
    # Cut saturated queues at the batch size measured cheapest per item (batching.BatchCap), up to
    # the cap above; False: always at the cap.
    adapt_batch: bool = True
    max_queue: int = 256
    lazy: bool = False
    choose: Mapping[str, str] = field(default_factory=dict)
    # True when packs were named explicitly (NSX_PACKS): then a module that fails to load keeps the
    # service unready. By default a module that cannot load here is reported and left out.
    strict: bool = False
    # Module name (plain or pack-qualified) → device; unnamed modules go on ``device`` or are spread.
    module_devices: Mapping[str, str] = field(default_factory=dict)
    # Device → memory budget in bytes; a device without one loads whatever it is asked to.
    device_memory: Mapping[str, int] = field(default_factory=dict)
    # Threads per torch op on each device's worker (None: torch's default, every core).
    torch_threads: int | None = None
    # sys.setswitchinterval for the process, in ms (None: leave Python's 5 ms).
    switch_interval_ms: float | None = None


class MemoryRow(NamedTuple):
    module: str  # qualified: two packs' LOC may sit on different devices
    device: str
    bytes: int
    unloads: int


# States in which a module answers calls (an unloaded one after loading again).
SERVING = ("ready", "unloading", "unloaded")


@dataclass
class ModuleState:
    pack: str
    state: str = "pending"  # pending | loading | ready | failed | unloading | unloaded
    load_ms: float = 0.0
    error: str | None = None
    inflight: int = 0  # calls queued or running: while > 0 the module is not idle, never unloaded
    last_used: float = 0.0  # time.monotonic() of its last call starting or ending: the LRU order
    size: int = 0  # memory_bytes measured at its last load (0: never loaded, or holds nothing)
    unloads: int = 0


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
        self.placement = self._place()
        for qname, module in self.modules.items():
            module.device = self.placement[qname]
        self.budgets = {check_present(d, f"NSX_DEVICE_MEMORY_MB ({d})"): b
                        for d, b in self.config.device_memory.items()}
        configure_switch_interval(self.config.switch_interval_ms)
        self._workers: dict[str, ThreadPoolExecutor] = {}
        self._batchers: dict[str, Batcher] = {}
        self._load_locks: dict[str, asyncio.Lock] = {}
        self._device_locks: dict[str, asyncio.Lock] = {}
        for qname, module in self.modules.items():
            if module.batchable and self.config.batching:
                size = self.config.max_batch_size or module.max_batch_size
                self._batchers[qname] = Batcher(module, self._worker(self.placement[qname]), max_batch_size=size,
                                                max_wait_ms=self.config.max_wait_ms, max_queue=self.config.max_queue,
                                                on_batch=on_batch, adapt=self.config.adapt_batch)

    def _place(self) -> dict[str, str]:
        """Every module's device: named ones where NSX_MODULE_DEVICES says (a qualified name wins over
        a plain one), the rest on the pool's device, or spread by size over several CUDA devices."""
        mapping = self.config.module_devices
        for name, device in mapping.items():
            if name in self.modules or any(m.name == name for m in self.modules.values()):
                check_present(device, f"NSX_MODULE_DEVICES ({name}={device})")
            elif name.rpartition(".")[2] in self.catalog or name in self.catalog:
                # Declared, or offered by a pack that is not enabled here: the setting may serve
                # another deployment's packs, so it is not an error.
                log.warning("NSX_MODULE_DEVICES places %s, which no enabled pack here runs", name)
            else:
                raise PlacementError(f"NSX_MODULE_DEVICES ({name}={device}): no module is called {name!r}")
        out: dict[str, str] = {}
        unplaced: list[str] = []
        for qname, module in self.modules.items():
            named = mapping.get(qname) or mapping.get(module.name)
            if module.cheap or isinstance(module, FunctionModule):
                # On the event loop, or (a function of its arguments that takes time: pixel edits)
                # on the symbolic worker: never in a device's queue, whatever a mapping says.
                out[qname] = "cpu"
            elif named is not None:
                out[qname] = named
            else:
                out[qname] = self.device
                unplaced.append(qname)
        count = cuda_count() if self.device.startswith("cuda") else 0
        if self.config.device.lower() in ("auto", "cuda") and count >= 2 and unplaced:
            devices = [f"cuda:{i}" for i in range(count)]
            for qname in unplaced:
                self.modules[qname].device = devices[0]  # sizes as on CUDA: in half precision where allowed
            units: dict[str, int] = {}
            for qname in unplaced:
                unit = self.modules[qname].memory_group() or qname
                units[unit] = max(units.get(unit, 0), self.modules[qname].expected_bytes())
            pinned: dict[tuple[str, str], int] = {}  # (weights, device) → bytes: a shared copy once
            for qname, device in out.items():
                if qname not in unplaced and device.startswith("cuda"):
                    self.modules[qname].device = device
                    key = (self.modules[qname].memory_group() or qname, canonical(device))
                    pinned[key] = max(pinned.get(key, 0), self.modules[qname].expected_bytes())
            already: dict[str, int] = {}
            for (_, device), size in pinned.items():
                already[device] = already.get(device, 0) + size
            placed = spread({u: b for u, b in units.items() if b > 0}, devices, already)
            for qname in unplaced:
                out[qname] = placed.get(self.modules[qname].memory_group() or qname, self.device)
        return out

    def _symbolic(self) -> ThreadPoolExecutor:
        """Where symbolic modules that take time run (pixel edits, a filter by an unseen word): apart
        from every device's worker, so they never wait behind a batch of neural work."""
        if "symbolic" not in self._workers:
            # Four: a module that hangs keeps its thread (no thread can be stopped), and the step
            # timeout answers for it meanwhile; the others still have threads to run on.
            self._workers["symbolic"] = ThreadPoolExecutor(max_workers=4, thread_name_prefix="nsx-symbolic")
        return self._workers["symbolic"]

    def _worker(self, device: str) -> ThreadPoolExecutor:
        # One worker per device: kernels on one device queue there anyway, and the loop stays free.
        device = canonical(device)
        if device not in self._workers:
            self._workers[device] = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"nsx-{device}",
                                                       initializer=configure_torch,
                                                       initargs=(self.config.torch_threads,))
        return self._workers[device]

    # -- lifecycle ----------------------------------------------------------------------------
    @property
    def ready(self) -> bool:
        counted = [s for s in self.states.values() if self.config.strict or s.state != "failed"]
        if self.config.lazy:
            return all(s.state != "failed" for s in counted)
        return all(s.state in SERVING for s in counted)

    async def start(self, only: Iterable[str] | None = None) -> None:
        """Load and warm every module (unless lazy), or the qualified names in ``only`` (lazy or
        not); one that fails is marked failed, not fatal. Packs load at the same time, each one's
        modules in its order; the text model is left to load on first need (``warm_words``)."""
        if only is None and self.config.lazy:
            return
        wanted = list(self.modules) if only is None else [q for q in dict.fromkeys(only) if q in self.modules]
        by_pack: dict[str, list[str]] = {}
        for qname in wanted:
            by_pack.setdefault(self.states[qname].pack, []).append(qname)
        if not by_pack:
            return
        loader = ThreadPoolExecutor(max_workers=min(len(by_pack), LOAD_THREADS), thread_name_prefix="nsx-load")

        async def load_pack(qnames: list[str]) -> None:
            for qname in qnames:
                await self._ensure_loaded(qname, loader)

        try:
            await asyncio.gather(*(load_pack(q) for q in by_pack.values()))
        finally:
            loader.shutdown(wait=False)

    async def warm_words(self) -> None:
        """Load the text model and embed every vocabulary now, on a thread of its own, so the first
        phrase that needs them does not wait (``modules.words.warm_all``). A model that cannot load
        is logged and reported by ``words.text_model_state``; what needs it fails with the reason."""
        thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="nsx-words")
        try:
            await asyncio.get_running_loop().run_in_executor(thread, words.warm_all)
        except words.TextModelUnavailable:
            pass  # logged where it failed; each call that needs the model says why it cannot
        finally:
            thread.shutdown(wait=False)

    async def _ensure_loaded(self, qname: str, executor: ThreadPoolExecutor | None = None) -> None:
        state = self.states[qname]
        if state.state in ("ready", "failed"):
            return
        lock = self._load_locks.setdefault(qname, asyncio.Lock())
        async with lock:
            if state.state in ("ready", "failed"):
                return
            module = self.modules[qname]
            device = self.placement[qname]
            budgeted = canonical(device) in self.budgets
            guard = self._device_locks.setdefault(canonical(device), asyncio.Lock()) if budgeted else None
            async with guard or contextlib.nullcontext():
                if budgeted:
                    await self._make_room(qname, device)
                state.state = "loading"
                t0 = time.perf_counter()
                try:
                    # A load asked for by a call runs on the device's worker, like the call after it.
                    await asyncio.get_running_loop().run_in_executor(executor or self._worker(device), self._load,
                                                                     module, device)
                    state.size = module.memory_bytes()
                    state.state = "ready"
                except Exception as e:
                    log.exception("module %s failed to load", qname)
                    state.state, state.error = "failed", f"{type(e).__name__}: {e}"
                state.load_ms = (time.perf_counter() - t0) * 1000
                state.last_used = time.monotonic()

    @staticmethod
    def _load(module: Module, device: str) -> None:
        module.load(device)
        module.device = device
        module.warmup()

    # -- memory ------------------------------------------------------------------------------------
    def _group(self, qname: str) -> str:
        return self.modules[qname].memory_group() or qname

    def _size(self, qname: str) -> int:
        """Bytes the module takes on its device: as measured when it last loaded, else its estimate."""
        return self.states[qname].size or self.modules[qname].expected_bytes()

    def _on(self, device: str) -> list[str]:
        return [q for q, d in self.placement.items() if canonical(d) == canonical(device)]

    def _resident(self, device: str) -> dict[str, int]:
        """Weight groups holding memory on ``device`` now → their bytes (a shared copy counted once)."""
        out: dict[str, int] = {}
        for q in self._on(device):
            if self.states[q].state in ("ready", "loading", "unloading"):
                g = self._group(q)
                out[g] = max(out.get(g, 0), self._size(q))
        return out

    def _idle(self, group: str, device: str) -> list[str] | None:
        """The group's loaded modules on ``device`` if every one of them could be unloaded right now."""
        members = [q for q in self._on(device) if self._group(q) == group]
        # A member with a call waiting (even one not loaded yet) would load the weights straight back.
        if any(self.states[q].inflight > 0 for q in members):
            return None
        holding = [q for q in members if self.states[q].state in ("ready", "loading", "unloading")]
        for q in holding:
            lock = self._load_locks.get(q)
            if self.states[q].state != "ready" or (lock is not None and lock.locked()):
                return None
        return holding

    async def _make_room(self, qname: str, device: str) -> None:
        """Unload least recently used idle modules on ``device`` until ``qname`` fits its budget. When
        even that is not enough (the rest are busy, or it alone is larger) it loads anyway, with a
        warning: the budget is a target below the device's real limit, not a reason to refuse."""
        budget = self.budgets[canonical(device)]
        group = self._group(qname)
        resident = self._resident(device)
        if group in resident:
            return  # its weights are here already (another name for the same model)
        need = self._size(qname)
        if need == 0:
            return  # nothing to make room for (a symbolic module, or one whose size is unknown)
        used = sum(resident.values())
        last = {g: max(self.states[q].last_used for q in self._on(device) if self._group(q) == g) for g in resident}
        for victim in sorted(resident, key=lambda g: last[g]):
            if used + need <= budget:
                return
            members = self._idle(victim, device)
            if not members or resident[victim] == 0:
                continue
            await self._unload(members, device)
            used -= resident[victim]
        if used + need > budget:
            log.warning("%s needs %d bytes on %s; %d of its %d-byte budget are held by modules in use",
                        qname, need, device, used, budget)

    async def _unload(self, members: list[str], device: str) -> None:
        """Unload one weight group. Its modules' locks are taken and their states set before the first
        await, so a call arriving meanwhile waits to load them again instead of finding them gone."""
        locks = [self._load_locks.setdefault(q, asyncio.Lock()) for q in members]
        for lock in locks:
            await lock.acquire()  # free (``_idle`` checked), so this returns without yielding
        try:
            for q in members:
                self.states[q].state = "unloading"
            loop = asyncio.get_running_loop()
            for q in members:
                log.info("unloading %s from %s to make room", q, device)
                try:
                    await loop.run_in_executor(self._worker(device), self.modules[q].unload)
                except Exception:
                    log.exception("module %s failed to unload", q)
                self.states[q].state = "unloaded"
                self.states[q].unloads += 1
        finally:
            for lock in locks:
                lock.release()

    def memory(self) -> list[MemoryRow]:
        """Every module that runs off the event loop: where it is, what it holds there now."""
        return [MemoryRow(q, m.device, m.memory_bytes() if self.states[q].state == "ready" else 0,
                          self.states[q].unloads)
                for q, m in sorted(self.modules.items()) if not m.cheap]

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
        state = self.states[q]
        # Counted from before loading to the result, so the module is never unloaded from under it.
        state.inflight += 1
        state.last_used = time.monotonic()
        try:
            return await self._call(q, name, args)
        finally:
            state.inflight -= 1
            state.last_used = time.monotonic()

    async def _call(self, q: str, name: str, args: dict[str, Any]) -> Called:
        module = self.modules[q]
        state = self.states[q]
        if state.state != "ready":
            await self._ensure_loaded(q)
        if state.state != "ready":
            raise ModuleUnavailable(f"{name} could not be loaded ({state.error})")
        if module.bounded and (module.cheap or (not module.batchable and module.inline(args))):
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
        symbolic = module.cheap or isinstance(module, FunctionModule)
        worker = self._symbolic() if symbolic else self._worker(self.placement[q])
        results, compute_s = await loop.run_in_executor(worker, run_forward, module, [args])
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
                "device": m.device, "state": s.state, "load_ms": round(s.load_ms, 3), "error": s.error,
                "parameters": m.parameter_count(), "default": self.default.get(m.name) == qname,
                "memory_bytes": m.memory_bytes() if s.state == "ready" else 0, "unloads": s.unloads,
                "batching": {"enabled": batcher is not None, "max_batch_size": batcher.max_batch_size if batcher else 1,
                             "max_wait_ms": self.config.max_wait_ms if batcher else 0,
                             "max_queue": batcher.max_queue if batcher else None,
                             "queued": batcher.depth if batcher else 0},
                "signature": m.signature.to_dict(),
            })
        return out
