"""Runs a plan: every step whose inputs are ready starts at once; each step's output is looked up
by its content key before anything is computed, and identical steps in flight are computed once."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from PIL import Image

from modules.base import ModuleError
from modules.pool import Pool
from modules.values import ImageValue
from program_dsl import Const, Input, Plan, Ref, Step

from .serialize import DecodeError, artifact_keys, decode, encode, to_bytes, type_name
from .store import Store

log = logging.getLogger("nsx.executor")


def step_key(module: str, version: str, consts: Mapping[str, Any], input_keys: Mapping[str, str]) -> str:
    """sha256 of the module, its version, its constant arguments and the keys of its inputs: the same
    sub-program on the same image always has the same key, whoever asks and however it is written."""
    blob = json.dumps({"m": module, "v": version, "a": consts, "i": input_keys}, sort_keys=True,
                      ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8", "surrogatepass")).hexdigest()


@dataclass
class StepRecord:
    id: str
    module: str
    version: str
    vars: list[str]
    args: dict[str, Any]
    inputs: dict[str, str] = field(default_factory=dict)
    key: str | None = None
    status: str = "pending"  # succeeded | failed | skipped
    output: dict[str, Any] | None = None
    cache: str = "off"  # hit | miss | off
    shared: bool = False
    ms: float = 0.0
    queue_ms: float | None = None
    device: str | None = None
    batch_size: int | None = None
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


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


_DOC_TYPES = {"image": "Image", "objects": "Objects", "number": "Number", "bool": "Bool", "text": "Text",
              "list": "List", "none": "None"}
_TYPE_OK = {"Image": {"Image"}, "Objects": {"Objects"}, "Number": {"Number"}, "Bool": {"Bool"},
            "Text": {"Text"}, "List": {"List"}, "None": {"None"}}


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
                      timeout_s: float | None = None,
                      on_step: Callable[[StepRecord], None] | None = None) -> Execution:
        t0 = time.perf_counter()
        records = {s.id: self._record(s) for s in plan.steps}
        values: dict[str, Any] = {}
        keys: dict[str, str] = {}
        done: dict[str, asyncio.Future[bool]] = {s.id: asyncio.get_running_loop().create_future() for s in plan.steps}
        persisted = [True]

        async def run_step(step: Step) -> None:
            rec = records[step.id]
            ok = False
            try:
                ok = await self._run_step(step, rec, images, values, keys, done, cache, persisted)
            except ModuleError as e:
                rec.status, rec.error = "failed", str(e)
            except Exception as e:  # noqa: BLE001 - one step's bug fails that step, not the service
                log.exception("step %s (%s) crashed", step.id, step.module)
                rec.status, rec.error = "failed", f"internal error in {step.module}: {type(e).__name__}: {e}"
            finally:
                if rec.status == "failed":
                    self._count(step.module, "error")
                if not done[step.id].done():
                    done[step.id].set_result(ok)
                if on_step is not None:
                    on_step(rec)

        tasks = [asyncio.create_task(run_step(s)) for s in plan.steps]
        error: str | None = None
        try:
            await asyncio.wait_for(asyncio.gather(*tasks), timeout_s)
        except asyncio.TimeoutError:
            error = f"run timed out after {timeout_s:g} s"
            for rec in records.values():
                if rec.status == "pending":
                    rec.status, rec.error = "failed", error
        steps = [records[s.id] for s in plan.steps]
        failed = [r for r in steps if r.status != "succeeded"]
        result: Any = None
        result_json: dict[str, Any] | None = None
        if not failed:
            result = self._resolve(plan.result, images, values)
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
        return Execution("failed" if failed else "succeeded", result, result_json, steps, error, persisted[0],
                         (time.perf_counter() - t0) * 1000)

    def _record(self, step: Step) -> StepRecord:
        args: dict[str, Any] = {}
        for name, src in step.args.items():
            if isinstance(src, Const):
                args[name] = src.value
            elif isinstance(src, Ref):
                args[name] = {"step": src.step}
            else:
                args[name] = {"input": src.name}
        return StepRecord(step.id, step.module, self._version(step), list(step.vars), args)

    def _version(self, step: Step) -> str:
        module = self.pool.find(step.module, step.pack)
        return module.version if module is not None else step.version

    @staticmethod
    def _resolve(src: Any, images: Mapping[str, ImageValue], values: Mapping[str, Any]) -> Any:
        if isinstance(src, Const):
            return src.value
        if isinstance(src, Input):
            return images[src.name]
        return values[src.step]

    async def _run_step(self, step: Step, rec: StepRecord, images: Mapping[str, ImageValue],
                        values: dict[str, Any], keys: dict[str, str], done: Mapping[str, asyncio.Future[bool]],
                        cache: bool, persisted: list[bool]) -> bool:
        deps = step.refs()
        if deps:
            results = await asyncio.gather(*(done[d] for d in deps))
            bad = [d for d, ok in zip(deps, results) if not ok]
            if bad:
                rec.status, rec.error = "skipped", f"input {', '.join(bad)} failed"
                return False
        consts: dict[str, Any] = {}
        input_keys: dict[str, str] = {}
        args: dict[str, Any] = {}
        for name, src in step.args.items():
            if isinstance(src, Const):
                consts[name] = src.value
                args[name] = src.value
            elif isinstance(src, Input):
                input_keys[name] = images[src.name].key
                args[name] = images[src.name]
            else:
                input_keys[name] = keys[src.step]
                args[name] = values[src.step]
        self._check_types(step, args)
        # The key needs only the inputs' keys, not their values: a step that hits never decodes
        # what it depends on, and a run where every step hits decodes nothing but its result.
        key = step_key(f"{step.pack}.{step.module}", rec.version, consts, input_keys)
        rec.key, rec.inputs = key, input_keys
        keys[step.id] = key
        t0 = time.perf_counter()
        if cache:
            doc = await self._lookup(key)
            if doc is not None:
                values[step.id], rec.output = _Cached(doc), doc
                rec.status, rec.cache = "succeeded", "hit"
                rec.ms = round((time.perf_counter() - t0) * 1000, 3)
                self._count(step.module, "hit")
                return True
            rec.cache = "miss"
            self._count(step.module, "miss")
        for name, value in args.items():
            if isinstance(value, _Cached):
                args[name] = await self._materialize(value)
        task = self._inflight.get(key) if cache else None
        if task is None:
            task = asyncio.create_task(self._compute(step, key, args, cache))
            if cache:
                self._inflight[key] = task
                task.add_done_callback(lambda _t, k=key: self._inflight.pop(k, None))
        else:
            rec.shared = True
        try:
            computed = await asyncio.wait_for(asyncio.shield(task), self.step_timeout_s)
        except asyncio.TimeoutError:
            rec.status, rec.error = "failed", f"timed out after {self.step_timeout_s:g} s"
            return False
        except ModuleError as e:
            rec.status, rec.error = "failed", str(e)
            return False
        values[step.id], rec.output = computed.value, computed.doc
        rec.ms, rec.queue_ms = round(computed.ms, 3), round(computed.queue_ms, 3)
        rec.device, rec.batch_size = computed.device, computed.batch_size
        rec.status = "succeeded"
        if not computed.persisted:
            persisted[0] = False
        return True

    def _check_types(self, step: Step, args: Mapping[str, Any]) -> None:
        """Arguments typed Any at compile time (EVAL results, {X}) are checked here, before the module sees them."""
        module = self.pool.find(step.module, step.pack)
        if module is None:
            return
        for p in module.signature.params:
            if p.name not in args or p.type.name == "Any":
                continue
            value = args[p.name]
            got = _DOC_TYPES.get(value.doc.get("type"), "?") if isinstance(value, _Cached) else type_name(value)
            if got == "None" and p.default is None:
                continue
            if got not in _TYPE_OK.get(p.type.name, {p.type.name}):
                raise ModuleError(f"{step.module} expects {p.type} for '{p.name}', got {got}")

    async def _lookup(self, key: str) -> dict[str, Any] | None:
        """The cached output's JSON, if it and every artifact it names are still in the store."""
        raw = await self.store.get("step", key)
        if raw is None:
            return None
        try:
            doc = json.loads(raw)
            for akey in artifact_keys(doc):
                if not await self.store.exists("art", akey):
                    return None
            return doc  # type: ignore[no-any-return]
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
        value = called.value
        if isinstance(value, Image.Image):
            value = ImageValue(value.convert("RGB"), key)
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
