"""The FastAPI application: programs and images in, answers and auditable traces out."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles
from pydantic.json_schema import models_json_schema

from modules.base import Pack
from modules.packs import PackError, load_packs

from . import errors
from .deps import ApiKeys, BodyLimits, ErrorCounter
from .inputs import FRAMING, run_body_limit
from .metrics import Metrics
from .routers import galleries, health, images, modules, pages, programs, runs
from .service import make_pool, running
from .settings import Settings

# The pages' scripts, styles and example images: served by nsx itself, nothing from elsewhere.
STATIC = Path(__file__).resolve().parent / "static"


def create_app(settings: Settings | None = None, *, packs: list[Pack] | None = None) -> FastAPI:
    """Build the app. ``packs`` overrides discovery (tests); otherwise NSX_PACKS or every installed pack."""
    settings = settings or Settings()
    keys = settings.key_table()  # first: a malformed key list stops start-up before anything loads
    # Packs are found and checked now, so a bad NSX_PACKS or a name clash fails at start-up with
    # its own message; models load later, in the background.
    metrics = Metrics()
    pool = make_pool(settings, packs if packs is not None else load_packs(settings.pack_list()), metrics)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with running(settings, pool, metrics) as svc:
            app.state.svc = svc
            yield

    app = FastAPI(
        title="nsx",
        version="0.1.0",
        summary="Neuro-symbolic program executor: typed visual programs, neural modules, per-step cache, audit trail.",
        lifespan=lifespan,
    )
    # Added inner first: the key check runs before a byte of the body is counted or read.
    app.add_middleware(BodyLimits, limit_for=body_limits(settings))
    app.add_middleware(ApiKeys, keys=keys)
    app.add_middleware(ErrorCounter, metrics=metrics)
    errors.install(app)
    for r in (health.router, programs.router, modules.router, images.router, runs.router, galleries.router,
              pages.router):
        app.include_router(r)
    app.mount("/static", StaticFiles(directory=STATIC, check_dir=True), name="static")
    app.state.keyed = bool(keys)
    _document(app, runs.EXTRA_SCHEMAS)
    return app


def body_limits(settings: Settings) -> Callable[[str, str], tuple[int, str]]:
    """The most bytes each route may receive (what its largest valid request needs, no more), and
    what a client that sends more is told."""
    image_mb = f"{settings.max_image_bytes} bytes"
    run = (run_body_limit(settings),
           f"the body is over the limit: a run takes at most {settings.max_images} images of at most {image_mb} "
           f"each (base64 adds a third) and a program of at most {settings.max_program_bytes} bytes")
    image = (settings.max_image_bytes + FRAMING, f"the body is over the limit: an image may be at most {image_mb}")
    # JSON escapes may double a program's bytes.
    check = (settings.max_program_bytes * 2 + FRAMING,
             f"the body is over the limit: a program may be at most {settings.max_program_bytes} bytes")
    other = (FRAMING, f"the body is over the limit of {FRAMING} bytes for this route")

    def limit_for(method: str, path: str) -> tuple[int, str]:
        if method == "POST" and path == "/v1/runs":
            return run
        if method == "POST" and (path == "/v1/images" or path.startswith("/v1/galleries/")):
            return image
        if method == "POST" and path == "/v1/programs/check":
            return check
        return other

    return limit_for


def _document(app: FastAPI, models: tuple[type[Any], ...]) -> None:
    """Add to the OpenAPI document's components the models that routes reading their own body
    (JSON or multipart) name by reference, so every ``$ref`` in the document resolves."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            doc = build()
            _, defs = models_json_schema([(m, "validation") for m in models],
                                         ref_template="#/components/schemas/{model}")
            doc.setdefault("components", {}).setdefault("schemas", {}).update(defs.get("$defs", {}))
            app.openapi_schema = doc
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def app_from_env() -> FastAPI:
    """Factory for ``uvicorn --factory app.main:app_from_env``: configuration errors end the process
    with their message, not a traceback."""
    try:
        return create_app()
    except (PackError, ValueError) as e:
        print(f"nsx: {e}", file=sys.stderr)
        raise SystemExit(2) from None
