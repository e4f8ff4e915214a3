"""Helpers for tests that drive the HTTP API: a ready client, test images, base64."""

from __future__ import annotations

import base64
import io
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from fastapi.testclient import TestClient
from PIL import Image, ImageDraw

from app.main import create_app
from app.settings import Settings


def png_bytes(width: int = 96, height: int = 64, seed: int = 0) -> bytes:
    """A small deterministic picture: two coloured rectangles on a gradient."""
    img = Image.new("RGB", (width, height))
    px = img.load()
    for y in range(height):
        for x in range(width):
            px[x, y] = ((x * 255) // width, (y * 255) // height, (seed * 40) % 256)
    d = ImageDraw.Draw(img)
    d.rectangle((10, 10, 30, 30), fill=(220, 30, 30))
    d.rectangle((55, 20, 85, 50), fill=(30, 30, 220))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@contextmanager
def client_for(redis_url: str | None = None, **overrides: object) -> Iterator[TestClient]:
    """A TestClient over a fresh app (core pack), returned once /readyz says ready."""
    settings = Settings(**{"redis_url": redis_url, "packs": "core", **overrides})  # type: ignore[arg-type]
    with TestClient(create_app(settings)) as client:
        deadline = time.monotonic() + 30
        while client.get("/readyz").status_code != 200:
            if time.monotonic() > deadline:
                raise TimeoutError("service never became ready")
            time.sleep(0.02)
        yield client


def post_run(client: TestClient, program: str, images: dict[str, bytes] | None = None,
             **options: object) -> dict[str, Any]:
    """POST /v1/runs with ``images`` (name → file bytes), asserting a 200; the run record."""
    body = {"program": program, "images": {k: b64(v) for k, v in (images or {}).items()}, "options": options}
    r = client.post("/v1/runs", json=body)
    assert r.status_code == 200, r.text
    record: dict[str, Any] = r.json()
    return record
