"""Helpers for tests that drive the HTTP API: a ready client, test images, base64."""

from __future__ import annotations

import base64
import io
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
from fastapi.testclient import TestClient
from PIL import Image, ImageDraw

from app.main import create_app
from app.settings import Settings
from tests.conftest import free_port


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


ROOT = Path(__file__).resolve().parents[1]


def start_server(extra: dict[str, str], packs: str = "core,fault",
                 timeout_s: float = 180.0) -> tuple[subprocess.Popen[bytes], str]:
    """``nsx serve`` in a process of its own on a free port, with ``packs`` and the ``NSX_*`` settings
    in ``extra`` (none inherited), once /readyz answers: the process and its base URL. Its output
    goes to a file, whose tail an assertion shows if it exits before it is ready."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("NSX_")}
    env.update({"NSX_PORT": str(port), "NSX_PACKS": packs, "PYTHONPATH": str(ROOT), **extra})
    log = tempfile.TemporaryFile()  # noqa: SIM115 - the server writes to it for as long as it runs
    proc = subprocess.Popen([sys.executable, "-m", "app.cli", "serve"], cwd=ROOT, env=env, stdout=log,
                            stderr=subprocess.STDOUT)
    _LOGS[proc.pid] = log
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout_s
    while True:
        if proc.poll() is not None:
            log.seek(0)
            raise AssertionError(log.read().decode(errors="replace")[-3000:])
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, "the server never became ready"
        time.sleep(0.1)


_LOGS: dict[int, Any] = {}


def server_output(proc: subprocess.Popen[bytes]) -> str:
    """What a server from ``start_server`` has written so far (stdout and stderr)."""
    log = _LOGS[proc.pid]
    log.seek(0)
    text: str = log.read().decode(errors="replace")
    return text


def stop_server(proc: subprocess.Popen[bytes], timeout_s: float = 20.0) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise AssertionError(f"the server did not stop within {timeout_s:g} s of SIGTERM") from None
