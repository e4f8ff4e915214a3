"""The run service: a program and its images in, a ``RunRecord`` out. The API, ``nsx run`` and the
benchmarks all run programs through here, so a run is compiled, admitted, executed, recorded and
counted the same way wherever it comes from."""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from modules.batching import QueueFull
from modules.pool import Pool
from modules.routing import may_load
from modules.values import ImageValue
from program_dsl import IMAGE, Limits, Plan, ProgramError, compile_cached

from .executor import Execution, Executor, StepHook, new_record
from .live import LiveRun, LiveRuns
from .metrics import Metrics
from .records import InputImage, RunRecord, RunWarning, Timings, linked
from .store import Store

log = logging.getLogger("nsx.runs")


@dataclass(frozen=True)
class RunLimits:
    run_timeout_s: float = 300.0
    max_concurrent_runs: int = 512
    run_ttl_s: int | None = 30 * 24 * 3600


def run_warnings(plan: Plan, images: Mapping[str, ImageValue], unused: Iterable[str]) -> list[RunWarning]:
    """The compile's warnings, and one for each image sent that the program does not read."""
    warnings = [RunWarning.model_validate(w.to_dict()) for w in plan.warnings]
    idle = [*(name for name in images if name not in plan.inputs), *unused]
    warnings += [RunWarning(message=f"image {name} is not used by the program", code="unused-image")
                 for name in dict.fromkeys(idle)]
    return warnings


def new_run_id() -> str:
    return secrets.token_urlsafe(18)


class RunService:
    def __init__(self, pool: Pool, store: Store, executor: Executor, *, limits: Limits, run_limits: RunLimits,
                 metrics: Metrics | None = None) -> None:
        self.pool = pool
        self.store = store
        self.executor = executor
        self.limits = limits
        self.run_limits = run_limits
        self.metrics = metrics
        self.active = 0
        # Async runs admitted whose task has not begun (and so is not counted in ``active`` yet).
        self.starting = 0
        self.live = LiveRuns()

    def compile(self, program: str, image_names: Iterable[str] | None, *, count: bool = True) -> Plan:
        """The plan for ``program`` given the images sent (None: the default inputs). Raises
        ProgramError; ``count`` says whether a rejected program counts as one (a check does not)."""
        inputs = dict.fromkeys(image_names, IMAGE) if image_names is not None else None
        try:
            return compile_cached(program, self.pool.catalog, inputs, self.limits)
        except ProgramError:
            if count and self.metrics is not None:
                self.metrics.program_errors.inc()
            raise

    async def compile_async(self, program: str, image_names: Iterable[str] | None, *, count: bool = True) -> Plan:
        """``compile``, on a thread while routing may still have to load the text model (seconds),
        so the event loop keeps answering; on the loop once it is loaded (a thread hop costs more
        than most compiles)."""
        if may_load(self.pool.catalog.routes.values()):
            return await asyncio.to_thread(self.compile, program, image_names, count=count)
        return self.compile(program, image_names, count=count)

    def admit(self, plan: Plan) -> None:
        """QueueFull when the service cannot take ``plan`` now (its modules' queues, or the runs in
        flight, are full): asked before a request's images are decoded, and again by ``run``."""
        self.pool.admit(plan)
        if self.active + self.starting >= self.run_limits.max_concurrent_runs:
            raise QueueFull("nsx", 1.0)

    async def run(self, program: str, images: Mapping[str, ImageValue], *, cache: bool = True,
                  timeout_s: float | None = None, on_step: StepHook | None = None,
                  started: float | None = None, plan: Plan | None = None, store: Store | None = None,
                  tenant: str = "", unused: Iterable[str] = (), run_id: str | None = None,
                  admitted: bool = False) -> RunRecord:
        """Run ``program`` on ``images`` (``plan``: already compiled from it by ``compile``). Raises
        ProgramError before anything runs, QueueFull when the service is at capacity; a run that
        fails in a step is a record with status "failed". ``store``: the tenant's view of the store
        that the run and its record are kept in (default: the service's own), and ``tenant`` the
        one whose galleries its modules read. ``unused``: images sent but left unread, since the
        program does not use them (each gets a warning). ``run_id``: the id the record gets (a new
        one by default); ``admitted``: ``admit`` said yes to this run already (an async run, whose
        client was answered on that promise)."""
        store = store if store is not None else self.store
        t0 = started if started is not None else time.perf_counter()
        plan = plan if plan is not None else await self.compile_async(program, images)
        compile_ms = (time.perf_counter() - t0) * 1000
        limit = self.run_limits.run_timeout_s
        timeout = min(timeout_s or limit, limit)
        if not admitted:
            self.admit(plan)
        self.active += 1
        try:
            execution = await self.executor.execute(plan, images, cache=cache, timeout_s=timeout, on_step=on_step,
                                                    decode_result=False, store=store, tenant=tenant)
        finally:
            self.active -= 1
        record = self._record(plan, images, execution, compile_ms, t0, unused, run_id or new_run_id())
        await self._persist(record, store)
        self._report(record, execution, tenant)
        return record

    def _report(self, record: RunRecord, execution: Execution, tenant: str) -> None:
        """One log line for the run and one for each failed step, and their counts in the metrics."""
        who = tenant or None
        hits = sum(1 for s in record.steps if s.cache == "hit")
        log.info("run %s %s in %.1f ms", record.run_id, record.status, execution.ms,
                 extra={"event": "run", "run_id": record.run_id, "tenant": who, "status": record.status,
                        "ms": round(execution.ms, 3), "steps": len(record.steps), "hits": hits, "error": record.error})
        for step in record.steps:
            if step.status != "failed":
                continue
            reason = execution.reasons.get(step.id, "module")
            log.warning("step %s (%s) of run %s failed: %s", step.id, step.module, record.run_id, step.error,
                        extra={"event": "step_failed", "run_id": record.run_id, "step": step.id,
                               "step_module": step.module, "pack": step.pack, "tenant": who, "reason": reason,
                               "error": step.error})
            if self.metrics is not None:
                self.metrics.step_failures.labels(step.module, reason).inc()
        if self.metrics is not None:
            self.metrics.runs.labels(execution.status).inc()
            self.metrics.run_seconds.observe(execution.ms / 1000)

    def _record(self, plan: Plan, images: Mapping[str, ImageValue], execution: Execution, compile_ms: float,
                t0: float, unused: Iterable[str], run_id: str) -> RunRecord:
        warnings = run_warnings(plan, images, unused)
        for step in execution.steps:
            if step.output is not None:
                step.output = linked(step.output)
        return RunRecord(
            run_id=run_id,
            status="succeeded" if execution.status == "succeeded" else "failed",
            result=linked(execution.result_json) if execution.result_json is not None else None,
            error=execution.error,
            steps=execution.steps,
            timings=Timings(compile_ms=round(compile_ms, 3), execute_ms=round(execution.ms, 3),
                            total_ms=round((time.perf_counter() - t0) * 1000, 3)),
            program=plan.canonical,
            plan_fingerprint=plan.fingerprint(),
            inputs={n: InputImage(key=im.key, width=im.width, height=im.height) for n, im in images.items()},
            warnings=warnings,
            modules={s.module: s.version for s in execution.steps},
            created_at=time.time(),
            # Known before the write, so the record is written once and says what it will be.
            persisted=execution.persisted and self.store.durable,
        )

    def start(self, program: str, images: Mapping[str, ImageValue], *, plan: Plan, cache: bool = True,
              timeout_s: float | None = None, started: float | None = None, store: Store | None = None,
              tenant: str = "", unused: Sequence[str] = ()) -> LiveRun:
        """Start ``run`` in the background and return at once (an async run): its state and its
        steps' events are read from the ``LiveRun`` while it runs, its record from the store after.
        Admitted here, so a full service refuses it now (QueueFull) rather than failing it later."""
        self.admit(plan)
        live = LiveRun(run_id=new_run_id(), tenant=tenant, program=plan.canonical, fingerprint=plan.fingerprint(),
                       inputs={n: InputImage(key=im.key, width=im.width, height=im.height) for n, im in images.items()},
                       steps=[new_record(s) for s in plan.steps], warnings=run_warnings(plan, images, unused))

        async def go() -> None:
            self.starting -= 1  # ``run`` counts itself in ``active`` before it first waits
            target = store if store is not None else self.store
            record: RunRecord | None = None
            try:
                record = await self.run(program, images, cache=cache, timeout_s=timeout_s, on_step=live.step_ended,
                                        started=started, plan=plan, store=target, tenant=tenant, unused=unused,
                                        run_id=live.run_id, admitted=True)
            except asyncio.CancelledError:
                # Cancelled by its client (DELETE) or by shutdown: its watchers and its record say so.
                record = await self._ended_early(live, live.cancelled or "the run was cancelled", target)
                if self.metrics is not None:
                    self.metrics.runs.labels("cancelled").inc()
                raise
            except Exception as e:  # the run's watchers get a failed record, not silence
                log.exception("async run %s crashed", live.run_id)
                record = await self._ended_early(live, f"internal error: {type(e).__name__}: {e}", target)
            finally:
                # Whatever happened above, nobody is left waiting on a run that will never end.
                live.finish(record if record is not None else self._crashed(live, "the run ended without a record"))
                self.live.ended(live)

        self.starting += 1
        live.task = asyncio.get_running_loop().create_task(go())
        self.live.add(live)
        return live

    def _crashed(self, live: LiveRun, error: str) -> RunRecord:
        doc = live.state()
        doc.update(status="failed", error=error, persisted=False)
        for step in doc["steps"]:
            if step["status"] == "pending":
                step.update(status="skipped", error=error)
        return RunRecord.model_validate(doc)

    async def _ended_early(self, live: LiveRun, error: str, store: Store) -> RunRecord:
        """The record of an async run that did not end by itself, stored as the run's record."""
        record = self._crashed(live, error)
        try:
            await self._persist(record, store)
        except Exception:  # its watchers still get it from the live run
            log.exception("the record of async run %s could not be stored", live.run_id)
        return record

    async def cancel(self, live: LiveRun, reason: str) -> RunRecord | None:
        """Cancel an async run in flight and wait for its record (None if it had none to give)."""
        if live.task is not None and not live.task.done():
            live.cancelled = reason
            live.task.cancel()
            await asyncio.wait([live.task])
        return live.record

    async def _persist(self, record: RunRecord, store: Store) -> None:
        ttl = self.run_limits.run_ttl_s
        stored = await store.put("run", record.run_id, record.encoded(), ttl)
        if not stored and record.persisted:
            # The store went down between the check and the write: the copy in its fallback must not
            # claim otherwise.
            record.persisted = False
            await store.put("run", record.run_id, record.encoded(refresh=True), ttl)
        if not record.persisted and self.metrics is not None:
            self.metrics.runs_unpersisted.inc()
