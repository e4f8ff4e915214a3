"""Runs: a program on images in, its record out; records and their steps by id."""

from __future__ import annotations

import asyncio
import json
import logging
import time

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response

from ..deps import service, tenant_of, tenant_store
from ..errors import ApiError, responses
from ..inputs import RunRequest, load_images, read_run
from ..records import RunRecord, StepRecord
from ..service import Service
from ..store import Store

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


@router.post("", response_model=RunRecord, responses=responses(400, 401, 413, 415, 422, 429, 503),
             openapi_extra=_RUN_BODY)
async def create_run(request: Request, svc: Service = Depends(service),
                     store: Store = Depends(tenant_store)) -> Response:
    """Run a program on images. JSON with base64 images or ``sha256:`` references, or multipart
    with a ``program`` field and one file per image variable. A run that fails in a step is still
    a 200: its record says which step failed and why."""
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
    running = asyncio.ensure_future(svc.runs.run(run.program, images, cache=run.options.cache,
                                                 timeout_s=run.options.timeout_s, started=t0, store=store,
                                                 tenant=tenant, plan=plan,
                                                 unused=[n for n in run.names if n not in images]))
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


@router.get("/{run_id}", response_model=RunRecord, responses=responses(401, 404, 422))
async def get_run(run_id: str, store: Store = Depends(tenant_store)) -> Response:
    """A run record by id: program, plan, every step, timings, module versions."""
    return Response(await _stored(store, run_id), media_type="application/json")


@router.get("/{run_id}/steps/{step_id}", response_model=StepRecord, responses=responses(401, 404, 422))
async def get_step(run_id: str, step_id: str, store: Store = Depends(tenant_store)) -> JSONResponse:
    """One step record of a run."""
    for step in json.loads(await _stored(store, run_id))["steps"]:
        if step["id"] == step_id:
            return JSONResponse(step)  # as it was recorded, like the run it belongs to
    raise ApiError(404, f"run {run_id} has no step {step_id}")
