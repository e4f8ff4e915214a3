"""The shapes world generator: seeded, and its ground truth agrees with its pixels."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from modules.shapes.tools.cli import main as shapes_main
from modules.shapes.tools.world import PALETTE, ObjectSpec, WorldConfig, compose, relationships, render_scene
from modules.shapes.vocab import ATTRIBUTES, COLORS


def test_same_seed_same_scene() -> None:
    a, b = render_scene(7, 3), render_scene(7, 3)
    assert np.array_equal(a.image, b.image)
    assert np.array_equal(a.instances, b.instances)
    assert a.truth == b.truth


def test_scenes_differ_by_seed_and_index_and_do_not_depend_on_order() -> None:
    base = render_scene(7, 3)
    assert not np.array_equal(base.image, render_scene(8, 3).image)
    assert not np.array_equal(base.image, render_scene(7, 4).image)
    render_scene(7, 9)  # rendering another scene first changes nothing: each scene has its own generator
    assert np.array_equal(base.image, render_scene(7, 3).image)


@pytest.mark.parametrize("index", range(12))
def test_ground_truth_matches_pixels(index: int) -> None:
    cfg = WorldConfig()
    scene = render_scene(11, index, cfg)
    truth = scene.truth
    objs = truth["objects"]
    assert scene.image.shape == (cfg.size, cfg.size, 3) and scene.image.dtype == np.uint8
    assert cfg.min_objects <= len(objs) <= cfg.max_objects
    assert set(np.unique(scene.instances)) <= set(range(len(objs) + 1))
    for i, o in enumerate(objs):
        assert o["id"] == i
        for attr, values in ATTRIBUTES.items():
            assert o[attr] in values
        ys, xs = np.nonzero(scene.mask(i))
        x1, y1, x2, y2 = o["box"]
        # The box is exactly the mask's extent: it contains the mask and nothing of it is outside.
        assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (x1, y1, x2, y2)
        assert o["area"] == len(xs)
        assert cfg.min_visible <= o["visible_fraction"] <= 1.0
        assert o["center"] == [(x1 + x2) / 2, (y1 + y2) / 2]
    gap = cfg.min_gap * cfg.size
    for i in range(len(objs)):
        for j in range(i):
            assert abs(objs[i]["center"][0] - objs[j]["center"][0]) >= gap
            assert abs(objs[i]["center"][1] - objs[j]["center"][1]) >= gap
    assert truth["relationships"] == relationships([tuple(o["center"]) for o in objs])


def test_relationships_read_like_clevr() -> None:
    rel = relationships([(10.0, 10.0), (50.0, 30.0)])
    assert rel["left"] == [[], [0]] and rel["right"] == [[1], []]
    assert rel["above"] == [[], [0]] and rel["below"] == [[1], []]


def test_config_scales_and_bounds_objects() -> None:
    cfg = WorldConfig(size=128, min_objects=2, max_objects=4)
    for i in range(5):
        s = render_scene(1, i, cfg)
        assert s.image.shape == (128, 128, 3)
        assert 2 <= len(s.truth["objects"]) <= 4


def test_every_colour_word_has_its_colour() -> None:
    # The world draws colours in the vocabulary's order: scenes stay what they were only while it holds.
    assert tuple(PALETTE) == COLORS == ATTRIBUTES["color"]


def test_compose_draws_the_objects_asked_for() -> None:
    specs = [ObjectSpec("circle", "red", "large", "solid", 60, 60),
             ObjectSpec("star", "cyan", "small", "striped", 190, 180)]
    s = compose(specs, seed=3)
    assert [(o["shape"], o["color"], o["size"], o["material"]) for o in s.truth["objects"]] == [
        ("circle", "red", "large", "solid"), ("star", "cyan", "small", "striped")]
    assert s.truth["objects"][0]["center"] == [60.0, 60.0]
    red = s.image[s.mask(0)].astype(float).mean(axis=0)
    assert red[0] > 1.8 * red[1] and red[0] > 1.8 * red[2]  # the red object is red
    with pytest.raises(ValueError, match="unknown color"):
        compose([ObjectSpec("circle", "pink", "large", "solid", 60, 60)])


def test_generate_command_writes_images_masks_and_json(tmp_path: Path) -> None:
    assert shapes_main(["shapes", "generate", "--n", "3", "--seed", "5", "--out", str(tmp_path), "-q"]) == 0
    index = json.loads((tmp_path / "scenes.json").read_text())
    assert index["count"] == 3 and index["seed"] == 5
    for stem in index["scenes"]:
        truth = json.loads((tmp_path / f"{stem}.json").read_text())
        image = Image.open(tmp_path / truth["image"])
        mask = np.asarray(Image.open(tmp_path / truth["mask"]))
        assert image.size == (256, 256) and image.mode == "RGB"
        assert mask.max() == len(truth["objects"])
        scene = render_scene(5, truth["index"])
        assert np.array_equal(np.asarray(image), scene.image)  # PNG: the pixels exactly
        assert np.array_equal(mask, scene.instances)


def _small_on_large(truth: dict) -> int:
    """Small objects whose centre lies inside a large object's radius of that object's centre."""
    objs = truth["objects"]
    hits = 0
    for o in objs:
        if o["size"] != "small":
            continue
        if any(h["size"] == "large"
               and np.hypot(o["position"][0] - h["position"][0], o["position"][1] - h["position"][1]) < h["radius"]
               for h in objs):
            hits += 1
    return hits


def test_nesting_puts_small_objects_on_large_ones_and_is_off_by_default() -> None:
    base = WorldConfig(min_objects=6, max_objects=8)
    plain = [render_scene(5, i, base).truth for i in range(12)]
    nested = [render_scene(5, i, WorldConfig(min_objects=6, max_objects=8, nest=1.0)).truth for i in range(12)]
    assert sum(map(_small_on_large, nested)) > 2 * max(1, sum(map(_small_on_large, plain)))
    # Every nested scene still keeps the world's rules: each object at least min_visible visible.
    assert all(o["visible_fraction"] >= base.min_visible - 0.02 for t in nested for o in t["objects"])
    assert WorldConfig().nest == 0.0
