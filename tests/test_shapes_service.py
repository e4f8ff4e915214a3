"""A program over a shapes image, POSTed to the service: the right answer, boxes and attribute
scores in the trace, and the same run again served from the cache."""

from __future__ import annotations

import io
import time

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.settings import Settings
from modules.shapes.tools.world import ObjectSpec, compose
from tests.apputil import b64
from tests.test_shapes_modules import needs_weights

SCENE = [
    ObjectSpec("circle", "red", "large", "solid", 60, 64),
    ObjectSpec("square", "blue", "small", "striped", 196, 52, rotation=8),
    ObjectSpec("triangle", "yellow", "large", "striped", 128, 140),
    ObjectSpec("circle", "red", "small", "striped", 200, 200),
]

PROGRAM = """\
BOX0=LOC(image=IMAGE,object='red circle')
ANSWER0=COUNT(box=BOX0)
ANSWER1=QUERY(box=UNIQUE(box=LOC(image=IMAGE,object='square')),attribute='color')
ANSWER2=EVAL(expr="'{ANSWER1}' if {ANSWER0} == 2 else 'wrong'")
FINAL_RESULT=RESULT(var=ANSWER2)
"""


@needs_weights
@pytest.mark.parametrize("store", ["memory", "redis"])
def test_shapes_program_over_http(store: str, request: pytest.FixtureRequest) -> None:
    url = request.getfixturevalue("redis_url") if store == "redis" else None
    buf = io.BytesIO()
    compose(SCENE, seed=3).pil().save(buf, format="PNG")
    body = {"program": PROGRAM, "images": {"IMAGE": b64(buf.getvalue())}}
    with TestClient(create_app(Settings(redis_url=url, packs="core,shapes"))) as client:
        deadline = time.monotonic() + 120
        while client.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline, client.get("/readyz").json()
            time.sleep(0.1)
        first = client.post("/v1/runs", json=body).json()
        assert first["status"] == "succeeded", first["error"]
        assert first["result"] == {"type": "text", "value": "blue"}
        loc = next(s for s in first["steps"] if s["vars"] == ["BOX0"])
        assert loc["module"] == "LOC" and loc["output"]["count"] == 2
        for item in loc["output"]["items"]:
            assert len(item["box"]) == 4 and item["score"] > 0.5
            assert max(item["attributes"]["color"], key=item["attributes"]["color"].get) == "red"
            assert set(item["attributes"]) >= {"shape", "color", "size", "material"}
            assert item["mask_url"].endswith(item["mask_key"])  # records link what the cache names by key
        again = client.post("/v1/runs", json=body).json()
        assert again["result"] == first["result"]
        assert {s["cache"] for s in again["steps"]} == {"hit"}
