"""Liveness, readiness and metrics: unauthenticated, for orchestrators and scrapers."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse, Response

from ..deps import service
from ..records import Health, Readiness
from ..service import Service

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health)
async def healthz() -> Health:
    """Alive: the process answers."""
    return Health(status="ok")


@router.get("/readyz", response_model=Readiness,
            responses={503: {"model": Readiness, "description": "Still loading (or a module failed to load)."}})
async def readyz(svc: Service = Depends(service)) -> JSONResponse:
    """Ready: every enabled module is loaded and warm (503 until then)."""
    body = Readiness(status="ready" if svc.ready else "loading", store=svc.store.name,
                     store_available=svc.store.available, store_durable=svc.store.durable,
                     modules={n: s.state for n, s in svc.pool.states.items()}, text_model=svc.text_model)
    return JSONResponse(body.model_dump(), status_code=200 if svc.ready else 503)


@router.get("/metrics", response_class=Response,
            responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}},
                             "description": "Prometheus text exposition format."}})
async def metrics(svc: Service = Depends(service)) -> Response:
    """Prometheus metrics."""
    svc.metrics.store_available.set(1 if svc.store.available else 0)
    return Response(svc.metrics.render(), media_type="text/plain; version=0.0.4")
