"""Nothing a client sends stalls the service: images are read only after the program compiles and
the run is admitted, only those the program uses, within a pixel budget checked from their headers,
and large ones decode on a thread. The event loop's lag is measured by the service itself
(``nsx_event_loop_lag_seconds``) while each request runs."""

from __future__ import annotations

import gc
import io
import json
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from modules.values import DECODED, sha256_key
from tests.apputil import b64, client_for

LAG_LIMIT_S = 0.1


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    # The served process freezes what loading left alive (NSX_GC_FREEZE); the tests' process does the
    # same here, or a full collection of the suite's heap would be what stalls the loop.
    gc.collect()
    gc.freeze()
    try:
        with client_for(None, max_image_pixels=40_000_000, max_image_bytes=20_000_000) as c:
            yield c
    finally:
        gc.unfreeze()


def _svc(client: TestClient) -> Any:
    return client.app.state.svc  # type: ignore[attr-defined]


def _lag_during(client: TestClient, method: str, path: str, **kwargs: Any) -> tuple[Any, float]:
    svc = _svc(client)
    svc.lag.reset()
    r = client.request(method, path, **kwargs)
    assert client.get("/healthz").status_code == 200
    print(f"{method} {path}: loop lag {svc.lag.worst * 1000:.1f} ms")
    return r, svc.lag.worst


def _png(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (40, 90, 160)).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def _photo(width: int, height: int) -> bytes:
    """A JPEG with texture everywhere, so decoding it is real work (about 20 Mpx)."""
    rng = np.random.default_rng(0)
    small = rng.integers(0, 255, (height // 8, width // 8, 3), dtype=np.uint8)
    im = Image.fromarray(small).resize((width, height), Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=85)
    return buf.getvalue()


@pytest.fixture(scope="module")
def huge_png() -> bytes:
    return _png(6300, 6300)  # 39.7 Mpx in a few tens of KB


def test_a_large_photo_decodes_off_the_event_loop(client: TestClient) -> None:
    data = _photo(5000, 4000)
    program = "n = COUNT(box=REGION(image=IMAGE, box=[0, 0, 10, 10]))"
    client.post("/v1/runs", json={"program": program, "images": {"IMAGE": b64(_photo(64, 64))}})  # parser built
    # Bodies encoded before the clock starts: this process is the client too, and its own JSON
    # encoding would hold the GIL the server's loop needs.
    body = json.dumps({"program": program, "images": {"IMAGE": b64(data)}}).encode()
    for how in ({"content": body, "headers": {"content-type": "application/json"}},
                {"data": {"program": program}, "files": {"IMAGE": ("big.jpg", data, "image/jpeg")}}):
        r, lag = _lag_during(client, "POST", "/v1/runs", **how)
        assert r.status_code == 200 and r.json()["status"] == "succeeded", r.text
        assert r.json()["inputs"]["IMAGE"]["width"] == 5000
        assert lag < LAG_LIMIT_S, f"the event loop was kept {lag:.3f} s ({list(how)})"
    r, lag = _lag_during(client, "POST", "/v1/images", content=data, headers={"content-type": "image/jpeg"})
    assert r.status_code == 200 and lag < LAG_LIMIT_S, (r.text, lag)


def test_images_a_program_does_not_use_are_neither_decoded_nor_kept(client: TestClient, huge_png: bytes) -> None:
    body = json.dumps({"program": "x = 1", "images": {f"I{i}": b64(huge_png) for i in range(16)}}).encode()
    r, lag = _lag_during(client, "POST", "/v1/runs", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 200, r.text
    record = r.json()
    assert record["result"] == {"type": "number", "value": 1} and record["inputs"] == {}
    assert sorted(w["message"] for w in record["warnings"]) == sorted(f"image I{i} is not used by the program"
                                                                      for i in range(16))
    key = sha256_key(huge_png)
    assert DECODED.get(key) is None
    assert client.get(f"/v1/artifacts/{key}").status_code == 404  # not stored either
    assert lag < LAG_LIMIT_S, f"the event loop was kept {lag:.3f} s"


def test_the_pixels_of_a_run_are_capped_before_any_is_decoded(client: TestClient, huge_png: bytes) -> None:
    program = "\n".join(f"b{i} = REGION(image=I{i}, box=[0, 0, 1, 1])" for i in range(4))
    body = json.dumps({"program": program, "images": {f"I{i}": b64(huge_png) for i in range(4)}}).encode()
    r, lag = _lag_during(client, "POST", "/v1/runs", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 413, r.text
    assert "pixels in all" in r.json()["errors"][0]["message"]
    assert DECODED.get(sha256_key(huge_png)) is None
    assert lag < LAG_LIMIT_S, f"the event loop was kept {lag:.3f} s"


def test_a_program_error_is_answered_before_images_are_read(client: TestClient) -> None:
    broken = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64  # a PNG's signature and nothing readable after it
    r = client.post("/v1/runs", json={"program": "n = COUNTT(box=B)", "images": {"IMAGE": b64(broken)}})
    assert r.status_code == 422
    assert r.json()["errors"][0].get("line") == 1  # the program's error, not the image's


def test_the_lag_is_in_the_metrics(client: TestClient) -> None:
    assert "nsx_event_loop_lag_seconds_bucket" in client.get("/metrics").text
