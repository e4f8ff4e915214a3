"""The FastAPI application: programs and images in, answers and auditable traces out."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from pydantic.json_schema import models_json_schema

from modules.base import Pack
from modules.packs import PackError, load_packs

from . import errors
from .deps import ApiKeys
from .metrics import Metrics
from .routers import galleries, health, images, modules, programs, runs
from .service import make_pool, running
from .settings import Settings


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
    app.add_middleware(ApiKeys, keys=keys)
    errors.install(app)
    for r in (health.router, programs.router, modules.router, images.router, runs.router, galleries.router):
        app.include_router(r)
    _document(app, runs.EXTRA_SCHEMAS)
    return app


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
