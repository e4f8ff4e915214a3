"""LOC across packs on real photos: with core, shapes and photo enabled, 'face', 'person', 'hand'
and 'text' run the photo detectors, 'red circle' the shapes one, 'TOP' the image's geometry; the
step record says which pack answered and why."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image, ImageDraw, ImageFont
from skimage import data

from app.main import create_app
from app.settings import Settings
from modules.base import ModuleError
from modules.photo.locate import category
from modules.values import box_iou
from tests.apputil import post_run
from tests.test_photo_detect import ASTRONAUT_FACE, FONT

ROOT = Path(__file__).resolve().parents[1]


def png(pic: Image.Image | np.ndarray) -> bytes:
    im = pic if isinstance(pic, Image.Image) else Image.fromarray(pic)
    buf = io.BytesIO()
    im.convert("RGB").save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    with TestClient(create_app(Settings(redis_url=None, packs="core,shapes,photo"))) as c:
        yield c


def run(client: TestClient, program: str, image: bytes) -> dict[str, Any]:
    return post_run(client, program, {"IMAGE": image})


ASTRONAUT = png(data.astronaut())


def test_face_goes_to_the_photo_pack_and_finds_the_face(client: TestClient) -> None:
    out = run(client, "BOX0=LOC(image=IMAGE,object='face')\nFINAL_RESULT=RESULT(var=BOX0)", ASTRONAUT)
    assert out["status"] == "succeeded", out
    step = out["steps"][0]
    assert step["pack"] == "photo" and step["route"] == "photo: it knows every word of 'face'"
    (face,) = out["result"]["items"]
    assert face["label"] == "face" and box_iou(face["box"], ASTRONAUT_FACE) > 0.6
    assert face["mask_url"]


def test_a_person_word_finds_people_and_says_how_it_was_read(client: TestClient) -> None:
    out = run(client, "n = LOC(IMAGE, 'girl')", ASTRONAUT)
    assert out["status"] == "succeeded", out
    (person,) = out["result"]["items"]
    assert person["label"] == "person"
    assert person["attributes"]["matched"].startswith("'girl' read as person")
    plain = run(client, "n = LOC(IMAGE, 'people')", ASTRONAUT)["result"]["items"][0]
    assert "matched" not in plain["attributes"] and plain["box"] == person["box"]


def test_text_regions_and_the_count_of_words(client: TestClient) -> None:
    im = Image.new("RGB", (640, 200), "white")
    ImageDraw.Draw(im).text((40, 70), "PURPLE ELEPHANT 42", fill="black", font=ImageFont.truetype(str(FONT), 48))
    out = run(client, "n = COUNT(LOC(IMAGE, 'text'))", png(im))
    assert out["status"] == "succeeded", out
    assert out["steps"][0]["pack"] == "photo" and out["result"]["value"] >= 1


def test_the_same_program_mixes_packs(client: TestClient) -> None:
    # 'TOP' by geometry (core), the face in the crop by the photo pack, COUNT by core.
    program = ("BOX0=LOC(image=IMAGE,object='TOP')\nIMAGE0=CROP(image=IMAGE,box=BOX0)\n"
               "BOX1=LOC(image=IMAGE0,object='face')\nANSWER0=COUNT(box=BOX1)\nFINAL_RESULT=RESULT(var=ANSWER0)\n")
    out = run(client, program, ASTRONAUT)
    assert out["status"] == "succeeded", out
    assert [s["pack"] for s in out["steps"]] == ["core", "core", "photo", "core"]
    assert out["result"]["value"] == 1


def test_a_shapes_phrase_on_a_photo_is_refused_not_answered(client: TestClient) -> None:
    out = run(client, "n = COUNT(LOC(IMAGE, 'red circle'))", ASTRONAUT)
    loc = out["steps"][0]
    assert loc["pack"] == "shapes" and loc["status"] == "failed" and out["status"] == "failed"
    assert "photo" in loc["error"]  # the domain check says which pack to use


def test_a_phrase_no_pack_knows_lists_every_pack(client: TestClient) -> None:
    out = run(client, "n = COUNT(LOC(IMAGE, 'muffin'))", ASTRONAUT)
    error = out["steps"][0]["error"]
    for part in ("core: TOP, BOTTOM, LEFT, RIGHT", "shapes: object, circle", "photo: face, person, hand, text"):
        assert part in error


@pytest.mark.parametrize(("phrase", "kind"), [("faces", "face"), ("the kids", "person"), ("hands", "hand"),
                                              ("words", "text"), ("a man", "person")])
def test_category_words(phrase: str, kind: str) -> None:
    assert category(phrase)[0] == kind


@pytest.mark.parametrize(("phrase", "why"), [("small face", "no notion of 'small'"),
                                             ("faces and hands", "no notion of 'and'"),
                                             ("face hand", "more than one kind"), ("", "names nothing")])
def test_phrases_the_photo_loc_refuses(phrase: str, why: str) -> None:
    with pytest.raises(ModuleError, match=why):
        category(phrase)
