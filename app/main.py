"""The FastAPI application: programs and images in, answers and auditable traces out."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
import secrets
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from PIL import Image, UnidentifiedImageError
from pydantic import BaseModel, Field, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from modules.base import Pack
from modules.packs import PackError, load_packs
from modules.batching import BatchStats, QueueFull
from modules.pool import Pool
from modules.values import ImageValue
from program_dsl import IMAGE, Limits, ProgramError, compile_cached, format_program

from .executor import Executor
from .metrics import Metrics
from .serialize import decode_base64_image
from .settings import Settings
from .store import Store, open_store

log = logging.getLogger("nsx.api")
_IMAGE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_SHA_REF = re.compile(r"^sha256:[0-9a-f]{64}$")


class ApiError(Exception):
    """A request the client can fix: becomes ``{"errors": [...]}`` with this status."""

    def __init__(self, status: int, message: str, hint: str | None = None, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.body = {"message": message, **({"hint": hint} if hint else {}), **extra}


class RunOptions(BaseModel):
    cache: bool = Field(True, description="read and write the step cache")
    timeout_s: float | None = Field(None, gt=0, description="time limit for this run (capped by the server's)")


class RunRequest(BaseModel):
    program: str = Field(..., description="the program text")
    images: dict[str, str] = Field(default_factory=dict,
                                   description='image variable → base64 bytes, a data: URL, or "sha256:<hex>" of an uploaded image')
    options: RunOptions = Field(default_factory=RunOptions)


class CheckRequest(BaseModel):
    program: str
    inputs: list[str] | None = Field(None, description="image variables the program may use (default IMAGE, LEFT, RIGHT)")


@dataclass
class Service:
    settings: Settings
    store: Store
    pool: Pool
    executor: Executor
    metrics: Metrics
    limits: Limits
    loading: asyncio.Task[None] | None = None
    active_runs: int = 0


def _decode_image(data: bytes, settings: Settings, what: str) -> tuple[ImageValue, str]:
    if len(data) > settings.max_image_bytes:
        raise ApiError(413, f"{what} is {len(data)} bytes; the limit is {settings.max_image_bytes}")
    try:
        with Image.open(io.BytesIO(data)) as probe:
            fmt = (probe.format or "unknown").lower()
            w, h = probe.size
            if w * h > settings.max_image_pixels:
                raise ApiError(413, f"{what} is {w}×{h} pixels; the limit is {settings.max_image_pixels} pixels")
        return ImageValue.from_bytes(data), fmt
    except ApiError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as e:
        raise ApiError(422, f"{what} is not a readable image", hint="send PNG, JPEG, WebP, GIF or BMP bytes",
                       detail=str(e)[:200]) from None


def create_app(settings: Settings | None = None, *, packs: list[Pack] | None = None) -> FastAPI:
    """Build the app. ``packs`` overrides discovery (tests); otherwise NSX_PACKS or every installed pack."""
    settings = settings or Settings()

    # Packs are found and checked now, so a bad NSX_PACKS or a name clash fails at start-up with
    # its own message; models load later, in the background.
    metrics = Metrics()
    chosen = packs if packs is not None else load_packs(settings.pack_list())

    def on_batch(stats: BatchStats) -> None:
        metrics.observe_batch(stats)

    pool = Pool(chosen, settings.pool_config(), on_batch=on_batch)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        def on_store_event(event: str) -> None:
            if event == "error":
                metrics.store_errors.inc()

        store = open_store(settings.redis_url, settings.memory_store_mb * 1024 * 1024, on_event=on_store_event)

        def on_cache(module: str, outcome: str) -> None:
            if outcome == "error":
                metrics.module_errors.labels(module).inc()
                return
            metrics.step_cache.labels(module, outcome).inc()
            if outcome == "miss":
                metrics.module_calls.labels(module).inc()

        executor = Executor(pool, store, step_ttl_s=settings.step_ttl_s, step_timeout_s=settings.step_timeout_s,
                            on_cache=on_cache)
        svc = Service(settings, store, pool, executor, metrics, Limits(max_bytes=settings.max_program_bytes))
        # Load models in the background: /healthz answers at once, /readyz once every module is warm.
        svc.loading = asyncio.create_task(pool.start())
        app.state.svc = svc
        try:
            yield
        finally:
            if svc.loading and not svc.loading.done():
                svc.loading.cancel()
            await pool.close()
            await store.close()

    app = FastAPI(
        title="nsx",
        version="0.1.0",
        summary="Neuro-symbolic program executor: typed visual programs, neural modules, per-step cache, audit trail.",
        lifespan=lifespan,
    )

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse({"errors": [exc.body]}, status_code=exc.status)

    @app.exception_handler(QueueFull)
    async def _overloaded(_: Request, exc: QueueFull) -> JSONResponse:
        retry = max(1, int(exc.retry_after_s + 0.999))
        return JSONResponse({"errors": [{"message": str(exc), "hint": f"retry after {retry} s"}]}, status_code=429,
                            headers={"Retry-After": str(retry)})

    @app.exception_handler(ProgramError)
    async def _program_error(request: Request, exc: ProgramError) -> JSONResponse:
        request.app.state.svc.metrics.program_errors.inc()
        errors = [{k: v for k, v in d.to_dict().items()} for d in exc.diagnostics]
        return JSONResponse({"errors": errors, "rendered": exc.render("program")}, status_code=422)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"errors": _pydantic_errors(exc.errors())}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"errors": [{"message": str(exc.detail)}]}, status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _internal(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return JSONResponse({"errors": [{"message": "internal error; the server log has the details"}]},
                            status_code=500)

    @app.middleware("http")
    async def _auth(request: Request, call_next: Any) -> Response:
        keys = settings.key_set()
        if keys and request.url.path.startswith("/v1/"):
            given = request.headers.get("x-api-key") or ""
            auth = request.headers.get("authorization") or ""
            if auth.lower().startswith("bearer "):
                given = given or auth[7:].strip()
            if not any(secrets.compare_digest(given, k) for k in keys):
                return JSONResponse({"errors": [{"message": "missing or wrong API key",
                                                 "hint": "send it as 'Authorization: Bearer <key>' or 'X-API-Key'"}]},
                                    status_code=401)
        return await call_next(request)

    # -- health ----------------------------------------------------------------------------
    @app.get("/healthz", tags=["health"])
    async def healthz() -> dict[str, str]:
        """Alive: the process answers."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"])
    async def readyz(request: Request) -> JSONResponse:
        """Ready: every enabled module is loaded and warm (503 until then)."""
        svc: Service = request.app.state.svc
        ready = svc.pool.ready and svc.loading is not None and svc.loading.done()
        body = {"status": "ready" if ready else "loading", "store": svc.store.name,
                "store_available": svc.store.available,
                "modules": {n: s.state for n, s in svc.pool.states.items()}}
        return JSONResponse(body, status_code=200 if ready else 503)

    @app.get("/metrics", tags=["health"])
    async def metrics_endpoint(request: Request) -> Response:
        """Prometheus metrics."""
        svc: Service = request.app.state.svc
        svc.metrics.store_available.set(1 if svc.store.available else 0)
        return Response(svc.metrics.render(), media_type="text/plain; version=0.0.4")

    # -- programs --------------------------------------------------------------------------
    @app.post("/v1/programs/check", tags=["programs"])
    async def check_program(request: Request, body: CheckRequest) -> dict[str, Any]:
        """Type-check a program against this deployment's catalog; returns diagnostics and the plan."""
        svc: Service = request.app.state.svc
        inputs = {n: IMAGE for n in body.inputs} if body.inputs is not None else None
        try:
            plan = compile_cached(body.program, svc.pool.catalog, inputs, svc.limits)
        except ProgramError as e:
            return {"ok": False, "errors": [d.to_dict() for d in e.diagnostics], "warnings": [],
                    "rendered": e.render("program")}
        return {"ok": True, "errors": [], "warnings": [w.to_dict() for w in plan.warnings],
                "program": format_program(body.program, svc.limits), "plan": plan.to_dict()}

    @app.get("/v1/modules", tags=["modules"])
    async def list_modules(request: Request) -> dict[str, Any]:
        """Every module this deployment knows: loaded ones with their state, declared ones without a pack."""
        svc: Service = request.app.state.svc
        loaded = svc.pool.describe()
        names = {m["name"] for m in loaded}
        declared = [{"name": s.name, "pack": s.pack, "version": s.version, "state": "unavailable",
                     "signature": s.to_dict()}
                    for n, s in sorted(svc.pool.catalog.items())
                    if n not in names and "." not in n and n not in ("EVAL", "RESULT")]
        return {"modules": loaded + declared}

    # -- images and artifacts ---------------------------------------------------------------
    @app.post("/v1/images", tags=["images"], openapi_extra={"requestBody": {"content": {
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        "multipart/form-data": {"schema": {"type": "object", "properties": {"file": {"type": "string", "format": "binary"}}}},
    }}})
    async def upload_image(request: Request) -> dict[str, Any]:
        """Upload an image once; refer to it in runs as ``"sha256:<hex>"``."""
        svc: Service = request.app.state.svc
        ctype = request.headers.get("content-type", "")
        if ctype.startswith("multipart/form-data"):
            form = await request.form()
            files = [v for v in form.values() if hasattr(v, "read")]
            if len(files) != 1:
                raise ApiError(422, "send exactly one file in the form", hint="e.g. curl -F file=@cat.png")
            data = await files[0].read()  # type: ignore[union-attr]
        else:
            data = await _read_limited(request, settings.max_image_bytes)
        if not data:
            raise ApiError(422, "the request body is empty", hint="send the image bytes")
        image, fmt = _decode_image(data, settings, "the image")
        await svc.store.put("img", image.key, data, settings.image_ttl_s)
        return {"sha256": image.key, "width": image.width, "height": image.height, "format": fmt}

    @app.get("/v1/artifacts/{key}", tags=["images"])
    async def get_artifact(request: Request, key: str) -> Response:
        """An image or mask as PNG, or a step's output as JSON, by its key."""
        svc: Service = request.app.state.svc
        if len(key) > 200:
            raise ApiError(404, "no such artifact")
        data = await svc.store.get("art", key)
        if data is not None:
            return Response(data, media_type="image/png" if data.startswith(b"\x89PNG") else "application/octet-stream")
        data = await svc.store.get("img", key)
        if data is not None:
            return Response(ImageValue.from_bytes(data).png(), media_type="image/png")
        data = await svc.store.get("step", key)
        if data is not None:
            return Response(data, media_type="application/json")
        raise ApiError(404, f"no artifact {key}", hint="artifacts expire with their steps; run the program again")

    # -- runs -----------------------------------------------------------------------------------
    @app.post("/v1/runs", tags=["runs"], openapi_extra={"requestBody": {"content": {
        "application/json": {"schema": RunRequest.model_json_schema()},
        "multipart/form-data": {"schema": {"type": "object", "properties": {
            "program": {"type": "string"}, "options": {"type": "string", "description": "JSON options"},
        }, "additionalProperties": {"type": "string", "format": "binary"}}},
    }}})
    async def create_run(request: Request) -> JSONResponse:
        """Run a program on images. JSON with base64 images or ``sha256:`` references, or multipart
        with a ``program`` field and one file per image variable."""
        svc: Service = request.app.state.svc
        t0 = time.perf_counter()
        run_req, raw_images = await _parse_run_request(request, settings)
        images: dict[str, ImageValue] = {}
        for name, data in raw_images.items():
            image, _ = _decode_image(data, settings, f"image {name}")
            images[name] = image
            await svc.store.put("img", image.key, data, settings.image_ttl_s)
        for name, ref in run_req.images.items():
            if name in images:
                continue
            data = await svc.store.get("img", ref)
            if data is None:
                raise ApiError(422, f"image {name} refers to {ref}, which this server does not have",
                               hint="upload it with POST /v1/images first, or send the bytes")
            images[name] = ImageValue.from_bytes(data)
        plan = compile_cached(run_req.program, svc.pool.catalog, {n: IMAGE for n in images}, svc.limits)
        compile_ms = (time.perf_counter() - t0) * 1000
        warnings = [w.to_dict() for w in plan.warnings]
        for name in images:
            if name not in plan.inputs:
                warnings.append({"message": f"image {name} is not used by the program", "code": "unused-image",
                                 "severity": "warning"})
        timeout = min(run_req.options.timeout_s or settings.run_timeout_s, settings.run_timeout_s)
        svc.pool.admit(plan)
        if svc.active_runs >= settings.max_concurrent_runs:
            raise QueueFull("nsx", 1.0)
        svc.active_runs += 1
        try:
            execution = await svc.executor.execute(plan, images, cache=run_req.options.cache, timeout_s=timeout)
        finally:
            svc.active_runs -= 1
        run_id = secrets.token_urlsafe(18)
        record: dict[str, Any] = {
            "run_id": run_id,
            "status": execution.status,
            "result": execution.result_json,
            "error": execution.error,
            "steps": [s.to_dict() for s in execution.steps],
            "timings": {"compile_ms": round(compile_ms, 3), "execute_ms": round(execution.ms, 3),
                        "total_ms": round((time.perf_counter() - t0) * 1000, 3)},
            "program": format_program(run_req.program, svc.limits),
            "plan_fingerprint": plan.fingerprint(),
            "inputs": {n: {"key": im.key, "width": im.width, "height": im.height} for n, im in images.items()},
            "warnings": warnings,
            "modules": {s.module: s.version for s in execution.steps},
            "created_at": time.time(),
            "persisted": execution.persisted,
        }
        stored = await svc.store.put("run", run_id, json.dumps(record).encode(), settings.run_ttl_s)
        record["persisted"] = execution.persisted and stored and svc.store.available
        if not record["persisted"]:
            svc.metrics.runs_unpersisted.inc()
            await svc.store.put("run", run_id, json.dumps(record).encode(), settings.run_ttl_s)
        svc.metrics.runs.labels(execution.status).inc()
        svc.metrics.run_seconds.observe(execution.ms / 1000)
        return JSONResponse(record)

    @app.get("/v1/runs/{run_id}", tags=["runs"])
    async def get_run(request: Request, run_id: str) -> Response:
        """A run record by id: program, plan, every step, timings, module versions."""
        svc: Service = request.app.state.svc
        data = await svc.store.get("run", run_id) if len(run_id) <= 64 else None
        if data is None:
            raise ApiError(404, f"no run {run_id}", hint="run records expire after NSX_RUN_TTL_S")
        return Response(data, media_type="application/json")

    @app.get("/v1/runs/{run_id}/steps/{step_id}", tags=["runs"])
    async def get_step(request: Request, run_id: str, step_id: str) -> dict[str, Any]:
        """One step record of a run."""
        svc: Service = request.app.state.svc
        data = await svc.store.get("run", run_id) if len(run_id) <= 64 else None
        if data is None:
            raise ApiError(404, f"no run {run_id}")
        for step in json.loads(data)["steps"]:
            if step["id"] == step_id:
                return step
        raise ApiError(404, f"run {run_id} has no step {step_id}")

    return app


async def _read_limited(request: Request, limit: int) -> bytes:
    size = int(request.headers.get("content-length") or 0)
    if size > limit:
        raise ApiError(413, f"the body is {size} bytes; the limit is {limit}")
    chunks: list[bytes] = []
    total = 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > limit:
            raise ApiError(413, f"the body is over the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _pydantic_errors(errors: Any) -> list[dict[str, Any]]:
    out = []
    for e in errors:
        loc = [str(p) for p in e.get("loc", ()) if p != "body"]
        out.append({"message": f"{'.'.join(loc) or 'body'}: {e.get('msg', 'invalid')}", "field": ".".join(loc)})
    return out


async def _parse_run_request(request: Request, settings: Settings) -> tuple[RunRequest, dict[str, bytes]]:
    """JSON or multipart → the run request and the raw bytes of every image sent inline."""
    ctype = request.headers.get("content-type", "")
    body_limit = settings.max_program_bytes + settings.max_images * settings.max_image_bytes * 4 // 3 + 65536
    raw_images: dict[str, bytes] = {}
    if ctype.startswith("multipart/form-data"):
        form = await request.form(max_files=settings.max_images, max_part_size=settings.max_image_bytes)
        program = form.get("program")
        if program is not None and hasattr(program, "read"):
            try:
                program = (await program.read()).decode("utf-8")  # type: ignore[union-attr]
            except UnicodeDecodeError:
                raise ApiError(422, "the program is not UTF-8 text") from None
        if not isinstance(program, str):
            raise ApiError(422, "the form needs a 'program' field", hint="curl -F program=@prog.nsx -F IMAGE=@cat.png")
        options: dict[str, Any] = {}
        refs: dict[str, str] = {}
        for name, value in form.multi_items():
            if name in ("program",):
                continue
            if name == "options":
                try:
                    options = json.loads(str(value))
                except ValueError:
                    raise ApiError(422, "options must be JSON, e.g. {\"cache\": false}") from None
                continue
            if not _IMAGE_NAME.match(name):
                raise ApiError(422, f"form field {name!r} is not an image variable name")
            if hasattr(value, "read"):
                raw_images[name] = await value.read()  # type: ignore[union-attr]
            else:
                refs[name] = str(value)
        try:
            run_req = RunRequest(program=program, images=refs, options=RunOptions(**options))
        except ValidationError as e:
            raise ApiError(422, "; ".join(x["message"] for x in _pydantic_errors(e.errors()))) from None
    else:
        body = await _read_limited(request, body_limit)
        try:
            run_req = RunRequest.model_validate_json(body)
        except ValidationError as e:
            errors = _pydantic_errors(e.errors())
            raise ApiError(422, "; ".join(x["message"] for x in errors),
                           hint='send JSON like {"program": "...", "images": {"IMAGE": "<base64>"}}') from None
        inline: dict[str, str] = {}
        for name, value in run_req.images.items():
            if not _IMAGE_NAME.match(name):
                raise ApiError(422, f"image name {name!r} is not a variable name", hint="use e.g. IMAGE, LEFT, RIGHT")
            if value.startswith("sha256:"):
                if not _SHA_REF.match(value):
                    raise ApiError(422, f"image {name}: {value[:80]!r} is not a sha256 reference",
                                   hint="use the 'sha256' value POST /v1/images answered")
                continue
            try:
                raw_images[name] = decode_base64_image(value)
            except ValueError:
                raise ApiError(422, f"image {name} is not valid base64",
                               hint="send base64 bytes, a data: URL or a sha256: reference") from None
            inline[name] = value
        run_req = RunRequest(program=run_req.program,
                             images={k: v for k, v in run_req.images.items() if k not in inline},
                             options=run_req.options)
    if len(raw_images) + len(run_req.images) > settings.max_images:
        raise ApiError(422, f"a run takes at most {settings.max_images} images")
    return run_req, raw_images


def app_from_env() -> FastAPI:
    """Factory for ``uvicorn --factory app.main:app_from_env``: configuration errors end the process
    with their message, not a traceback."""
    try:
        return create_app()
    except (PackError, ValueError) as e:
        print(f"nsx: {e}", file=sys.stderr)
        raise SystemExit(2) from None


