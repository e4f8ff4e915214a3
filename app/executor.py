"""Runs a plan: every step whose inputs are ready starts at once; each step's output is looked up
by its content key before anything is computed, and identical steps in flight are computed once."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from modules.base import TENANT_ARG, Module, ModuleError
from modules.pool import ModuleUnavailable, Pool
from modules.values import ImageValue, step_output
from program_dsl import NONE, Const, Input, Plan, Ref, Source, Step, step_key, type_of

from .records import StepRecord
from .serialize import DecodeError, artifact_keys, decode, doc_type, encode, from_bytes, to_bytes
from .store import Item, Store

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
    # Why each failed step failed, as a class for logs and metrics: timeout, run_timeout, module,
    # wrong_type, internal, unavailable.
    reasons: dict[str, str] = field(default_factory=dict)


class WrongType(ModuleError):
    """A module answered a value of another type than its signature declares."""


def failure_kind(e: ModuleError) -> str:
    if isinstance(e, WrongType):
        return "wrong_type"
    return "unavailable" if isinstance(e, ModuleUnavailable) else "module"


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


@dataclass(frozen=True)
class _Keyed:
    """A step's key, known before it runs: from its module, version, constants and its inputs' keys."""

    module: Module | None
    consts: dict[str, Any]
    input_keys: dict[str, str]
    version: str
    key: str
    general: dict[str, Any] | None
    general_key: str | None


@dataclass
class _Run:
    """Everything one execution of a plan keeps while it runs."""

    plan: Plan
    images: Mapping[str, ImageValue]
    cache: bool
    on_step: StepHook | None
    # The tenant's view of the store: every read and write of this run goes through it.
    store: Store
    tenant: str = ""
    records: dict[str, StepRecord] = field(default_factory=dict)
    values: dict[str, Any] = field(default_factory=dict)
    keys: dict[str, str] = field(default_factory=dict)
    done: dict[str, asyncio.Future[bool]] = field(default_factory=dict)
    # Step outputs read for the whole plan at once, by key (None: not in the cache).
    prefetched: dict[str, dict[str, Any] | None] = field(default_factory=dict)
    keyed: dict[str, _Keyed] = field(default_factory=dict)
    # Outputs of broader calls (``Module.general_call``) this run has, by key: its other phrases reuse them.
    generals: dict[str, Any] = field(default_factory=dict)
    general_tasks: dict[str, asyncio.Task[_Computed]] = field(default_factory=dict)
    persisted: bool = True
    reasons: dict[str, str] = field(default_factory=dict)
    ended: int = 0  # steps ended so far

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
    """``artifact_ttl_s``: how long the images and masks a step's output names are kept (default
    ``step_ttl_s``); the run service sets it to outlive the run records that link them."""

    def __init__(self, pool: Pool, store: Store, *, step_ttl_s: int | None = None, step_timeout_s: float = 60.0,
                 on_cache: Callable[[str, str], None] | None = None, artifact_ttl_s: int | None = None) -> None:
        self.pool = pool
        self.store = store
        self.step_ttl_s = step_ttl_s
        self.artifact_ttl_s = artifact_ttl_s if artifact_ttl_s is not None else step_ttl_s
        self.step_timeout_s = step_timeout_s
        self.on_cache = on_cache
        self._inflight: dict[str, asyncio.Task[_Computed]] = {}
        # How many steps wait for each computation: the last one to be cancelled cancels it.
        self._waiters: dict[asyncio.Task[_Computed], int] = {}

    async def execute(self, plan: Plan, images: Mapping[str, ImageValue], *, cache: bool = True,
                      timeout_s: float | None = None, on_step: StepHook | None = None,
                      decode_result: bool = True, store: Store | None = None, tenant: str = "") -> Execution:
        """Run ``plan``. ``decode_result``: also rebuild the answer as a value when it came from the
        cache (its JSON is always there); the run service needs only the JSON. ``store``: the
        tenant's view of the executor's store (``app.store.scoped``) the run reads and writes;
        ``tenant``: whose state (galleries) a ``per_tenant`` module answers from."""
        t0 = time.perf_counter()
        run = _Run(plan, images, cache, on_step, store if store is not None else self.store, tenant)
        if cache:
            await self._prefetch(run)
        tasks = [asyncio.create_task(self._guarded(run, s)) for s in plan.steps]
        error: str | None = None
        try:
            await asyncio.wait_for(asyncio.gather(*tasks), timeout_s)
        except TimeoutError:
            error = f"run timed out after {timeout_s:g} s"
            for rec in run.records.values():
                if rec.status == "pending":
                    rec.status, rec.error = "failed", error
                    run.reasons[rec.id] = "run_timeout"
        steps = [run.records[s.id] for s in plan.steps]
        failed = [r for r in steps if r.status != "succeeded"]
        result: Any = None
        result_json: dict[str, Any] | None = None
        if not failed:
            result = run.resolve(plan.result)
            if isinstance(plan.result, Ref):
                # The step's record holds its JSON already: encoding the value again would redo its
                # masks and PNGs.
                result_json = run.records[plan.result.step].output
            else:
                result_json, _ = encode(result, artifacts=False)  # an input's bytes are stored already
            if isinstance(result, _Cached):
                result_json = result.doc
                try:
                    result = await self._materialize(result, run.store) if decode_result else None
                except ModuleError:
                    result = None  # the JSON answer stands; only the in-process value is missing
        elif error is None:
            first = next(r for r in failed if r.status == "failed")
            error = f"step {first.id} ({first.module}) failed: {first.error}"
        return Execution("failed" if failed else "succeeded", result, result_json, steps, error, run.persisted,
                         (time.perf_counter() - t0) * 1000, run.reasons)

    async def _guarded(self, run: _Run, step: Step) -> None:
        """One step, whatever happens in it: its failure is its record's, never the run's or the service's."""
        rec = run.records[step.id]
        ok = False
        try:
            ok = await self._run_step(run, step, rec)
        except ModuleError as e:
            rec.status, rec.error = "failed", str(e)
            run.reasons[step.id] = failure_kind(e)
        except Exception as e:
            log.exception("step %s (%s) crashed", step.id, step.module)
            rec.status, rec.error = "failed", f"internal error in {step.module}: {type(e).__name__}: {e}"
            run.reasons[step.id] = "internal"
        finally:
            if rec.status == "failed":
                self._count(step.module, "error")
            if not run.done[step.id].done():
                run.done[step.id].set_result(ok)
            if rec.status != "pending":  # still pending: the run was cancelled, and the step never ended
                run.ended += 1
                rec.ended = run.ended
                if run.on_step is not None:
                    run.on_step(rec)

    async def _run_step(self, run: _Run, step: Step, rec: StepRecord) -> bool:
        if not step.pack:
            rec.status, rec.error = "failed", step.route  # a routed call that no enabled module takes
            run.reasons[step.id] = "unavailable"
            return False
        deps = step.refs()
        if deps:
            results = await asyncio.gather(*(run.done[d] for d in deps))
            bad = [d for d, ok in zip(deps, results) if not ok]
            if bad:
                rec.status, rec.error = "skipped", f"input {', '.join(bad)} failed"
                return False
        args = {n: run.resolve(s) for n, s in step.args.items()}
        keyed = run.keyed.get(step.id) or self._keyed(run, step)
        module, key = keyed.module, keyed.key
        self._check_types(step, module, args)
        if module is not None and module.per_tenant:
            args[TENANT_ARG] = run.tenant
        rec.key, rec.inputs = key, keyed.input_keys
        run.keys[step.id] = key
        t0 = time.perf_counter()
        if run.cache:
            doc = await self._lookup(key, run)
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
                args[name] = await self._materialize(value, run.store)
        try:
            if module is not None and keyed.general is not None and keyed.general_key is not None:
                rec.via = keyed.general_key
                computed = await asyncio.wait_for(
                    self._refined(run, step, module, key, keyed.general_key, keyed.general, args, rec),
                    self.step_timeout_s)
            else:
                task, started = self._task(run, step, key, args)
                rec.shared = not started
                computed = await self._share(task, self.step_timeout_s)
        except TimeoutError:
            rec.status, rec.error = "failed", f"timed out after {self.step_timeout_s:g} s"
            run.reasons[step.id] = "timeout"
            return False
        except ModuleError as e:
            rec.status, rec.error = "failed", str(e)
            run.reasons[step.id] = failure_kind(e)
            return False
        run.values[step.id], rec.output = computed.value, computed.doc
        rec.ms, rec.queue_ms = round(computed.ms, 3), round(computed.queue_ms, 3)
        rec.device, rec.batch_size = computed.device, computed.batch_size
        rec.status = "succeeded"
        run.persisted &= computed.persisted
        return True

    async def _refined(self, run: _Run, step: Step, module: Module, key: str, gkey: str, general: dict[str, Any],
                       args: dict[str, Any], rec: StepRecord) -> _Computed:
        """A step computed from a broader call's output (``Module.general_call``): that call found in
        the cache, shared with the same one in flight, or computed, then refined on the loop."""
        t0 = time.perf_counter()
        base: _Computed | None = None
        if gkey in run.generals:
            value = run.generals[gkey]
        elif (doc := await self._lookup(gkey, run) if run.cache else None) is not None:
            value = await self._materialize(_Cached(doc), run.store)
        else:
            # Shared with this run's other phrases even with the cache off: one call, computed once.
            task = run.general_tasks.get(gkey)
            rec.shared = task is not None
            if task is None:
                task, started = self._task(run, step, gkey, {**args, **general})
                rec.shared = not started
                run.general_tasks[gkey] = task
            base = await self._share(task)
            value = base.value
        run.generals[gkey] = value
        refined = step_output(module.refine(value, args), key, args.values())
        doc, artifacts = encode(refined)
        persisted = await self._store_output(run.store, key, doc, artifacts, run.cache)
        if base is None:
            return _Computed(refined, doc, (time.perf_counter() - t0) * 1000, 0.0, "cpu", 1, persisted)
        return _Computed(refined, doc, base.ms, base.queue_ms, base.device, base.batch_size,
                         persisted and base.persisted)

    async def _share(self, task: asyncio.Task[_Computed], timeout_s: float | None = None) -> _Computed:
        """Wait for a computation other steps may share. A timeout leaves it running (its answer is
        cached for the next run that asks); a cancelled waiter — its run cancelled, as when the
        client went away — cancels it only if no other step still waits for it."""
        self._waiters[task] = self._waiters.get(task, 0) + 1
        try:
            # The timeout inside, around the shield: it abandons the wait, never the computation.
            return await asyncio.wait_for(asyncio.shield(task), timeout_s)
        except asyncio.CancelledError:
            if self._waiters.get(task) == 1 and not task.done():
                task.cancel()
            raise
        finally:
            left = self._waiters.get(task, 1) - 1
            if left:
                self._waiters[task] = left
            else:
                self._waiters.pop(task, None)

    def _task(self, run: _Run, step: Step, key: str, args: dict[str, Any]) -> tuple[asyncio.Task[_Computed], bool]:
        """The computation for ``key``: the one already in flight (shared), or a new one (True).
        Shared only within what the run's store shares: one tenant's computation writes its output
        where another tenant's run would not find it."""
        cache = run.cache
        flight = run.store.prefix("step") + key
        task = self._inflight.get(flight) if cache else None
        if task is not None:
            return task, False
        task = asyncio.create_task(self._compute(run.store, step, key, args, cache))
        if cache:
            self._inflight[flight] = task
            task.add_done_callback(lambda _t: self._inflight.pop(flight, None))
        return task, True

    def _check_output(self, step: Step, value: Any) -> None:
        """A module's answer of another type than it declares fails its step rather than reach the
        next one, the cache or the client as if it were right."""
        module = self.pool.find(step.module, step.pack)
        if module is None:
            return
        declared = module.signature.returns
        got = type_of(value)
        if declared.name != "Any" and not declared.accepts(got):
            log.error("%s.%s declares %s and answered %s", step.pack, step.module, declared, got)
            raise WrongType(f"{step.module} (pack {step.pack}) declares {declared} and answered {got}: a bug in "
                              "that module, so its answer is not used")

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

    def _keyed(self, run: _Run, step: Step) -> _Keyed:
        """The step's key. It needs only the inputs' keys, not their values: a step that hits never
        decodes what it depends on, and a run where every step hits decodes nothing."""
        consts = {n: s.value for n, s in step.args.items() if isinstance(s, Const)}
        input_keys = {n: run.key_of(s) for n, s in step.args.items() if not isinstance(s, Const)}
        module = self.pool.find(step.module, step.pack)
        state = module.state(run.tenant) if module is not None else ""
        version = f"{step.version}+{state}" if state else step.version
        name = f"{step.pack}.{step.module}"
        general = module.general_call(consts) if module is not None else None
        return _Keyed(module, consts, input_keys, version, step_key(name, version, consts, input_keys), general,
                      step_key(name, version, general, input_keys) if general is not None else None)

    async def _prefetch(self, run: _Run) -> None:
        """Every step's cached output read before the first step starts: keys chain, so all are known
        up front, and a run costs two store round trips for its lookups, not two per step."""
        wanted: list[str] = []
        for step in run.plan.steps:
            if not step.pack:
                continue
            try:
                keyed = self._keyed(run, step)
            except KeyError:  # an input that cannot be keyed (a step that will be skipped)
                continue
            run.keys[step.id], run.keyed[step.id] = keyed.key, keyed
            wanted.append(keyed.key)
            if keyed.general_key is not None:
                wanted.append(keyed.general_key)
        wanted = list(dict.fromkeys(wanted))
        if not wanted:
            return
        docs: dict[str, dict[str, Any] | None] = {}
        names: dict[str, list[str]] = {}
        for key, raw in zip(wanted, await run.store.get_many("step", wanted)):
            docs[key] = self._parse(key, raw)
            if docs[key] is not None:
                names[key] = artifact_keys(docs[key])  # type: ignore[arg-type]
        needed = list(dict.fromkeys(a for keys in names.values() for a in keys))
        alive = dict(zip(needed, await run.store.touch("art", needed, self.artifact_ttl_s))) if needed else {}
        for key, doc in docs.items():
            run.prefetched[key] = doc if doc is not None and all(alive[a] for a in names[key]) else None

    @staticmethod
    def _parse(key: str, raw: bytes | None) -> dict[str, Any] | None:
        if raw is None:
            return None
        try:
            doc: dict[str, Any] = from_bytes(raw)
            artifact_keys(doc)  # a doc whose artifacts cannot be listed is as good as missing
            return doc
        except (ValueError, KeyError, TypeError) as e:
            log.warning("cached step %s is unreadable (%s); recomputing", key, e)
            return None

    async def _lookup(self, key: str, run: _Run) -> dict[str, Any] | None:
        """The cached output's JSON, if it and every artifact it names are still in the store; those
        artifacts then live on for as long as the run this hit answers."""
        if key in run.prefetched:
            return run.prefetched[key]
        doc = self._parse(key, await run.store.get("step", key))
        if doc is None:
            return None
        keys = artifact_keys(doc)
        if keys and not all(await run.store.touch("art", keys, self.artifact_ttl_s)):
            return None
        return doc

    @staticmethod
    async def _materialize(cached: _Cached, store: Store) -> Any:
        try:
            return await decode(cached.doc, lambda k: store.get("art", k))
        except (DecodeError, ValueError, KeyError, TypeError, OSError) as e:
            raise ModuleError(f"a cached input is no longer readable ({e}); run again with the cache off") from None

    async def _compute(self, store: Store, step: Step, key: str, args: dict[str, Any], cache: bool) -> _Computed:
        called = await self.pool.call(step.module, args, step.pack)
        value = step_output(called.value, key, args.values())
        self._check_output(step, value)
        doc, artifacts = encode(value)
        persisted = await self._store_output(store, key, doc, artifacts, cache)
        return _Computed(value, doc, called.compute_ms, called.queue_ms, called.device, called.batch_size, persisted)

    async def _store_output(self, store: Store, key: str, doc: dict[str, Any], artifacts: dict[str, bytes],
                            cache: bool) -> bool:
        """The output's artifacts always, since the run's record links them whether or not the cache is
        on; the output itself when it is. One round trip for all of them."""
        items = [Item("art", k, data, self.artifact_ttl_s) for k, data in artifacts.items()]
        if cache:
            items.append(Item("step", key, to_bytes(doc), self.step_ttl_s))
        return await store.put_many(items)

    def _count(self, module: str, outcome: str) -> None:
        if self.on_cache is not None:
            self.on_cache(module, outcome)
