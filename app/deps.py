"""What routes depend on, through ``Depends``: the running service and the API key check."""

from __future__ import annotations

import secrets

from fastapi import Request

from .errors import ApiError
from .service import Service


def service(request: Request) -> Service:
    svc: Service = request.app.state.svc
    return svc


def api_key(request: Request) -> None:
    """With NSX_API_KEYS set, every /v1 route needs one of the keys (Bearer or X-API-Key)."""
    keys = request.app.state.settings.key_set()
    if not keys:
        return
    given = request.headers.get("x-api-key") or ""
    auth = request.headers.get("authorization") or ""
    if not given and auth.lower().startswith("bearer "):
        given = auth[7:].strip()
    # Compared as bytes: compare_digest refuses str with non-ASCII characters, and a header may hold any.
    presented = given.encode("utf-8", "surrogateescape")
    if not any(secrets.compare_digest(presented, k.encode("utf-8")) for k in keys):
        raise ApiError(401, "missing or wrong API key", hint="send it as 'Authorization: Bearer <key>' or 'X-API-Key'")
