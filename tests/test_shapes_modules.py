"""The shapes pack's modules: symbolic semantics on objects built by hand, LOC on scenes drawn by
hand with the committed weights, and a whole program through the executor (answer, trace, cache)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest

from modules.base import ModuleError
from modules.shapes import Loc, filter_, most_likely, pack, query, relate, same, unique, values_of
from modules.shapes.files import WEIGHTS, have_weights
from modules.shapes.tools.world import ObjectSpec, compose
from modules.shapes.vocab import ATTRIBUTES
from modules.values import ImageValue, Obj, Objects

HAVE_WEIGHTS = have_weights()
needs_weights = pytest.mark.skipif(not HAVE_WEIGHTS, reason=f"no trained weights in {WEIGHTS}")


def obj(x: float, y: float, shape: str, color: str, size: str = "large", material: str = "solid") -> Obj:
    """An object as LOC reports it: every attribute a distribution, the named value most likely."""
    named = {"shape": shape, "color": color, "size": size, "material": material}
    attrs: dict[str, Any] = {}
    for a, values in ATTRIBUTES.items():
        attrs[a] = {v: (0.9 if v == named[a] else 0.1 / (len(values) - 1)) for v in values}
    return Obj((x - 10, y - 10, x + 10, y + 10), 0.99, f"{size} {color} {material} {shape}", attrs)


# Laid out as:   red circle (40, 40)    blue square (200, 60)
#                green circle (120, 120, small, striped)
#                red triangle (60, 200)  blue star (220, 210)
SCENE = Objects((
    obj(40, 40, "circle", "red"), obj(200, 60, "square", "blue"),
    obj(120, 120, "circle", "green", "small", "striped"),
    obj(60, 200, "triangle", "red"), obj(220, 210, "star", "blue"),
), "sha256:scene", (256, 256))


def labels(objs: Objects) -> list[str]:
    return [o.label for o in objs]


def test_filter_by_words_and_synonyms() -> None:
    assert labels(filter_(SCENE, "red")) == ["large red solid circle", "large red solid triangle"]
    assert labels(filter_(SCENE, "small striped circle")) == ["small green striped circle"]
    assert len(filter_(SCENE, "object")) == 5 and len(filter_(SCENE, "purple")) == 0
    got = filter_(SCENE, "the crimson ball")
    assert labels(got) == ["large red solid circle"]
    matched = got.items[0].attributes["matched"]
    assert [(m["word"], m["attribute"], m["value"]) for m in matched] == [("crimson", "color", "red"),
                                                                           ("ball", "shape", "circle")]


def test_filter_needs_attributes() -> None:
    bare = Objects((Obj((0, 0, 5, 5)),), "sha256:x", (10, 10))
    with pytest.raises(ModuleError, match="needs objects with a color"):
        filter_(bare, "red")


def test_query_needs_exactly_one_object() -> None:
    assert query(filter_(SCENE, "green"), "shape") == "circle"
    assert query(filter_(SCENE, "star"), "color") == "blue"
    with pytest.raises(ModuleError, match="exactly one object in 'box', got 2"):
        query(filter_(SCENE, "red"), "shape")
    with pytest.raises(ModuleError, match="got 0"):
        query(filter_(SCENE, "purple"), "shape")


def test_relate_is_relative_to_a_unique_anchor() -> None:
    anchor = filter_(SCENE, "green")
    assert labels(relate(SCENE, anchor, "left")) == ["large red solid circle", "large red solid triangle"]
    assert labels(relate(SCENE, anchor, "right")) == ["large blue solid square", "large blue solid star"]
    assert labels(relate(SCENE, anchor, "above")) == ["large red solid circle", "large blue solid square"]
    assert labels(relate(SCENE, anchor, "below")) == ["large red solid triangle", "large blue solid star"]
    assert labels(relate(filter_(SCENE, "red"), filter_(SCENE, "star"), "left")) == [
        "large red solid circle", "large red solid triangle"]
    with pytest.raises(ModuleError, match="exactly one object in 'anchor'"):
        relate(SCENE, filter_(SCENE, "blue"), "left")


def test_same_excludes_the_object_itself() -> None:
    ball = unique(filter_(SCENE, "red circle"))
    assert labels(same(ball, "color", SCENE)) == ["large red solid triangle"]
    assert labels(same(ball, "shape", SCENE)) == ["small green striped circle"]
    assert len(same(ball, "size", SCENE)) == 3
    assert len(same(ball, "material", SCENE)) == 3
    with pytest.raises(ModuleError, match="exactly one"):
        same(filter_(SCENE, "blue"), "color", SCENE)


def test_unique() -> None:
    assert unique(filter_(SCENE, "star")).items[0].label == "large blue solid star"
    with pytest.raises(ModuleError, match="UNIQUE needs exactly one object in 'box', got 2"):
        unique(filter_(SCENE, "blue"))


def test_most_likely_values_in_process_and_in_json() -> None:
    o = filter_(SCENE, "the crimson ball").items[0]  # its attributes hold 'matched' beside the four
    assert values_of(o) == most_likely(o.attributes) == {"shape": "circle", "color": "red", "size": "large",
                                                           "material": "solid"}
    assert most_likely({"color": {"red": 0.25, "blue": 0.75}, "matched": [], "size": {}}) == {"color": "blue"}


def test_pack_declares_its_signatures() -> None:
    p = pack()
    by = {m.name: m for m in p.modules}
    assert set(by) == {"LOC", "FILTER", "QUERY", "RELATE", "SAME", "UNIQUE"}
    loc = by["LOC"].signature
    assert [x.name for x in loc.params] == ["image", "object"] and loc.pack == "shapes"
    assert by["QUERY"].signature.param("attribute").choices == ("shape", "color", "size", "material")
    assert by["RELATE"].signature.param("relation").choices == ("left", "right", "above", "below")
    assert by["LOC"].batchable and not by["LOC"].cheap


# ----------------------------------------------------------------------------- LOC with the weights

HAND = [
    ObjectSpec("circle", "red", "large", "solid", 60, 64),
    ObjectSpec("square", "blue", "small", "striped", 196, 52, rotation=8),
    ObjectSpec("triangle", "yellow", "large", "striped", 128, 140),
    ObjectSpec("star", "green", "small", "solid", 46, 200),
    ObjectSpec("diamond", "purple", "large", "solid", 204, 196),
    ObjectSpec("circle", "cyan", "small", "striped", 150, 222),
]


@pytest.fixture(scope="module")
def loc() -> Loc:
    if not HAVE_WEIGHTS:
        pytest.skip("no trained weights")
    m = Loc()
    m.load("cpu")
    return m


@pytest.fixture(scope="module")
def hand_image() -> ImageValue:
    buf = io.BytesIO()
    compose(HAND, seed=1).pil().save(buf, format="PNG")
    return ImageValue.from_bytes(buf.getvalue())


@needs_weights
def test_loc_finds_every_object_with_its_attributes(loc: Loc, hand_image: ImageValue) -> None:
    [found] = loc.forward([{"image": hand_image, "object": "object"}])
    assert isinstance(found, Objects) and found.image_key == hand_image.key
    got = sorted((values_of(o)["shape"], values_of(o)["color"], values_of(o)["size"], values_of(o)["material"])
                 for o in found)
    assert got == sorted((s.shape, s.color, s.size, s.material) for s in HAND)
    for o in found:
        assert o.mask is not None and o.mask.shape == (256, 256) and o.mask.any()
        x1, y1, x2, y2 = o.box
        spec = next(s for s in HAND if s.shape == values_of(o)["shape"] and s.color == values_of(o)["color"])
        assert x1 < spec.x < x2 and y1 < spec.y < y2
        assert set(o.attributes) == set(ATTRIBUTES)
        assert abs(sum(o.attributes["color"].values()) - 1) < 1e-3


@needs_weights
def test_loc_phrases_and_batches(loc: Loc, hand_image: ImageValue) -> None:
    out = loc.forward([{"image": hand_image, "object": "large thing"},
                       {"image": hand_image, "object": "tiny ball"},
                       {"image": hand_image, "object": "xylophone"},
                       {"image": "not an image", "object": "object"}])
    assert sorted(o.label for o in out[0]) == ["large purple solid diamond", "large red solid circle",
                                               "large yellow striped triangle"]
    assert [o.label for o in out[1]] == ["small cyan striped circle"]
    assert out[1].items[0].attributes["matched"][1]["value"] == "circle"
    assert isinstance(out[2], ModuleError) and "xylophone" in str(out[2])
    assert isinstance(out[3], ModuleError)


@needs_weights
def test_loc_maps_boxes_back_to_the_image_size(loc: Loc) -> None:
    big = compose(HAND, seed=1).pil().resize((512, 384))
    buf = io.BytesIO()
    big.save(buf, format="PNG")
    [found] = loc.forward([{"image": ImageValue.from_bytes(buf.getvalue()), "object": "red"}])
    [o] = found.items
    x1, y1, x2, y2 = o.box
    assert abs((x1 + x2) / 2 - 60 * 2) < 6 and abs((y1 + y2) / 2 - 64 * 1.5) < 6
    assert o.mask is not None and o.mask.shape == (384, 512)
    assert found.image_size == (512, 384)


@needs_weights
def test_version_names_the_weights() -> None:
    v = Loc().version
    assert v.startswith("2.1-") and len(v.split("-")[1]) == 12


@needs_weights
async def test_a_program_runs_through_the_executor_and_repeats_from_the_cache(tmp_path: Path) -> None:
    from app.executor import Executor
    from app.serialize import encode
    from app.store import MemoryStore
    from modules.core import pack as core_pack
    from modules.pool import Pool
    from program_dsl import IMAGE, compile_program

    pool = Pool([core_pack(), pack()], "cpu")
    await pool.start()
    try:
        assert pool.ready, pool.states
        executor = Executor(pool, MemoryStore())
        program = (
            "scene = LOC(IMAGE, 'object')\n"
            "anchor = UNIQUE(FILTER(scene, 'yellow'))\n"
            "left = RELATE(scene, anchor, 'left')\n"
            "n = COUNT(SAME(UNIQUE(FILTER(scene, 'big crimson ball')), 'size', scene))\n"
            "answer = QUERY(UNIQUE(FILTER(left, 'star')), 'color') + ' '"
            " + ('two' if COUNT(left) == 2 and n == 2 else 'no')\n"
        )
        plan = compile_program(program, pool.catalog, {"IMAGE": IMAGE})
        buf = io.BytesIO()
        compose(HAND, seed=1).pil().save(buf, format="PNG")
        image = ImageValue.from_bytes(buf.getvalue())
        first = await executor.execute(plan, {"IMAGE": image})
        assert first.status == "succeeded", [(s.module, s.error) for s in first.steps]
        # Left of the yellow triangle (x=128): the red circle and the green star; 2 other large objects.
        assert first.result == "green two"
        loc_step = next(s for s in first.steps if s.module == "LOC")
        items = loc_step.output["items"]
        # The executor's own output names masks by key; records add URLs (test_shapes_service sees them).
        assert len(items) == 6 and all("mask_key" in i and "color" in i["attributes"] for i in items)
        doc, _ = encode(first.result)
        assert doc == {"type": "text", "value": "green two"}
        again = await executor.execute(plan, {"IMAGE": image})
        assert again.result == first.result
        assert all(s.cache == "hit" for s in again.steps)
    finally:
        await pool.close()
