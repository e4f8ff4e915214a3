"""The pool: every enabled module loaded once, on its device, and called without blocking the loop."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from program_dsl import Catalog

from .base import Module, ModuleError, Pack
from .device import resolve_device
from .packs import build_catalog, modules_by_name


class ModuleUnavailable(ModuleError):
    """The program names a module that is declared but no enabled pack here runs."""


@dataclass
class ModuleState:
    pack: str
    state: str = "pending"  # pending | loading | ready | failed
    load_ms: float = 0.0
    error: str | None = None


class Pool:
    def __init__(self, packs: Iterable[Pack], device: str = "auto") -> None:
        self.packs = list(packs)
        self.device = resolve_device(device)
        self.modules: dict[str, Module] = modules_by_name(self.packs)
        self.catalog: Catalog = build_catalog(self.packs)
        self.states: dict[str, ModuleState] = {}
        for pack in self.packs:
            for m in pack.modules:
                self.states[m.name] = ModuleState(pack.name)
        # One worker per device: a model's forward never runs on the event loop.
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"nsx-{self.device}")

    @property
    def ready(self) -> bool:
        return all(s.state == "ready" for s in self.states.values())

    async def start(self) -> None:
        """Load and warm every module; a module that fails to load is marked failed, not fatal."""
        loop = asyncio.get_running_loop()
        for name, module in self.modules.items():
            state = self.states[name]
            state.state = "loading"
            t0 = time.perf_counter()
            try:
                await loop.run_in_executor(self._worker, self._load, module)
                state.state = "ready"
            except Exception as e:  # noqa: BLE001 - a broken pack must not take the service down
                state.state, state.error = "failed", f"{type(e).__name__}: {e}"
            state.load_ms = (time.perf_counter() - t0) * 1000

    def _load(self, module: Module) -> None:
        module.load(self.device if not module.cheap else "cpu")
        module.warmup()

    def get(self, name: str) -> Module:
        module = self.modules.get(name)
        if module is None:
            sig = self.catalog.get(name)
            pack = sig.pack if sig is not None else "?"
            raise ModuleUnavailable(f"{name} needs the '{pack}' pack, which is not enabled here "
                                    f"(enabled packs: {', '.join(p.name for p in self.packs) or 'none'})")
        state = self.states[name]
        if state.state != "ready":
            raise ModuleUnavailable(f"{name} is not ready ({state.state}{': ' + state.error if state.error else ''})")
        return module

    async def call(self, name: str, args: dict[str, Any]) -> Any:
        """Run one call; raises ModuleError (or the module's exception) for a failed item."""
        module = self.get(name)
        if module.cheap:
            result = module.forward([args])[0]
        else:
            loop = asyncio.get_running_loop()
            result = (await loop.run_in_executor(self._worker, module.forward, [args]))[0]
        if isinstance(result, BaseException):
            raise result
        return result

    def describe(self) -> list[dict[str, Any]]:
        out = []
        for name, m in sorted(self.modules.items()):
            s = self.states[name]
            out.append({
                "name": name, "pack": s.pack, "version": m.version, "device": m.device if not m.cheap else "cpu",
                "state": s.state, "load_ms": round(s.load_ms, 3), "error": s.error,
                "batchable": m.batchable, "max_batch_size": m.max_batch_size,
                "signature": m.signature.to_dict(),
            })
        return out

    async def close(self) -> None:
        self._worker.shutdown(wait=False, cancel_futures=True)
