"""Programs checked without running them."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from program_dsl import ProgramError

from ..deps import service
from ..errors import responses
from ..inputs import CheckRequest, require_json
from ..records import CheckResult, ErrorItem, RunWarning
from ..service import Service

router = APIRouter(prefix="/v1/programs", tags=["programs"])


async def _json(request: Request) -> None:
    require_json(request)


@router.post("/check", response_model=CheckResult, responses=responses(400, 401, 413, 415, 422),
             dependencies=[Depends(_json)])
async def check_program(body: CheckRequest, svc: Service = Depends(service)) -> CheckResult:
    """Type-check a program against this deployment's catalog; returns diagnostics and the plan.
    A program with errors is a 200 with ``ok: false``: checking it succeeded."""
    try:
        plan = await svc.runs.compile_async(body.program, body.inputs, count=False)
    except ProgramError as e:
        return CheckResult(ok=False, errors=[ErrorItem.model_validate(d.to_dict()) for d in e.diagnostics],
                           warnings=[], rendered=e.render("program"))
    return CheckResult(ok=True, errors=[], warnings=[RunWarning.model_validate(w.to_dict()) for w in plan.warnings],
                       program=plan.canonical, plan=plan.to_dict())
