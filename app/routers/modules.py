"""The module catalog of this deployment."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from program_dsl import BUILTINS

from ..deps import service
from ..errors import responses
from ..records import ModuleInfo, ModuleList
from ..service import Service

router = APIRouter(prefix="/v1", tags=["modules"])


@router.get("/modules", response_model=ModuleList, responses=responses(401))
async def list_modules(svc: Service = Depends(service)) -> ModuleList:
    """Every module this deployment knows: loaded ones with their state, declared ones without a pack."""
    loaded = [ModuleInfo.model_validate(m) for m in svc.pool.describe()]
    names = {m.name for m in loaded}
    declared = [ModuleInfo(name=s.name, pack=s.pack, version=s.version, state="unavailable", signature=s.to_dict())
                for n, s in sorted(svc.pool.catalog.items())
                if n not in names and "." not in n and n not in BUILTINS]
    return ModuleList(modules=loaded + declared)
