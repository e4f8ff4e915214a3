"""Runs in flight that someone may watch: asynchronous runs (``"options": {"async": true}``) answer at
once, and their state and their steps' events are read from here while they run.

A ``LiveRun`` lives in the process that runs it, from its start until its record is written: those
watching it then get the end from here, and anyone who asks later reads the stored record (its
events replayed by ``record_events``). A deployment of several processes behind one address sees a
run in flight only on the process that runs it."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from .records import InputImage, RunRecord, StepRecord, linked

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
    started_at: float = field(default_factory=time.time)
    t0: float = field(default_factory=time.perf_counter)
    # Step ids in the order they ended: the events replay them in that order.
    ended: list[str] = field(default_factory=list)
    record: RunRecord | None = None
    task: asyncio.Task[Any] | None = None
    _tick: asyncio.Event = field(default_factory=asyncio.Event)

    def step_ended(self, step: StepRecord) -> None:
        """The executor's step hook: ``step`` (its record, by id one of ``steps``) has ended."""
        if step.id not in self.ended:
            self.steps = [step if s.id == step.id else s for s in self.steps]
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
            "inputs": {n: im.model_dump() for n, im in self.inputs.items()}, "warnings": [],
            "modules": {s.module: s.version for s in self.steps}, "created_at": self.started_at,
            "persisted": False,
        }

    async def events(self) -> AsyncIterator[Event]:
        """Every step's event as it ends (those already ended first), then the run's."""
        sent = 0
        while True:
            while sent < len(self.ended):
                by_id = {s.id: s for s in self.steps}
                yield "step", step_doc(by_id[self.ended[sent]])
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
    """The events of a run that has ended, from its stored record: its steps in plan order, then it."""
    for step in record.get("steps") or []:
        yield "step", step
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

    def running(self) -> list[LiveRun]:
        return [r for r in self._runs.values() if r.record is None]

    def __len__(self) -> int:
        return len(self._runs)

    async def close(self) -> None:
        """Cancel what still runs (shutdown): their records are not written."""
        tasks = [r.task for r in self._runs.values() if r.task is not None and not r.task.done()]
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=5)
        self._runs.clear()


async def sse(events: AsyncIterator[tuple[str, str]], keepalive_s: float = 15.0) -> AsyncIterator[bytes]:
    """Server-Sent Events from (event, JSON data) pairs, numbered from 1, with a comment line every
    ``keepalive_s`` of silence so that proxies keep an idle stream open."""
    n = 0
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
            finally:
                pending = None
            n += 1
            yield f"id: {n}\nevent: {name}\ndata: {data}\n\n".encode()
    finally:
        if pending is not None:
            pending.cancel()
