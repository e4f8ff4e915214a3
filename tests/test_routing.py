"""A name several packs offer (LOC) goes, per call, to the pack whose vocabulary knows the phrase:
exact words first, then the shared word embedding; decided at compile time, recorded in the step,
forced by NSX_MODULE_PACKS; a phrase no pack knows compiles with a warning and its step fails
listing every pack's categories."""

from __future__ import annotations

import io
from collections.abc import Iterator, Sequence
from dataclasses import replace
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.settings import Settings
from modules.base import Module, Pack
from modules.core import pack as core_pack
from modules.packs import PackError, build_catalog, load_packs
from modules.routing import Router, Vocabulary, words_of
from modules.shapes.tools.world import ObjectSpec, compose
from modules.values import Obj, Objects
from program_dsl import Catalog, Const, ProgramError, compile_program, param, signature
from tests.apputil import png_bytes, post_run
from tests.test_shapes_modules import needs_weights


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return build_catalog(load_packs(["core", "shapes"]))


def loc_step(catalog: Catalog, phrase: str) -> Any:
    plan = compile_program(f"n = COUNT(LOC(IMAGE, {phrase!r}))", catalog)
    return next(s for s in plan.steps if s.module == "LOC"), plan


@pytest.mark.parametrize(("phrase", "pack", "why"), [
    ("TOP", "core", "'TOP' is one of its phrases"),
    ("left", "core", "'left' is one of its phrases"),
    ("large red ball", "shapes", "it knows every word of 'large red ball'"),
    ("object", "shapes", "it knows every word"),
    ("the small cyan things", "shapes", "it knows every word"),
    ("enormous sphere", "shapes", "'enormous' is nearest its"),
])
def test_a_phrase_goes_to_the_pack_that_knows_it(catalog: Catalog, phrase: str, pack: str, why: str) -> None:
    step, plan = loc_step(catalog, phrase)
    assert step.pack == pack and why in step.route and step.route.startswith(f"{pack}: ")
    assert not plan.warnings
    assert step.to_dict()["route"] == step.route


def test_a_long_phrase_of_unknown_words_is_not_embedded(catalog: Catalog) -> None:
    # Each unknown word would cost a forward of the text model at compile time: past a few the
    # phrase is no category name, and it is refused without one.
    phrase = " ".join(f"zq{i}xv" for i in range(200))
    step, plan = loc_step(catalog, phrase)
    assert step.pack == "" and plan.warnings[0].code == "route"
    router = catalog.routes["LOC"]
    assert isinstance(router, Router)
    assert all("zq1xv" not in offer.anchors._seen for offer in router.offers)


def test_possessives_and_accents_are_words() -> None:
    assert words_of("the man’s café") == ["the", "man", "café"]
    assert words_of("a person's hand") == ["a", "person", "hand"]


def test_the_default_phrase_is_routed_too(catalog: Catalog) -> None:
    plan = compile_program("n = COUNT(LOC(IMAGE))", catalog)
    assert plan.steps[0].pack == "shapes"


def test_an_unknown_phrase_compiles_with_a_warning_and_fails_its_step(catalog: Catalog) -> None:
    step, plan = loc_step(catalog, "muffin")
    (warning,) = plan.warnings
    assert warning.code == "route" and warning.severity == "warning"
    assert "no enabled pack finds 'muffin' with LOC" in warning.message
    assert "core: TOP, BOTTOM, LEFT, RIGHT" in warning.message and "shapes: object, circle" in warning.message
    assert step.pack == "" and "'hf' pack" in step.route


def test_a_phrase_computed_at_run_time_cannot_be_routed(catalog: Catalog) -> None:
    plan = compile_program("n = COUNT(LOC(IMAGE, object=VQA(IMAGE, 'which half?')))", catalog)
    loc = next(s for s in plan.steps if s.module == "LOC")
    assert loc.pack == "" and "must be written as text" in loc.route and "core.LOC" in loc.route


def test_a_qualified_call_is_not_routed(catalog: Catalog) -> None:
    plan = compile_program("n = COUNT(shapes.LOC(IMAGE, 'TOP'))", catalog)
    assert plan.steps[0].pack == "shapes" and plan.steps[0].route == ""


def test_nsx_module_packs_forces_one_pack() -> None:
    forced = build_catalog(load_packs(["core", "shapes"]), {"LOC": "shapes"})
    plan = compile_program("n = COUNT(LOC(IMAGE, 'TOP'))", forced)
    assert plan.steps[0].pack == "shapes" and plan.steps[0].route == ""
    assert "LOC" not in forced.routes


class _Finder(Module):
    """A LOC that finds one box labelled with the phrase: enough to see where routing sends a call."""

    def __init__(self, pack: str, vocabulary: Vocabulary | None) -> None:
        self.signature = signature("LOC", "Objects", *build_catalog([core_pack()])["LOC"].params, pack=pack)
        self.vocabulary = vocabulary

    def forward(self, batch: Sequence[dict[str, Any]]) -> list[Any]:
        return [Objects((Obj((0, 0, 1, 1), 1.0, a["object"]),), a["image"].key, (a["image"].width, a["image"].height))
                for a in batch]


def test_an_open_vocabulary_pack_takes_what_no_other_knows() -> None:
    cat = build_catalog([core_pack(), Pack("wide", [_Finder("wide", Vocabulary(("anything",), open=True))])])
    assert compile_program("n = COUNT(LOC(IMAGE, 'TOP'))", cat).steps[0].pack == "core"
    step = compile_program("n = COUNT(LOC(IMAGE, 'muffin'))", cat).steps[0]
    assert step.pack == "wide" and "takes any phrase" in step.route


def test_two_packs_knowing_a_phrase_the_first_wins_and_says_so() -> None:
    vocab = Vocabulary(("cat",), words=frozenset({"cat"}))
    cat = build_catalog([core_pack(), Pack("a", [_Finder("a", vocab)]), Pack("b", [_Finder("b", vocab)])])
    step = compile_program("n = COUNT(LOC(IMAGE, 'cat'))", cat).steps[0]
    assert step.pack == "a" and "b also would" in step.route and "NSX_MODULE_PACKS" in step.route


def test_a_module_without_a_vocabulary_still_clashes() -> None:
    with pytest.raises(PackError, match="offered by packs 'core', 'x'"):
        build_catalog([core_pack(), Pack("x", [_Finder("x", None)])])


# -- through the service --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    with TestClient(create_app(Settings(redis_url=None, packs="core,shapes"))) as c:
        yield c


def run(client: TestClient, program: str, image: bytes) -> dict[str, Any]:
    return post_run(client, program, {"IMAGE": image})


@needs_weights
@pytest.mark.parametrize(("phrase", "box"), [
    ("TOP", [0, 0, 96, 32]), ("BOTTOM", [0, 32, 96, 64]), ("LEFT", [0, 0, 48, 64]), ("RIGHT", [48, 0, 96, 64]),
])
def test_visprog_halves_are_the_image_halves(client: TestClient, phrase: str, box: list[int]) -> None:
    out = run(client, f"BOX0=LOC(image=IMAGE,object='{phrase}')\nFINAL_RESULT=RESULT(var=BOX0)", png_bytes(96, 64))
    assert out["status"] == "succeeded", out
    (item,) = out["result"]["items"]
    assert item["box"] == box and item["label"] == phrase
    step = out["steps"][0]
    assert step["pack"] == "core" and step["route"] == f"core: '{phrase}' is one of its phrases"


@needs_weights
def test_visprog_gqa_halves_program_on_a_shapes_scene(client: TestClient) -> None:
    # VisProg's GQA prompt: "Is there a circle in the top of the image?" — LOC 'TOP' by geometry,
    # the crop's circles by the shapes detector.
    scene = [ObjectSpec("circle", "red", "large", "solid", 64, 60), ObjectSpec("square", "blue", "large", "solid",
                                                                               190, 196)]
    buf = io.BytesIO()
    compose(scene, seed=1).pil().save(buf, format="PNG")
    program = ("BOX0=LOC(image=IMAGE,object='{half}')\nIMAGE0=CROP(image=IMAGE,box=BOX0)\n"
               "BOX1=LOC(image=IMAGE0,object='circle')\nANSWER0=COUNT(box=BOX1)\n"
               "ANSWER1=EVAL(expr=\"'yes' if {{ANSWER0}} > 0 else 'no'\")\nFINAL_RESULT=RESULT(var=ANSWER1)\n")
    top = run(client, program.format(half="TOP"), buf.getvalue())
    assert [s["pack"] for s in top["steps"][:3]] == ["core", "core", "shapes"], top
    assert top["status"] == "succeeded", top
    assert top["result"]["value"] == "yes"
    bottom = run(client, program.format(half="BOTTOM"), buf.getvalue())
    assert bottom["status"] == "succeeded" and bottom["result"]["value"] == "no", bottom


def test_the_check_endpoint_shows_the_route_and_the_warning(client: TestClient) -> None:
    ok = client.post("/v1/programs/check", json={"program": "n = COUNT(LOC(IMAGE, 'red circle'))"}).json()
    assert ok["ok"] is True and ok["plan"]["steps"][0]["route"].startswith("shapes: ")
    warned = client.post("/v1/programs/check", json={"program": "n = COUNT(LOC(IMAGE, 'muffin'))"}).json()
    assert warned["ok"] is True and warned["warnings"][0]["code"] == "route"


def test_an_unknown_phrase_fails_its_step_listing_what_each_pack_finds(client: TestClient) -> None:
    out = run(client, "n = COUNT(LOC(IMAGE, 'muffin'))", png_bytes())
    loc, count = out["steps"]
    assert out["status"] == "failed" and loc["status"] == "failed" and count["status"] == "skipped"
    assert "no enabled pack finds 'muffin'" in loc["error"] and "shapes: object, circle" in loc["error"]


def test_an_option_of_one_pack_is_refused_where_the_phrase_goes_elsewhere() -> None:
    wide = _Finder("wide", Vocabulary(("anything",), open=True))
    wide.signature = replace(wide.signature, params=(*wide.signature.params, param("threshold", "Number", 0.1)))
    cat = build_catalog([core_pack(), Pack("wide", [wide])])
    step = compile_program("n = COUNT(LOC(IMAGE, 'muffin', threshold=0.3))", cat).steps[0]
    assert step.pack == "wide" and step.args["threshold"] == Const(0.3)
    assert "threshold" not in compile_program("n = COUNT(LOC(IMAGE, 'TOP'))", cat).steps[0].args
    with pytest.raises(ProgramError, match="LOC here is core's, which has no argument 'threshold'"):
        compile_program("n = COUNT(LOC(IMAGE, 'TOP', threshold=0.3))", cat)
