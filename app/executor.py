"""Runs a plan: every step whose inputs are ready starts at once; each step's output is looked up
by its content key before anything is computed, and identical steps in flight are computed once."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from modules.base import Module, ModuleError
from modules.pool import Pool
from modules.values import ImageValue, step_output
from program_dsl import NONE, Const, Input, Plan, Ref, Source, Step, step_key, type_of

from .records import StepRecord
from .serialize import DecodeError, artifact_keys, decode, doc_type, encode, to_bytes
from .store import Store

log = logging.getLogger("nsx.executor")

StepHook = Callable[[StepRecord], None]


@dataclass
class Execution:
    status: str
    result: Any
    result_json: dict[str, Any] | None
    steps: list[StepRecord]
    error: str | None
    persisted: bool
    ms: float


@dataclass
class _Computed:
    value: Any
    doc: dict[str, Any]
    ms: float
    queue_ms: float
    device: str
    batch_size: int
    persisted: bool


@dataclass(frozen=True)
class _Cached:
    """A step output found in the cache, kept as its JSON until some computed step needs the value."""

    doc: dict[str, Any]


def new_record(step: Step) -> StepRecord:
    args: dict[str, Any] = {}
    for name, src in step.args.items():
        if isinstance(src, Const):
            args[name] = src.value
        elif isinstance(src, Ref):
            args[name] = {"step": src.step}
        else:
            args[name] = {"input": src.name}
    return StepRecord(id=step.id, module=step.module, pack=step.pack, version=step.version,
                      route=step.route or None, vars=list(step.vars), args=args)


@dataclass
class _Run:
    """Everything one execution of a plan keeps while it runs."""

    plan: Plan
    images: Mapping[str, ImageValue]
    cache: bool
    on_step: StepHook | None
    records: dict[str, StepRecord] = field(default_factory=dict)
    values: dict[str, Any] = field(default_factory=dict)
    keys: dict[str, str] = field(default_factory=dict)
    done: dict[str, asyncio.Future[bool]] = field(default_factory=dict)
    persisted: bool = True

    def __post_init__(self) -> None:
        loop = asyncio.get_running_loop()
        for s in self.plan.steps:
            self.records[s.id] = new_record(s)
            self.done[s.id] = loop.create_future()

    def resolve(self, src: Source) -> Any:
        if isinstance(src, Const):
            return src.value
        if isinstance(src, Input):
            return self.images[src.name]
        return self.values[src.step]

    def key_of(self, src: Input | Ref) -> str:
        return self.images[src.name].key if isinstance(src, Input) else self.keys[src.step]


class Executor:
    def __init__(self, pool: Pool, store: Store, *, step_ttl_s: int | None = None, step_timeout_s: float = 60.0,
                 on_cache: Callable[[str, str], None] | None = None) -> None:
        self.pool = pool
        self.store = store
        self.step_ttl_s = step_ttl_s
        self.step_timeout_s = step_timeout_s
        self.on_cache = on_cache
        self._inflight: dict[str, asyncio.Task[_Computed]] = {}

    async def execute(self, plan: Plan, images: Mapping[str, ImageValue], *, cache: bool = True,
                      timeout_s: float | None = None, on_step: StepHook | None = None) -> Execution:
        t0 = time.perf_counter()
        run = _Run(plan, images, cache, on_step)
        tasks = [asyncio.create_task(self._guarded(run, s)) for s in plan.steps]
        error: str | None = None
        try:
            await asyncio.wait_for(asyncio.gather(*tasks), timeout_s)
        except TimeoutError:
            error = f"run timed out after {timeout_s:g} s"
            for rec in run.records.values():
                if rec.status == "pending":
                    rec.status, rec.error = "failed", error
        steps = [run.records[s.id] for s in plan.steps]
        failed = [r for r in steps if r.status != "succeeded"]
        result: Any = None
        result_json: dict[str, Any] | None = None
        if not failed:
            result = run.resolve(plan.result)
            if isinstance(result, _Cached):
                result_json = result.doc
                try:
                    result = await self._materialize(result)
                except ModuleError:
                    result = None  # the JSON answer stands; only the in-process value is missing
            else:
                result_json, _ = encode(result)
        elif error is None:
            first = next(r for r in failed if r.status == "failed")
            error = f"step {first.id} ({first.module}) failed: {first.error}"
        return Execution("failed" if failed else "succeeded", result, result_json, steps, error, run.persisted,
                         (time.perf_counter() - t0) * 1000)

    async def _guarded(self, run: _Run, step: Step) -> None:
        """One step, whatever happens in it: its failure is its record's, never the run's or the service's."""
        rec = run.records[step.id]
        ok = False
        try:
            ok = await self._run_step(run, step, rec)
        except ModuleError as e:
            rec.status, rec.error = "failed", str(e)
        except Exception as e:
            log.exception("step %s (%s) crashed", step.id, step.module)
            rec.status, rec.error = "failed", f"internal error in {step.module}: {type(e).__name__}: {e}"
        finally:
            if rec.status == "failed":
                self._count(step.module, "error")
            if not run.done[step.id].done():
                run.done[step.id].set_result(ok)
            if run.on_step is not None:
                run.on_step(rec)

    async def _run_step(self, run: _Run, step: Step, rec: StepRecord) -> bool:
        if not step.pack:
            rec.status, rec.error = "failed", step.route  # a routed call that no enabled module takes
            return False
        deps = step.refs()
        if deps:
            results = await asyncio.gather(*(run.done[d] for d in deps))
            bad = [d for d, ok in zip(deps, results) if not ok]
            if bad:
                rec.status, rec.error = "skipped", f"input {', '.join(bad)} failed"
                return False
        consts = {n: s.value for n, s in step.args.items() if isinstance(s, Const)}
        input_keys = {n: run.key_of(s) for n, s in step.args.items() if not isinstance(s, Const)}
        args = {n: run.resolve(s) for n, s in step.args.items()}
        module = self.pool.find(step.module, step.pack)
        self._check_types(step, module, args)
        # The key needs only the inputs' keys, not their values: a step that hits never decodes
        # what it depends on, and a run where every step hits decodes nothing but its result.
        state = module.state() if module is not None else ""
        key = step_key(f"{step.pack}.{step.module}", f"{step.version}+{state}" if state else step.version, consts,
                       input_keys)
        rec.key, rec.inputs = key, input_keys
        run.keys[step.id] = key
        t0 = time.perf_counter()
        if run.cache:
            doc = await self._lookup(key)
            if doc is not None:
                run.values[step.id], rec.output = _Cached(doc), doc
                rec.status, rec.cache = "succeeded", "hit"
                rec.ms = round((time.perf_counter() - t0) * 1000, 3)
                self._count(step.module, "hit")
                return True
            rec.cache = "miss"
            self._count(step.module, "miss")
        for name, value in args.items():
            if isinstance(value, _Cached):
                args[name] = await self._materialize(value)
        task, started = self._task(step, key, args, run.cache)
        rec.shared = not started
        try:
            computed = await asyncio.wait_for(asyncio.shield(task), self.step_timeout_s)
        except TimeoutError:
            rec.status, rec.error = "failed", f"timed out after {self.step_timeout_s:g} s"
            return False
        except ModuleError as e:
            rec.status, rec.error = "failed", str(e)
            return False
        run.values[step.id], rec.output = computed.value, computed.doc
        rec.ms, rec.queue_ms = round(computed.ms, 3), round(computed.queue_ms, 3)
        rec.device, rec.batch_size = computed.device, computed.batch_size
        rec.status = "succeeded"
        run.persisted &= computed.persisted
        return True

    def _task(self, step: Step, key: str, args: dict[str, Any], cache: bool) -> tuple[asyncio.Task[_Computed], bool]:
        """The computation for ``key``: the one already in flight (shared), or a new one (True)."""
        task = self._inflight.get(key) if cache else None
        if task is not None:
            return task, False
        task = asyncio.create_task(self._compute(step, key, args, cache))
        if cache:
            self._inflight[key] = task
            task.add_done_callback(lambda _t: self._inflight.pop(key, None))
        return task, True

    def _check_types(self, step: Step, module: Module | None, args: Mapping[str, Any]) -> None:
        """Arguments typed Any at compile time (EVAL results, {X}) are checked here, before the module sees them."""
        if module is None:
            return
        for p in module.signature.params:
            if p.name not in args or p.type.name == "Any":
                continue
            value = args[p.name]
            got = doc_type(value.doc) if isinstance(value, _Cached) else type_of(value)
            if got == NONE and p.default is None:
                continue
            if not p.type.accepts(got):
                raise ModuleError(f"{step.module} expects {p.type} for '{p.name}', got {got}")

    async def _lookup(self, key: str) -> dict[str, Any] | None:
        """The cached output's JSON, if it and every artifact it names are still in the store."""
        raw = await self.store.get("step", key)
        if raw is None:
            return None
        try:
            doc: dict[str, Any] = json.loads(raw)
            for akey in artifact_keys(doc):
                if not await self.store.exists("art", akey):
                    return None
            return doc
        except (ValueError, KeyError, TypeError) as e:
            log.warning("cached step %s is unreadable (%s); recomputing", key, e)
            return None

    async def _materialize(self, cached: _Cached) -> Any:
        try:
            return await decode(cached.doc, lambda k: self.store.get("art", k))
        except (DecodeError, ValueError, KeyError, TypeError, OSError) as e:
            raise ModuleError(f"a cached input is no longer readable ({e}); run again with the cache off") from None

    async def _compute(self, step: Step, key: str, args: dict[str, Any], cache: bool) -> _Computed:
        called = await self.pool.call(step.module, args, step.pack)
        value = step_output(called.value, key, args.values())
        doc, artifacts = encode(value)
        persisted = True
        if cache:
            for akey, data in artifacts.items():
                persisted &= await self.store.put("art", akey, data, self.step_ttl_s)
            persisted &= await self.store.put("step", key, to_bytes(doc), self.step_ttl_s)
        return _Computed(value, doc, called.compute_ms, called.queue_ms, called.device, called.batch_size, persisted)

    def _count(self, module: str, outcome: str) -> None:
        if self.on_cache is not None:
            self.on_cache(module, outcome)
