"""The error model: every refusal is ``ErrorBody`` with a status that says whose fault it is, and
the OpenAPI document says which statuses each route can answer."""

from __future__ import annotations

import difflib
import logging
import re
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from modules.batching import QueueFull
from program_dsl import ProgramError

from .records import ErrorBody

log = logging.getLogger("nsx.api")


class ApiError(Exception):
    """A request the client can fix: becomes ``{"errors": [...]}`` with this status."""

    def __init__(self, status: int, message: str, hint: str | None = None, *,
                 headers: dict[str, str] | None = None, kind: str | None = None, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.headers = headers
        self.kind = kind or KINDS.get(status, "other")
        self.body = {"message": message, **({"hint": hint} if hint else {}), **extra}


_WHY = {
    400: "The body could not be read: malformed multipart or JSON, or text that is not UTF-8.",
    401: "Missing or wrong API key.",
    404: "No such resource (or it has expired).",
    409: "The resource is not in a state that allows this (a run that has ended cannot be cancelled).",
    413: "The body, an image or its pixel count is over the server's limit.",
    415: "The body's content type is not one this route reads (JSON, or a multipart form where documented).",
    422: "The request or the program is invalid; the body says where and how to fix it.",
    429: "The service is at capacity; retry after the Retry-After header's seconds.",
    503: "The store that holds uploaded images is unreachable, or the service is shutting down; retry after "
         "the Retry-After header's seconds.",
}


# The class of an error by its status, for ``nsx_http_errors_total{kind}``; raise sites may name a
# finer one (``ApiError(kind=…)``).
KINDS = {400: "unreadable_body", 401: "unauthorized", 404: "not_found", 405: "method_not_allowed", 409: "conflict",
         413: "too_large", 415: "unsupported_media_type", 422: "invalid", 429: "overloaded", 503: "unavailable",
         500: "internal"}
# Where handlers leave the class for the counter in front of the app (deps.ErrorCounter).
ERROR_KIND = "nsx.error"


def responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for these error statuses, all with the error body."""
    return {s: {"model": ErrorBody, "description": _WHY[s]} for s in statuses}


def page_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for a page's error statuses: the same errors, as a page."""
    return {s: {"content": {"text/html": {"schema": {"type": "string"}}}, "description": _WHY[s]} for s in statuses}


def error_response(status: int, errors: list[dict[str, Any]], headers: dict[str, str] | None = None,
                   rendered: str | None = None) -> JSONResponse:
    body: dict[str, Any] = {"errors": errors}
    if rendered is not None:
        body["rendered"] = rendered
    return JSONResponse(body, status_code=status, headers=headers)


# Every field a request body may have, to suggest one for a misspelled name.
_FIELDS = ("program", "images", "options", "inputs", "cache", "timeout_s")


def pydantic_errors(errors: Any) -> list[dict[str, Any]]:
    out = []
    for e in errors:
        loc = [str(p) for p in e.get("loc", ()) if p != "body"]
        where = ".".join(loc) or "body"
        if loc and loc[-1] == "[key]":  # a mapping's key: an image variable's name
            out.append({"message": f"{'.'.join(loc[:-2]) or 'body'}: {e.get('input')!r} is not a variable name",
                        "field": ".".join(loc[:-2]), "hint": "letters, digits and _, not starting with a digit: "
                                                              "IMAGE, LEFT, RIGHT"})
            continue
        if e.get("type") == "extra_forbidden" and loc:
            close = difflib.get_close_matches(loc[-1], _FIELDS, n=1)
            item: dict[str, Any] = {"message": f"{where}: unknown field", "field": where}
            if close:
                item["hint"] = f"did you mean '{close[0]}'?"
            out.append(item)
            continue
        msg = str(e.get('msg', 'invalid')).removeprefix('Value error, ')
        out.append({"message": f"{where}: {msg}", "field": where})
    return out


async def _api_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    request.scope[ERROR_KIND] = exc.kind
    return error_response(exc.status, [exc.body], headers=exc.headers)


async def _overloaded(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, QueueFull)
    request.scope[ERROR_KIND] = "overloaded"
    retry = max(1, int(exc.retry_after_s + 0.999))
    return error_response(429, [{"message": str(exc), "hint": f"retry after {retry} s"}],
                          headers={"Retry-After": str(retry)})


async def _program_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ProgramError)
    request.scope[ERROR_KIND] = "program"
    return error_response(422, [d.to_dict() for d in exc.diagnostics], rendered=exc.render("program"))


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    request.scope[ERROR_KIND] = "invalid"
    return error_response(422, pydantic_errors(exc.errors()))


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    headers = dict(getattr(exc, "headers", None) or {})
    message = str(exc.detail)
    request.scope[ERROR_KIND] = KINDS.get(exc.status_code, "other")
    if exc.status_code == 405:
        # Starlette's Allow names the methods of the first route on the path, and a path has one
        # route per method here: the answer names what the OpenAPI document gives the path.
        allowed = _methods(request)
        headers["Allow"] = ", ".join(allowed)
        message = f"{request.method} is not allowed here; use {' or '.join(allowed) or 'another path'}"
    return error_response(exc.status_code, [{"message": message}], headers=headers or None)


def _methods(request: Request) -> list[str]:
    app = request.app
    table: list[tuple[re.Pattern[str], list[str]]] | None = getattr(app.state, "allowed_methods", None)
    if table is None:
        table = []
        for path, ops in app.openapi().get("paths", {}).items():
            pattern = re.sub(r"\\\{[^}]*\\\}", "[^/]+", re.escape(path))
            table.append((re.compile(f"^{pattern}$"), sorted(m.upper() for m in ops)))
        app.state.allowed_methods = table
    path = request.url.path
    return sorted({m for pattern, methods in table if pattern.match(path) for m in methods})


async def _internal(request: Request, exc: Exception) -> JSONResponse:
    request.scope[ERROR_KIND] = "internal"
    log.exception("unhandled error", exc_info=exc)
    return error_response(500, [{"message": "internal error; the server log has the details"}])


def install(app: FastAPI) -> None:
    """Turn every exception a request can raise into the error body."""
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(QueueFull, _overloaded)
    app.add_exception_handler(ProgramError, _program_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _internal)
