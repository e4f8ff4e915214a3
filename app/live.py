"""Runs in flight that someone may watch: asynchronous runs (``"options": {"async": true}``) answer at
once, and their state and their steps' events are read from here while they run.

A ``LiveRun`` lives in the process that runs it, from its start until its record is written: those
watching it then get the end from here, and anyone who asks later reads the stored record (its
events replayed by ``record_events``). A deployment of several processes behind one address sees a
run in flight only on the process that runs it."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from .records import InputImage, RunRecord, RunWarning, StepRecord, linked

log = logging.getLogger("nsx.runs")

__all__ = ["Event", "LiveRun", "LiveRuns", "record_events", "sse"]

# An event of a run: ("step", the step's record as JSON) as each step ends, then ("run", the record).
Event = tuple[str, dict[str, Any]]


def step_doc(step: StepRecord) -> dict[str, Any]:
    doc = step.model_dump(mode="json")
    if doc.get("output") is not None:
        doc["output"] = linked(doc["output"])
    return doc


@dataclass
class LiveRun:
    run_id: str
    tenant: str
    program: str
    fingerprint: str
    inputs: dict[str, InputImage]
    steps: list[StepRecord]
    warnings: list[RunWarning] = field(default_factory=list)
    started_at: float = field(default_factory=time.time)
    t0: float = field(default_factory=time.perf_counter)
    # Step ids in the order they ended: the events replay them in that order.
    ended: list[str] = field(default_factory=list)
    record: RunRecord | None = None
    task: asyncio.Task[Any] | None = None
    # Why it was cancelled, when it was: its record's error.
    cancelled: str | None = None
    _tick: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self._at = {s.id: i for i, s in enumerate(self.steps)}

    def step_ended(self, step: StepRecord) -> None:
        """The executor's step hook: ``step`` (its record, by id one of ``steps``) has ended."""
        if step.id not in self.ended:
            self.steps[self._at[step.id]] = step
            self.ended.append(step.id)
            self._wake()

    def finish(self, record: RunRecord) -> None:
        self.record = record
        self._wake()

    def _wake(self) -> None:
        self._tick.set()
        self._tick = asyncio.Event()

    def state(self) -> dict[str, Any]:
        """The run as a record: its final one once it has ended, else "running" with the steps so far."""
        if self.record is not None:
            doc: dict[str, Any] = json.loads(self.record.encoded())
            return doc
        elapsed = (time.perf_counter() - self.t0) * 1000
        return {
            "run_id": self.run_id, "status": "running", "result": None, "error": None,
            "steps": [step_doc(s) for s in self.steps],
            "timings": {"compile_ms": 0.0, "execute_ms": round(elapsed, 3), "total_ms": round(elapsed, 3)},
            "program": self.program, "plan_fingerprint": self.fingerprint,
            "inputs": {n: im.model_dump() for n, im in self.inputs.items()},
            "warnings": [w.model_dump() for w in self.warnings],
            "modules": {s.module: s.version for s in self.steps}, "created_at": self.started_at,
            "persisted": False,
        }

    async def events(self) -> AsyncIterator[Event]:
        """Every step's event as it ends (those already ended first), then the run's."""
        sent = 0
        while True:
            while sent < len(self.ended):
                yield "step", step_doc(self.steps[self._at[self.ended[sent]]])
                sent += 1
            if self.record is not None:
                # Steps the record holds that never reported (none, unless the run was cut short).
                for s in self.record.steps:
                    if s.id not in self.ended:
                        yield "step", step_doc(s)
                yield "run", json.loads(self.record.encoded())
                return
            await self._tick.wait()


async def record_events(record: Mapping[str, Any]) -> AsyncIterator[Event]:
    """The events of a run that has ended, from its stored record: its steps in the order they ended
    (as they were sent live, so a client that reconnects with Last-Event-ID resumes where it was),
    steps that never ended after them in plan order, then the record."""
    steps = list(record.get("steps") or [])
    order = sorted(range(len(steps)), key=lambda i: (steps[i].get("ended") is None, steps[i].get("ended") or 0, i))
    for i in order:
        yield "step", steps[i]
    yield "run", dict(record)


class LiveRuns:
    """The runs in flight on this process, by tenant and id."""

    def __init__(self) -> None:
        self._runs: dict[tuple[str, str], LiveRun] = {}

    def add(self, run: LiveRun) -> None:
        self._runs[(run.tenant, run.run_id)] = run

    def get(self, tenant: str, run_id: str) -> LiveRun | None:
        return self._runs.get((tenant, run_id))

    def ended(self, run: LiveRun) -> None:
        """``run`` has its record, in the store already: those watching it hold it still, and the
        store answers everyone else."""
        self._runs.pop((run.tenant, run.run_id), None)

    async def close(self, wait_s: float = 0.0) -> None:
        """At shutdown: let what still runs end for up to ``wait_s``, then cancel the rest, whose
        records say the server shut down before they ended."""
        tasks = [r.task for r in self._runs.values() if r.task is not None and not r.task.done()]
        if tasks and wait_s > 0:
            log.info("waiting up to %.0f s for %d async runs", wait_s, len(tasks))
            await asyncio.wait(tasks, timeout=wait_s)
        for run in list(self._runs.values()):
            if run.task is not None and not run.task.done():
                run.cancelled = "the server shut down before the run ended"
                run.task.cancel()
        left = [t for t in tasks if not t.done()]
        if left:
            await asyncio.wait(left, timeout=5)
        self._runs.clear()


async def sse(events: AsyncIterator[tuple[str, str]], keepalive_s: float = 15.0,
              first_id: int = 1) -> AsyncIterator[bytes]:
    """Server-Sent Events from (event, JSON data) pairs, numbered from ``first_id``, with a comment line every
    ``keepalive_s`` of silence so that proxies keep an idle stream open. The headers are sent by
    then, so a failure in ``events`` ends the stream with a "failure" event that says so (and
    ``retry`` set far off), rather than a dropped connection a browser would reopen in a loop."""
    n = first_id - 1
    it = aiter(events)
    pending: asyncio.Task[tuple[str, str]] | None = None
    try:
        while True:
            if pending is None:
                pending = asyncio.ensure_future(anext(it))
            done, _ = await asyncio.wait({pending}, timeout=keepalive_s)
            if not done:
                yield b": keep-alive\n\n"
                continue
            try:
                name, data = pending.result()
            except StopAsyncIteration:
                return
            except Exception as e:
                log.exception("an event stream failed")
                message = json.dumps({"message": f"the event stream failed: {type(e).__name__}",
                                      "hint": "read the run at /v1/runs/{id} instead"})
                yield f"retry: 3600000\nevent: failure\ndata: {message}\n\n".encode()
                return
            finally:
                pending = None
            n += 1
            yield f"id: {n}\nevent: {name}\ndata: {data}\n\n".encode()
    finally:
        if pending is not None:
            pending.cancel()
