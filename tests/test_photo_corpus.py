"""VisProg's own image-editing and knowledge-tagging programs (tests/corpus/valid/edit_*, tag_*),
unchanged, through the API on a real photo with every pack enabled: those whose objects are faces or
people answer with an edited image whose pixels and masks download; those that need open-vocabulary
models (REPLACE, LIST, 'dog', 'car') fail at the step that needs them, naming the hf pack. Nothing
answers confidently about what no enabled model can see."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from skimage import data

from app.main import create_app
from app.settings import Settings
from tests.apputil import post_run

CORPUS = Path(__file__).parent / "corpus" / "valid"
ASTRONAUT = data.astronaut()

# The programs that run here, and the modules they end in.
ANSWERED = {"edit_colorpop_man": "COLORPOP", "edit_emoji_all_faces": "EMOJI", "edit_emoji_face": "EMOJI",
            "edit_face_blur_background": "BGBLUR"}
# The rest, and the module whose step fails for want of the hf pack.
NEEDS_HF = {"edit_bgblur_dog": "SELECT", "edit_default_category": "SELECT", "edit_replace_sky": "SELECT",
            "edit_replace_then_pop": "SELECT", "edit_select_category": "SELECT", "edit_two_replacements": "SELECT",
            "tag_big_bang": "LIST", "tag_cars_logos": "LOC", "tag_dog_breeds": "LOC",
            "tag_literal_categories": "CLASSIFY", "tag_paintings": "LOC", "tag_presidents": "LIST",
            "tag_selected_faces": "LIST"}


def png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    with TestClient(create_app(Settings(redis_url=None))) as c:  # every installed pack, as deployed
        # edit_emoji_face selects 'Bill Gates': the astronaut's face stands in for him in this
        # gallery, from another crop of the photo than the one the program sees.
        ref = Image.fromarray(ASTRONAUT).crop((120, 20, 360, 260)).resize((200, 200))
        buf = io.BytesIO()
        ref.save(buf, format="JPEG", quality=90)
        r = c.post("/v1/galleries/faces", data={"name": "Bill Gates"},
                   files={"image": ("ref.jpg", buf.getvalue(), "image/jpeg")})
        assert r.status_code == 201, r.text
        yield c


def test_the_corpus_is_covered() -> None:
    names = {p.stem for p in CORPUS.glob("edit_*.nsx")} | {p.stem for p in CORPUS.glob("tag_*.nsx")}
    assert names == set(ANSWERED) | set(NEEDS_HF)


@pytest.mark.parametrize("name", sorted(ANSWERED))
def test_programs_on_faces_and_people_answer(client: TestClient, name: str) -> None:
    out = post_run(client, (CORPUS / f"{name}.nsx").read_text(), {"IMAGE": png(ASTRONAUT)})
    assert out["status"] == "succeeded", out
    result = out["result"]
    assert result["type"] == "image" and (result["width"], result["height"]) == (512, 512)
    last = next(s for s in reversed(out["steps"]) if s["module"] == ANSWERED[name])
    edited = np.asarray(Image.open(io.BytesIO(client.get(result["url"]).content)).convert("RGB"))
    mask = np.asarray(Image.open(io.BytesIO(client.get(last["output"]["mask_url"]).content)).convert("L")) > 0
    assert mask.any() and not mask.all()  # the edit used a region: the person, or the face
    changed = np.abs(edited.astype(int) - ASTRONAUT.astype(int)).sum(axis=2) > 0
    assert changed.any()
    if ANSWERED[name] == "EMOJI":
        assert not changed[~mask].any()  # an emoji touches only what it covers
    else:
        # COLORPOP and BGBLUR keep the region and change the rest (up to the feathered rim).
        assert changed[~mask].mean() > 0.5 and changed[mask].mean() < 0.2


@pytest.mark.parametrize("name", sorted(NEEDS_HF))
def test_programs_that_need_open_vocabulary_models_say_so(client: TestClient, name: str) -> None:
    out = post_run(client, (CORPUS / f"{name}.nsx").read_text(), {"IMAGE": png(ASTRONAUT)})
    assert out["status"] == "failed", out
    first = next(s for s in out["steps"] if s["status"] == "failed")
    assert first["module"] == NEEDS_HF[name], first
    assert "hf" in first["error"], first["error"]
    succeeded: list[dict[str, Any]] = [s for s in out["steps"] if s["status"] == "succeeded"]
    assert all(s["module"] in {"SEG", "FACEDET"} for s in succeeded), succeeded
