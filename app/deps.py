"""What routes depend on: the running service and the tenant's view of its store (through
``Depends``), and the API key check, which runs before a route reads anything of the request and
says which tenant the request acts for."""

from __future__ import annotations

import json
from collections.abc import Callable
from urllib.parse import unquote_to_bytes

from fastapi import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import ERROR_KIND, ApiError
from .metrics import Metrics
from .service import Service
from .store import Store
from .tenants import DEFAULT_TENANT, KeyTable
from .view import PAGE_CSP, error_page

# Where the key check leaves the tenant in the ASGI scope.
TENANT = "nsx.tenant"

_REFUSED = json.dumps({"errors": [{"message": "missing or wrong API key",
                                   "hint": "send it as 'Authorization: Bearer <key>' or 'X-API-Key'"}]}).encode()


async def service(request: Request) -> Service:
    # async: FastAPI runs a plain function dependency on a thread pool, a thread hop per request.
    svc: Service = request.app.state.svc
    return svc


def tenant_of(request: Request) -> str:
    """The tenant the request acts for (the default one where no keys are configured)."""
    name: str = request.scope.get(TENANT, DEFAULT_TENANT)
    return name


async def tenant_store(request: Request) -> Store:
    """The store as the request's tenant sees it: only what that tenant made."""
    svc: Service = request.app.state.svc
    return svc.store_for(tenant_of(request))


# The cookie ``POST /v1/session`` sets, so that pages and event streams, which a browser opens
# without headers of a script's choosing, carry the key too.
KEY_COOKIE = "nsx_key"
_SAFE = frozenset({"GET", "HEAD"})


def presented_key(headers: list[tuple[bytes, bytes]], method: str = "GET") -> bytes:
    """The key a request carries, as the bytes it sent: X-API-Key, else a Bearer token, else (for a
    GET or HEAD only: a cookie must not be what lets another site's form start a run) the key
    cookie."""
    given, auth, cookies = b"", b"", b""
    for name, value in headers:
        if name == b"x-api-key":
            given = value
        elif name == b"authorization":
            auth = value
        elif name == b"cookie":
            cookies = value
    if not given and auth[:7].lower() == b"bearer ":
        given = auth[7:].strip()
    if not given and cookies and method in _SAFE:
        for part in cookies.split(b";"):
            name, _, value = part.strip().partition(b"=")
            if name == KEY_COOKIE.encode():
                given = unquote_to_bytes(value)  # POST /v1/session quotes it: a key may hold ; or =
    return given


class ApiKeys:
    """With keys configured, every /v1 request needs one, and acts for the key's tenant. Checked in
    front of the app, not as a route dependency: a route's body is read and parsed before its
    dependencies run, and a request without a key must cost nothing and learn nothing (not even
    which paths exist)."""

    def __init__(self, app: ASGIApp, keys: KeyTable) -> None:
        self.app = app
        # Keys are compared as the bytes the header carried (any byte may be there), by digest.
        self.keys = keys

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (scope["type"] == "http" and self.keys and scope["path"].startswith("/v1/")
                # Forgetting the key cookie needs no key: a browser holding a stale one can still do it.
                and not (scope["path"] == "/v1/session" and scope.get("method") == "DELETE")):
            tenant = self.keys.tenant_of(presented_key(scope["headers"], scope.get("method", "GET")))
            if tenant is not None:
                scope[TENANT] = tenant
            else:
                scope[ERROR_KIND] = "unauthorized"
                if scope["path"].endswith("/view"):
                    await _refuse(send, 401, _refused_page(), "text/html; charset=utf-8")
                else:
                    await _refuse(send, 401, _REFUSED)
                return
        await self.app(scope, receive, send)


class BodyLimits:
    """Every request body within a limit for its route, counted as it arrives: a body over it is a
    413 however it is sent (a declared length, chunks, multipart spooled by the form parser), before
    a route holds it whole. ``limit_for(method, path)`` gives the bytes a route may receive and what
    to tell a client that sends more."""

    def __init__(self, app: ASGIApp, limit_for: Callable[[str, str], tuple[int, str]]) -> None:
        self.app = app
        self.limit_for = limit_for

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit, why = self.limit_for(scope["method"], scope["path"])
        for name, value in scope["headers"]:
            if name == b"content-length" and value.isdigit() and int(value) > limit:
                scope[ERROR_KIND] = "too_large"
                await _refuse(send, 413, json.dumps({"errors": [{"message": why, "hint": _LIMITS}]}).encode())
                return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise ApiError(413, why, hint=_LIMITS)
            return message

        await self.app(scope, counted, send)


_LIMITS = "the server's limits are NSX_MAX_IMAGE_BYTES, NSX_MAX_IMAGES and NSX_MAX_PROGRAM_BYTES"


def _refused_page() -> bytes:
    # A run's page is opened by a browser, which sends no key header: the playground keeps it (POST /v1/session).
    return error_page(401, "missing or wrong API key", "enter the key in the playground (/) once; this browser "
                      "then sends it with the pages it opens").encode()


async def _refuse(send: Send, status: int, body: bytes, content_type: str = "application/json") -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", content_type.encode()), (b"content-length", str(len(body)).encode()),
                            *([(b"content-security-policy", PAGE_CSP.encode())] if content_type != "application/json"
                              else [])]})
    await send({"type": "http.response.body", "body": body})


class ErrorCounter:
    """Every error answer counted by status and class (``nsx_http_errors_total``), whichever layer
    gave it: a route's handler or a check in front of the app leaves the class in the scope."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def counted(message: Message) -> None:
            if message["type"] == "http.response.start" and message["status"] >= 400:
                status = int(message["status"])
                self.metrics.http_errors.labels(str(status), scope.get(ERROR_KIND, "other")).inc()
            await send(message)

        try:
            await self.app(scope, receive, counted)
        except Exception:
            # Answered by the outermost layer (a 500 with the error body) after it passes here.
            self.metrics.http_errors.labels("500", "internal").inc()
            raise
