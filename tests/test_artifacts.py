"""Every artifact a run's trace links answers while the run exists, with the cache on or off; masks
travel as run-length encoding and their URLs draw them as PNG on demand."""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from app.main import create_app
from app.serialize import DecodeError, mask_png, mask_rle, rle_mask
from app.settings import Settings
from modules.shapes.tools.world import ObjectSpec, compose
from tests.test_shapes_modules import needs_weights

SCENE = [
    ObjectSpec("circle", "red", "large", "solid", 60, 64),
    ObjectSpec("square", "blue", "small", "striped", 196, 52, rotation=8),
    ObjectSpec("circle", "red", "small", "striped", 200, 200),
]

# Objects with masks (LOC) and images made by steps (CROP, TAG).
PROGRAM = """\
scene = LOC(image=IMAGE, object='object')
reds = LOC(image=IMAGE, object='red circle')
part = CROP(image=IMAGE, box=reds)
tagged = TAG(image=IMAGE, object=reds)
n = COUNT(box=reds)
"""


def urls(doc: Any) -> Iterator[str]:
    if isinstance(doc, dict):
        for k, v in doc.items():
            if k.endswith("url") and isinstance(v, str):
                yield v
            else:
                yield from urls(v)
    elif isinstance(doc, list):
        for v in doc:
            yield from urls(v)


def scene_png() -> bytes:
    buf = io.BytesIO()
    compose(SCENE, seed=3).pil().save(buf, format="PNG")
    return buf.getvalue()


@needs_weights
@pytest.mark.parametrize("store", ["memory", "redis"])
@pytest.mark.parametrize("cache", [True, False])
def test_every_artifact_url_answers_while_the_run_exists(store: str, cache: bool,
                                                         request: pytest.FixtureRequest) -> None:
    url = request.getfixturevalue("redis_url") if store == "redis" else None
    with TestClient(create_app(Settings(redis_url=url, packs="core,shapes"))) as client:
        deadline = time.monotonic() + 120
        while client.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        ref = client.post("/v1/images", content=scene_png()).json()["sha256"]
        body = {"program": PROGRAM, "images": {"IMAGE": ref}, "options": {"cache": cache}}
        for attempt in range(2):  # with the cache on, the second run's steps all hit
            record = client.post("/v1/runs", json=body).json()
            assert record["status"] == "succeeded", record["error"]
            if cache and attempt:
                assert {s["cache"] for s in record["steps"]} == {"hit"}
            stored = client.get(f"/v1/runs/{record['run_id']}").json()
            links = sorted(set(urls(stored["steps"])))
            assert any("/v1/artifacts/" in u for u in links)
            masks = 0
            for step in stored["steps"]:
                for item in step["output"].get("items", []):
                    if "mask" not in item:
                        continue
                    masks += 1
                    r = client.get(item["mask_url"])
                    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
                    drawn = np.asarray(Image.open(io.BytesIO(r.content)).convert("L")) > 127
                    assert np.array_equal(drawn, rle_mask(item["mask"]))
                    assert drawn.shape == (256, 256) and drawn.any()
            assert masks >= 5  # three objects, two red circles
            for link in links:
                r = client.get(link)
                assert r.status_code == 200, (link, r.text)
            part = next(s for s in stored["steps"] if s["vars"] == ["part"])["output"]
            cropped = Image.open(io.BytesIO(client.get(part["url"]).content))
            assert (cropped.width, cropped.height) == (part["width"], part["height"])


def test_rle_follows_coco_column_major_zeros_first() -> None:
    mask = np.array([[0, 1, 1], [1, 1, 0]], dtype=bool)
    # Down the columns: 0 1 | 1 1 | 1 0 → one 0, four 1s, one 0.
    assert mask_rle(mask) == {"size": [2, 3], "counts": [1, 4, 1]}
    assert mask_rle(np.ones((2, 2), dtype=bool)) == {"size": [2, 2], "counts": [0, 4]}
    assert mask_rle(np.zeros((0, 5), dtype=bool)) == {"size": [0, 5], "counts": []}


@pytest.mark.parametrize("seed", range(20))
def test_rle_round_trips_and_draws_the_same_png(seed: int) -> None:
    rng = np.random.default_rng(seed)
    h, w = int(rng.integers(1, 40)), int(rng.integers(1, 40))
    mask = rng.random((h, w)) < rng.random()
    back = rle_mask(mask_rle(mask))
    assert back.dtype == np.bool_ and back.shape == (h, w) and np.array_equal(back, mask)
    png = np.asarray(Image.open(io.BytesIO(mask_png(back))).convert("L")) > 127
    assert np.array_equal(png, mask)


@pytest.mark.parametrize("bad", [{"size": [2, 2], "counts": [1, 1]}, {"size": [2, 2], "counts": [5, -1]},
                                 {"counts": [4]}, {"size": "2x2", "counts": [4]}, [1, 2]])
def test_a_malformed_rle_is_a_decode_error(bad: Any) -> None:
    with pytest.raises(DecodeError):
        rle_mask(bad)


def test_an_edited_image_carries_its_region_inline_and_as_an_artifact() -> None:
    from app.serialize import decode, encode, is_rle, rle_png
    from modules.values import ImageValue

    region = np.zeros((8, 10), dtype=bool)
    region[2:5, 3:9] = True
    value = ImageValue(Image.new("RGB", (10, 8)), "sha256:edit", "sha256:src", region)
    doc, artifacts = encode(value)
    assert np.array_equal(rle_mask(doc["mask"]), region) and is_rle(artifacts[doc["mask_key"]])
    drawn = np.asarray(Image.open(io.BytesIO(rle_png(artifacts[doc["mask_key"]])))) > 0
    assert np.array_equal(drawn, region)

    async def fetch(key: str) -> bytes | None:
        return artifacts.get(key)

    import asyncio

    back = asyncio.run(decode(doc, fetch))
    assert back.region is not None and np.array_equal(back.region, region)
