"""The hf pack in the service, on tiny random models saved to a folder named by NSX_HF_MODELS: a
program mixing packs (LOC from hf, FACEDET from photo, COUNT and EVAL from core) runs end to end
through the API; a wrong role folder is reported by /readyz and GET /v1/modules, naming the role."""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from PIL import Image
from skimage import data

from app.main import create_app
from app.settings import Settings
from modules.hf.weights import ENV_MODELS
from tests.apputil import post_run
from tests.test_hf_detect import save_owl


def png(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("models")
    save_owl(root / "loc", "owlv2")
    (root / "vqa").mkdir()  # a role folder with nothing in it: its module must fail to load, by name
    return root


@pytest.fixture(scope="module")
def client(models: Path) -> Iterator[TestClient]:
    mp = pytest.MonkeyPatch()
    mp.setenv(ENV_MODELS, str(models))
    try:
        with TestClient(create_app(Settings(redis_url=None, packs="core,photo,hf"))) as c:
            deadline = time.monotonic() + 120
            while not _settled(c):
                assert time.monotonic() < deadline, "the modules never finished loading"
                time.sleep(0.05)
            yield c
    finally:
        mp.undo()


def _settled(client: TestClient) -> bool:
    """Every module loaded or failed (the failing vqa role keeps /readyz at 503 for good)."""
    return all(m["state"] in ("ready", "failed") for m in client.get("/v1/modules").json()["modules"]
               if m.get("qualified"))


def test_a_program_mixing_packs_runs_through_the_api(client: TestClient) -> None:
    program = ("mugs = LOC(IMAGE, 'muffin', threshold=0.0)\nfaces = FACEDET(IMAGE)\n"
               "n = COUNT(mugs)\nf = COUNT(faces)\nanswer = EVAL(expr=\"'yes' if {n} > 0 and {f} == 1 else 'no'\")\n")
    out: dict[str, Any] = post_run(client, program, {"IMAGE": png(Image.fromarray(data.astronaut()))})
    assert out["status"] == "succeeded", out
    packs = {s["module"]: s["pack"] for s in out["steps"]}
    assert packs["LOC"] == "hf" and packs["FACEDET"] == "photo" and packs["COUNT"] == "core"
    loc = next(s for s in out["steps"] if s["module"] == "LOC")
    assert loc["route"] == "hf: no pack knows 'muffin', and it takes any phrase"
    assert loc["output"]["items"] and all(item["label"] == "muffin" for item in loc["output"]["items"])
    assert out["result"]["value"] == "yes"
    face = post_run(client, "n = COUNT(LOC(IMAGE, 'face'))", {"IMAGE": png(Image.fromarray(data.astronaut()))})
    assert face["steps"][0]["pack"] == "photo" and face["result"]["value"] == 1


def test_a_wrong_role_folder_is_named_in_readyz_and_modules(client: TestClient) -> None:
    mods = {m["qualified"]: m for m in client.get("/v1/modules").json()["modules"] if m.get("qualified")}
    assert mods["hf.LOC"]["state"] == "ready" and mods["hf.LOC"]["parameters"] > 0
    vqa = mods["hf.VQA"]
    assert vqa["state"] == "failed" and "role 'vqa'" in vqa["error"] and "config.json" in vqa["error"]
    ready = client.get("/readyz").json()
    assert ready["modules"]["hf.VQA"] == "failed"
