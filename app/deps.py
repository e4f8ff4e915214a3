"""What routes depend on: the running service (through ``Depends``), and the API key check, which
runs before a route reads anything of the request."""

from __future__ import annotations

import json
import secrets

from fastapi import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from .service import Service

_REFUSED = json.dumps({"errors": [{"message": "missing or wrong API key",
                                   "hint": "send it as 'Authorization: Bearer <key>' or 'X-API-Key'"}]}).encode()


async def service(request: Request) -> Service:
    # async: FastAPI runs a plain function dependency on a thread pool, a thread hop per request.
    svc: Service = request.app.state.svc
    return svc


def presented_key(headers: list[tuple[bytes, bytes]]) -> bytes:
    """The key a request carries, as the bytes it sent: X-API-Key, else a Bearer token."""
    given, auth = b"", b""
    for name, value in headers:
        if name == b"x-api-key":
            given = value
        elif name == b"authorization":
            auth = value
    if not given and auth[:7].lower() == b"bearer ":
        given = auth[7:].strip()
    return given


class ApiKeys:
    """With NSX_API_KEYS set, every /v1 request needs one of the keys. Checked in front of the app,
    not as a route dependency: a route's body is read and parsed before its dependencies run, and a
    request without a key must cost nothing and learn nothing (not even which paths exist)."""

    def __init__(self, app: ASGIApp, keys: set[str]) -> None:
        self.app = app
        # Keys as UTF-8 bytes, compared with the header's raw bytes: compare_digest refuses str
        # with non-ASCII characters, and a header may carry any byte.
        self.keys = [k.encode("utf-8") for k in sorted(keys)]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self.keys and scope["path"].startswith("/v1/"):
            given = presented_key(scope["headers"])
            if not any(secrets.compare_digest(given, k) for k in self.keys):
                await send({"type": "http.response.start", "status": 401,
                            "headers": [(b"content-type", b"application/json"),
                                        (b"content-length", str(len(_REFUSED)).encode())]})
                await send({"type": "http.response.body", "body": _REFUSED})
                return
        await self.app(scope, receive, send)
