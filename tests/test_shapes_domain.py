"""LOC answers only for shapes-world scenes: on a photo (whole, resized, cropped) the step fails and
says what to enable, never a confident count; held-out scenes of every bench condition all pass."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from modules.base import ModuleError
from modules.shapes import LOC_VERSION, Loc, pack
from modules.shapes.domain import LIMITS, Evidence, judge, message
from modules.shapes.files import WEIGHTS, have_weights
from modules.shapes.tools.domain import photos, scene_cases, variants
from modules.shapes.tools.world import ObjectSpec, compose
from modules.values import ImageValue, Objects

pytestmark = pytest.mark.skipif(not have_weights(), reason=f"no trained weights in {WEIGHTS}")

SAYS = "does not look like a shapes-world scene"
ENABLE = "enable the photo pack (faces, people, text) or the hf pack (open-vocabulary objects)"


@pytest.fixture(scope="module")
def loc() -> Loc:
    m = Loc()
    m.load("cpu")
    return m


@pytest.fixture(scope="module")
def pictures() -> dict[str, Image.Image]:
    pytest.importorskip("skimage")
    got = photos()
    assert {"skimage astronaut", "skimage coffee", "skimage chelsea", "skimage cat"} <= set(got)
    return got


def value(im: Image.Image) -> ImageValue:
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return ImageValue.from_bytes(buf.getvalue())


# ----------------------------------------------------------------------------- the statistic itself


def test_a_flat_grey_image_is_no_scene(loc: Loc) -> None:
    [v] = loc.examine([Image.new("RGB", (256, 256), (180, 180, 180))])
    assert not v.ok and v.evidence.objects == 0
    assert "no shape was found in it" in v.reasons and "it has no colour" in v.reasons


def test_noise_is_no_scene(loc: Loc) -> None:
    rng = np.random.default_rng(0)
    grey = Image.fromarray(rng.integers(0, 256, (256, 256), dtype=np.uint8)).convert("RGB")
    colour = Image.fromarray(rng.integers(0, 256, (200, 300, 3), dtype=np.uint8))
    for v in loc.examine([grey, colour]):
        assert not v.ok
        assert v.evidence.background > 10 * LIMITS.background
        assert any("dark, strongly coloured or textured" in r for r in v.reasons), v.reasons


def test_each_check_says_what_it_measured() -> None:
    scene = Evidence(objects=6, background=0.001, unsure=0.03, score=0.9, colour=150.0, edge=0.0)
    assert judge(scene).ok and judge(scene).reasons == ()
    photo = Evidence(objects=24, background=0.42, unsure=0.31, score=0.45, colour=120.0, edge=0.5)
    v = judge(photo)
    assert not v.ok and len(v.reasons) == 4
    text = message(v)
    assert text.startswith(f"this image {SAYS} (") and text.endswith(ENABLE)
    assert "42% of what lies around the objects" in text and "unsure over 31%" in text
    assert "scores 0.45" in text and "50% of what it found is cut by the image's edge" in text


# ----------------------------------------------------------------------------- photos


def test_every_photo_whole_resized_and_cropped_fails_loc(loc: Loc, pictures: dict[str, Image.Image]) -> None:
    rng = np.random.default_rng(11)  # crops the limits were not set on
    cases = [(f"{name} {v}", im) for name, photo in pictures.items() for v, im in variants(photo, rng, crops=2)]
    images = [ImageValue(im, f"sha256:photo{k}") for k, (_, im) in enumerate(cases)]
    out: list[object] = []
    for k in range(0, len(images), 16):
        out += loc.forward([{"image": im, "object": "object"} for im in images[k:k + 16]])
    accepted = [name for (name, _), o in zip(cases, out) if not isinstance(o, ModuleError)]
    assert not accepted, f"LOC answered for {accepted}"
    for o in out:
        assert isinstance(o, ModuleError) and SAYS in str(o) and ENABLE in str(o)


async def test_programs_on_photos_never_succeed(pictures: dict[str, Image.Image]) -> None:
    from app.executor import Executor
    from app.store import MemoryStore
    from modules.core import pack as core_pack
    from modules.pool import Pool
    from program_dsl import IMAGE, compile_program

    pool = Pool([core_pack(), pack()], "cpu")
    await pool.start()
    try:
        executor = Executor(pool, MemoryStore())
        programs = [
            "n = COUNT(LOC(IMAGE, 'object'))\n",
            "BOX0=LOC(image=IMAGE,object='object')\nIMAGE0=CROP_LEFTOF(image=IMAGE,box=BOX0)\n"
            "BOX1=LOC(image=IMAGE0,object='red')\nANSWER0=COUNT(box=BOX1)\n"
            "ANSWER1=EVAL(expr=\"'yes' if {ANSWER0} > 0 else 'no'\")\nFINAL_RESULT=RESULT(var=ANSWER1)\n",
        ]
        plans = [compile_program(p, pool.catalog, {"IMAGE": IMAGE}) for p in programs]
        for name in ("skimage astronaut", "skimage coffee", "skimage chelsea", "skimage cat"):
            image = value(pictures[name])
            for plan in plans:
                run = await executor.execute(plan, {"IMAGE": image})
                assert run.status != "succeeded", (name, run.result)
                first = next(s for s in run.steps if s.module == "LOC")
                assert first.error and SAYS in first.error and ENABLE in first.error
                assert not any(s.module == "LOC" and s.output for s in run.steps)
    finally:
        await pool.close()


# ----------------------------------------------------------------------------- the world


def test_held_out_scenes_of_every_condition_pass(loc: Loc) -> None:
    # Bench seeds 3 and 4: not the 2,100 scenes (seeds 0-2) the limits were measured on.
    cases = list(scene_cases([3, 4], base=50, other=12))
    rejected = []
    for k in range(0, len(cases), 16):
        chunk = cases[k:k + 16]
        for (group, name, _), v in zip(chunk, loc.examine([c[2] for c in chunk])):
            if not v.ok:
                rejected.append((group, name, v.reasons))
    assert len(cases) == 196 and not rejected


def test_a_scene_drawn_by_hand_still_answers_at_any_size(loc: Loc) -> None:
    scene = compose([ObjectSpec("circle", "red", "large", "solid", 60, 64),
                     ObjectSpec("star", "gray", "small", "striped", 190, 180),
                     ObjectSpec("square", "gray", "large", "solid", 120, 200)], seed=4).pil()
    for im in (scene, scene.resize((512, 384)), scene.resize((128, 128))):
        [found] = loc.forward([{"image": value(im), "object": "object"}])
        assert isinstance(found, Objects) and len(found) == 3


def test_loc_version_changed_with_the_check() -> None:
    assert LOC_VERSION.startswith("2.") and Loc().version.startswith(f"{LOC_VERSION}-")
    assert Loc(limits=None).version != Loc().version  # answers without the check are cached apart
