"""Runs: a program on images in, its record out; records and their steps by id."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse

from ..deps import service, tenant_of, tenant_store
from ..errors import ERROR_KIND, ApiError, page_responses, responses
from ..inputs import RunRequest, load_images, read_run
from ..live import Event, record_events, sse
from ..records import RunAccepted, RunRecord, StepRecord
from ..service import Service
from ..store import Store
from ..view import error_page, html_response, render_body, render_run, render_step

router = APIRouter(prefix="/v1/runs", tags=["runs"])
log = logging.getLogger("nsx.runs")

_RUN_BODY = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": {"$ref": "#/components/schemas/RunRequest"}},
    "multipart/form-data": {"schema": {"type": "object", "required": ["program"], "properties": {
        "program": {"type": "string"},
        "options": {"type": "string", "description": 'the options as JSON, e.g. {"cache": false}'},
    }, "propertyNames": {"pattern": "^[A-Za-z_][A-Za-z0-9_]*$"},
       "additionalProperties": {"type": "string", "format": "binary",
                                "description": "one file per image variable, e.g. IMAGE"}}},
}}}
# Models the routes name only in openapi_extra: added to the document's components (see main).
EXTRA_SCHEMAS = (RunRequest,)


_ACCEPTED: dict[int | str, dict[str, Any]] = {202: {
    "model": RunAccepted, "description": 'An async run ("options": {"async": true}), started.'}}


@router.post("", response_model=RunRecord, responses={**_ACCEPTED, **responses(400, 401, 413, 415, 422, 429, 503)},
             openapi_extra=_RUN_BODY)
async def create_run(request: Request, svc: Service = Depends(service),
                     store: Store = Depends(tenant_store)) -> Response:
    """Run a program on images. JSON with base64 images or ``sha256:`` references, or multipart
    with a ``program`` field and one file per image variable. A run that fails in a step is still
    a 200: its record says which step failed and why. With ``"options": {"async": true}`` the
    answer is a 202 at once, and the run goes on in the background (see ``/v1/runs/{id}/events``)."""
    t0 = time.perf_counter()
    if getattr(request.app.state, "draining", False):
        raise ApiError(503, "this server is shutting down and takes no new runs", hint="retry: another server "
                       "(or this one, restarted) will take it", headers={"Retry-After": "1"})
    run = await read_run(request, svc.settings)
    # Compiled and admitted before any image is decoded: a bad program or a full service costs no
    # decoding, and images the program does not use are never decoded at all.
    plan = await svc.runs.compile_async(run.program, run.names)
    svc.runs.admit(plan)
    tenant = tenant_of(request)
    await svc.galleries.ensure(tenant)
    images = await load_images(run, plan.inputs, svc.settings, store)
    unused = [n for n in run.names if n not in images]
    if run.options.run_async:
        live = svc.runs.start(run.program, images, plan=plan, cache=run.options.cache, timeout_s=run.options.timeout_s,
                              started=t0, store=store, tenant=tenant, unused=unused)
        url = f"/v1/runs/{live.run_id}"
        accepted = RunAccepted(run_id=live.run_id, status="running", url=url, events=f"{url}/events",
                               view=f"{url}/view")
        return JSONResponse(accepted.model_dump(), status_code=202, headers={"Location": url})
    running = asyncio.ensure_future(svc.runs.run(run.program, images, cache=run.options.cache,
                                                 timeout_s=run.options.timeout_s, started=t0, store=store,
                                                 tenant=tenant, plan=plan, unused=unused))
    gone = asyncio.ensure_future(_disconnect(request))
    try:
        await asyncio.wait({running, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
    if not running.done():
        # Nobody will read the answer: what only this run needed stops; steps another run shares
        # go on for it (``Executor._share``).
        running.cancel()
        log.info("the client of a run went away; the run is cancelled", extra={"event": "run_cancelled",
                                                                               "tenant": tenant or None})
        svc.metrics.runs.labels("cancelled").inc()
        return Response(status_code=499)
    return Response(running.result().encoded(), media_type="application/json")


async def _disconnect(request: Request) -> None:
    """Returns when the client closes the connection. Once the body is read, the server's next
    message on this request is the disconnect (the test clients send it when the response ends)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _stored(store: Store, run_id: str) -> bytes:
    data = await store.get("run", run_id) if len(run_id) <= 64 else None
    if data is None:
        raise ApiError(404, f"no run {run_id}", hint="run records expire after NSX_RUN_TTL_S")
    return data


async def _record(request: Request, svc: Service, store: Store, run_id: str) -> dict[str, Any]:
    """A run as it stands: a run in flight on this process from its live state, else its stored record."""
    live = svc.runs.live.get(tenant_of(request), run_id)
    if live is not None:
        return live.state()
    doc: dict[str, Any] = json.loads(await _stored(store, run_id))
    return doc


@router.get("/{run_id}", response_model=RunRecord, responses=responses(401, 404, 422))
async def get_run(run_id: str, request: Request, svc: Service = Depends(service),
                  store: Store = Depends(tenant_store)) -> Response:
    """A run record by id: program, plan, every step, timings, module versions. An async run in
    flight answers its state: status "running", and its steps so far (the others "pending")."""
    live = svc.runs.live.get(tenant_of(request), run_id)
    if live is not None and live.record is None:
        return JSONResponse(live.state())
    return Response(await _stored(store, run_id), media_type="application/json")


@router.delete("/{run_id}", response_model=RunRecord, responses=responses(401, 404, 409, 422))
async def cancel_run(run_id: str, request: Request, svc: Service = Depends(service),
                     store: Store = Depends(tenant_store)) -> Response:
    """Cancel an async run in flight: its steps that no other run shares stop, and its record (status
    "failed", the error saying it was cancelled) is the answer. A run that has ended is a 409."""
    live = svc.runs.live.get(tenant_of(request), run_id)
    if live is None or live.record is not None:
        await _stored(store, run_id)  # 404 for a run that does not exist (or is another tenant's)
        raise ApiError(409, f"run {run_id} has ended already", hint="only an async run in flight can be cancelled")
    record = await svc.runs.cancel(live, "cancelled by its client (DELETE /v1/runs/{id})")
    return Response(record.encoded() if record is not None else b"{}", media_type="application/json")


_EVENTS: dict[int | str, dict[str, Any]] = {200: {
    "content": {"text/event-stream": {"schema": {"type": "string"}}},
    "description": 'Server-Sent Events: "step" as each step ends ({"step": its record, "html": its section of the '
                   'rationale page}), then "run" ({"record": the run\'s record, "html": the page\'s content}).'}}


@router.get("/{run_id}/events", response_class=StreamingResponse, responses={**_EVENTS, **responses(401, 404, 422)})
async def run_events(run_id: str, request: Request, svc: Service = Depends(service),
                     store: Store = Depends(tenant_store)) -> StreamingResponse:
    """A run's steps as Server-Sent Events as they end, then a final event with its record. A run that
    has ended replays its steps from its record, in the order they ended. Events are numbered: a
    client that reconnects with ``Last-Event-ID`` (EventSource does) gets only those after it."""
    live = svc.runs.live.get(tenant_of(request), run_id)
    events = live.events() if live is not None else record_events(json.loads(await _stored(store, run_id)))
    last = request.headers.get("last-event-id", "")
    seen = int(last) if last.isdigit() and len(last) < 9 else 0

    async def encoded(events: AsyncIterator[Event]) -> AsyncIterator[tuple[str, str]]:
        n = 0
        async for name, doc in events:
            n += 1
            if n <= seen:
                continue
            if name == "step":
                yield name, json.dumps({"step": doc, "html": render_step(doc, n)})
            else:
                yield name, json.dumps({"record": doc, "html": render_body(doc)})

    return StreamingResponse(sse(encoded(events), first_id=seen + 1), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


@router.get("/{run_id}/view", response_class=HTMLResponse, responses={
    200: {"content": {"text/html": {"schema": {"type": "string"}}}, "description": "The run's rationale page."},
    **page_responses(401, 404),
    # FastAPI gives every response of an HTML route its media type: the error body's is said here.
    422: {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}},
          "description": "The request is invalid; the body says where and how to fix it."}})
async def view_run(run_id: str, request: Request, svc: Service = Depends(service),
                   store: Store = Depends(tenant_store)) -> HTMLResponse:
    """A run's rationale page: the program, and every step with its inputs and outputs drawn."""
    try:
        doc = await _record(request, svc, store, run_id)
    except ApiError as e:
        # The same error as the API's, as a page a person reads.
        request.scope[ERROR_KIND] = e.kind
        return html_response(error_page(e.status, e.body["message"], e.body.get("hint")), e.status)
    return html_response(render_run(doc))


@router.get("/{run_id}/steps/{step_id}", response_model=StepRecord, responses=responses(401, 404, 422))
async def get_step(run_id: str, step_id: str, request: Request, svc: Service = Depends(service),
                   store: Store = Depends(tenant_store)) -> JSONResponse:
    """One step record of a run (of a run in flight: as it stands)."""
    for step in (await _record(request, svc, store, run_id))["steps"]:
        if step["id"] == step_id:
            return JSONResponse(step)  # as it was recorded, like the run it belongs to
    raise ApiError(404, f"run {run_id} has no step {step_id}")
