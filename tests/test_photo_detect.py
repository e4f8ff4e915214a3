"""The photo pack's detectors on real photos: FACEDET, SEG, OCR and READ, and the detectors other
modules call alone (find_people, find_faces, find_text_regions; find_hands in test_photo_hands).

The photos ship with scikit-image (the astronaut: one face, one person; coffee: no person); the
text is rendered with the DejaVu font matplotlib ships, the hands as test_photo_hands renders them.
Each model is loaded once per module.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import matplotlib
import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont
from skimage import data

from modules.base import Module, ModuleError
from modules.packs import check_declared
from modules.photo import pack
from modules.photo.faces import FaceDet, find_faces, tiles
from modules.photo.hands import hands_files
from modules.photo.people import Seg, find_people, people_files
from modules.photo.text import PPOCR, Ocr, Read, find_text_regions, text_files
from modules.pool import Pool
from modules.values import ImageValue, Obj, Objects, box_iou
from tests.test_photo_hands import paste_hand

# The astronaut's face as MediaPipe's full-range model boxes it on the whole photo (measured).
ASTRONAUT_FACE = (173.7, 67.8, 277.6, 171.7)
FONT = Path(matplotlib.__file__).parent / "mpl-data" / "fonts" / "ttf" / "DejaVuSans.ttf"


def image(pic: Image.Image | np.ndarray, key: str = "sha256:test") -> ImageValue:
    im = pic if isinstance(pic, Image.Image) else Image.fromarray(pic)
    return ImageValue(im.convert("RGB"), key)


def call(module: Module, img: ImageValue) -> object:
    result = module.forward([{"image": img}])[0]
    if isinstance(result, Exception):
        raise result
    return result


def objects(module: Module, img: ImageValue) -> Objects:
    result = call(module, img)
    assert isinstance(result, Objects)
    return result


def loaded(module: Module) -> Iterator[Module]:
    module.load("cpu")
    module.warmup()
    yield module


@pytest.fixture(scope="module")
def facedet() -> Iterator[Module]:
    yield from loaded(FaceDet())


@pytest.fixture(scope="module")
def seg() -> Iterator[Module]:
    yield from loaded(Seg())


@pytest.fixture(scope="module")
def ocr_pair() -> Iterator[tuple[Module, Module]]:
    engine = PPOCR()
    ocr, read = Ocr(engine), Read(engine)
    ocr.load("cpu")
    read.load("cpu")
    ocr.warmup()
    yield ocr, read


def astronaut() -> ImageValue:
    return image(data.astronaut(), "sha256:astronaut")


def text_image(lines: list[str], size: int = 40) -> ImageValue:
    im = Image.new("RGB", (640, 80 + 80 * len(lines)), "white")
    draw = ImageDraw.Draw(im)
    font = ImageFont.truetype(str(FONT), size)
    for i, line in enumerate(lines):
        draw.text((24, 30 + 80 * i), line, fill="black", font=font)
    return image(im, "sha256:text")


def ink_box(text: str, at: tuple[int, int], size: int = 40) -> tuple[float, float, float, float]:
    """Where PIL draws the ink of ``text`` at ``at`` in DejaVu Sans."""
    left, top, right, bottom = ImageFont.truetype(str(FONT), size).getbbox(text)
    return at[0] + left, at[1] + top, at[0] + right, at[1] + bottom


def everything() -> tuple[ImageValue, dict[str, list[tuple[float, float, float, float]]]]:
    """The astronaut with a left hand over the flag, a right hand by the shuttle and two signs
    below them: one of each kind SEG finds, and two of the hands and of the text; where each is."""
    canvas = Image.fromarray(data.astronaut())
    hands = [paste_hand(canvas, 120, (10, 10), left=True)[0], paste_hand(canvas, 120, (382, 10))[0]]
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.truetype(str(FONT), 26)
    signs = []
    for text, at in (("EXIT 7", (8, 160)), ("LAUNCH", (396, 180))):
        left, top, right, bottom = font.getbbox(text)
        draw.rectangle((at[0] - 6, at[1] - 6, at[0] + right + 6, at[1] + bottom + 6), fill="white")
        draw.text(at, text, fill="black", font=font)
        signs.append((at[0] + left, at[1] + top, at[0] + right, at[1] + bottom))
    return image(canvas, "sha256:everything"), {"hand": hands, "text": signs}


def check_masks(found: Objects | list[Obj]) -> None:
    for o in found:
        assert o.mask is not None and o.mask.dtype == bool
        ys, xs = np.nonzero(o.mask)
        assert o.box == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)  # every box is its mask's


# ----------------------------------------------------------------------------- FACEDET


def test_the_astronauts_face_is_found_where_it_is(facedet: Module) -> None:
    faces = objects(facedet, astronaut())
    assert len(faces) == 1
    face = faces.items[0]
    assert face.label == "face" and face.score > 0.5 and face.mask is None
    assert box_iou(face.box, ASTRONAUT_FACE) > 0.7
    eyes = face.attributes["keypoints"]
    # Her right eye is on the image's left; both sit in the upper half of the face box.
    assert eyes["right_eye"][0] < eyes["left_eye"][0]
    assert all(face.box[1] < eyes[k][1] < (face.box[1] + face.box[3]) / 2 for k in ("right_eye", "left_eye"))
    assert faces.image_size == (512, 512) and faces.image_key == "sha256:astronaut"


def test_no_face_in_a_cup_of_coffee_or_on_a_cat(facedet: Module) -> None:
    assert len(objects(facedet, image(data.coffee()))) == 0
    assert len(objects(facedet, image(data.chelsea()))) == 0


def test_small_faces_in_a_group_are_all_found(facedet: Module) -> None:
    # Four astronauts at a third of their size: ~35 px faces on a 1024 px canvas, too small for
    # the model on the whole image (measured: it finds none), found on its tiles.
    small = Image.fromarray(data.astronaut()).resize((171, 171))
    canvas = Image.new("RGB", (1024, 768), (120, 130, 140))
    for i in range(4):
        canvas.paste(small, (30 + 250 * i, 300))
    faces = objects(facedet, image(canvas))
    assert len(faces) == 4
    for i, face in enumerate(faces):  # left to right, each on its own copy's face
        x0, y0 = 30 + 250 * i, 300
        expected = tuple(v / 3 + off for v, off in zip(ASTRONAUT_FACE, (x0, y0, x0, y0)))
        assert box_iou(face.box, expected) > 0.5


def test_tiles_cover_the_image_with_half_overlap() -> None:
    assert tiles(512, 512) == [(0, 0, 512, 512), *[(x, y, 256, 256) for y in (0, 128, 256) for x in (0, 128, 256)]]
    assert tiles(150, 100) == [(0, 0, 150, 100)]  # too small to tile


def test_a_tiny_image_is_refused_with_a_reason(facedet: Module) -> None:
    with pytest.raises(ModuleError, match="at least 16×16"):
        call(facedet, image(Image.new("RGB", (12, 40))))


def test_a_huge_image_is_downscaled_for_the_model_and_boxes_come_back_in_its_pixels(facedet: Module) -> None:
    big = Image.fromarray(data.astronaut()).resize((3072, 3072))
    faces = objects(facedet, image(big))
    assert len(faces) == 1
    assert box_iou(faces.items[0].box, tuple(v * 6 for v in ASTRONAUT_FACE)) > 0.7


# ----------------------------------------------------------------------------- SEG


def test_seg_finds_the_astronaut_and_her_face(seg: Module) -> None:
    found = objects(seg, astronaut())
    people = [o for o in found if o.label == "person"]
    faces = [o for o in found if o.label == "face"]
    assert len(people) == 1 and len(faces) == 1
    person, face = people[0], faces[0]
    assert person.mask is not None and person.mask.shape == (512, 512) and person.mask.dtype == bool
    assert 0.15 < person.mask.mean() < 0.9
    cx, cy = (ASTRONAUT_FACE[0] + ASTRONAUT_FACE[2]) / 2, (ASTRONAUT_FACE[1] + ASTRONAUT_FACE[3]) / 2
    assert person.mask[int(cy), int(cx)]
    assert not person.mask[20, 480]  # the sky by the rocket is not her
    ys, xs = np.nonzero(person.mask)
    assert person.box == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
    assert face.mask is not None and face.mask[int(cy), int(cx)]
    assert face.mask.sum() < 0.1 * person.mask.sum()
    assert box_iou(face.box, ASTRONAUT_FACE) > 0.6


def test_seg_finds_no_person_in_coffee_or_a_cat(seg: Module) -> None:
    # The selfie segmenter alone marks a quarter of the coffee photo and most of the cat.
    assert len(objects(seg, image(data.coffee()))) == 0
    assert [o.label for o in objects(seg, image(data.chelsea()))] == []


def test_seg_splits_a_row_of_people_one_per_face(seg: Module) -> None:
    cut = Image.fromarray(data.astronaut()).crop((120, 0, 380, 512)).resize((130, 256))
    canvas = Image.new("RGB", (1024, 400), (200, 200, 200))
    for i in range(4):
        canvas.paste(cut, (60 + 240 * i, 140))
    found = objects(seg, image(canvas))
    people = [o for o in found if o.label == "person"]
    assert len(people) == 4 and len([o for o in found if o.label == "face"]) == 4
    for i, p in enumerate(people):
        assert p.mask is not None
        x1, x2 = 60 + 240 * i, 60 + 240 * i + 130
        inside = p.mask[:, x1:x2].sum()
        assert inside > 0.95 * p.mask.sum()  # each mask on its own copy
    assert not np.any(np.sum([p.mask for p in people if p.mask is not None], axis=0) > 1)  # no pixel twice


def test_seg_finds_people_faces_hands_and_text_in_that_order_each_left_to_right(seg: Module) -> None:
    img, where = everything()
    found = objects(seg, img)
    labels = [o.label for o in found]
    assert labels == ["person", "face", "hand", "hand", "text", "text"]
    check_masks(found)
    for label in ("hand", "text"):
        group = [o for o in found if o.label == label]
        assert [o.box[0] for o in group] == sorted(o.box[0] for o in group)
        for o, box in zip(group, where[label]):
            assert box_iou(o.box, box) > 0.5 if label == "hand" else o.box[0] <= box[0] + 2
    hands = [o for o in found if o.label == "hand"]
    assert [h.attributes["handedness"] for h in hands] == ["left", "right"]
    assert all(len(h.attributes["keypoints"]) == 21 for h in hands)
    for text, ink in zip([o for o in found if o.label == "text"], where["text"]):
        # Around the sign's words: the detector grows each region by its area × 1.6 / its perimeter.
        assert text.box[0] <= ink[0] + 2 and text.box[1] <= ink[1] + 2
        assert text.box[2] >= ink[2] - 2 and text.box[3] >= ink[3] - 2
        assert text.area < 4.0 * (ink[2] - ink[0]) * (ink[3] - ink[1])  # short words grow relatively more
        assert 0.5 <= text.score <= 1.0 and len(text.attributes["quad"]) == 4
    person = found.items[0]
    assert person.mask is not None and not any(person.mask[int((y1 + y2) / 2), int((x1 + x2) / 2)]
                                               for x1, y1, x2, y2 in where["hand"])


def test_seg_finds_no_hand_or_text_on_the_plain_astronaut(seg: Module) -> None:
    assert [o.label for o in objects(seg, astronaut())] == ["person", "face"]


def test_segs_version_hashes_every_model_it_runs() -> None:
    files = Seg().model_files()
    assert set(people_files()) | set(hands_files()) | {text_files()[0]} == set(files)
    assert Seg().version.startswith("2-")


def test_people_and_faces_alone_are_segs(seg: Module) -> None:
    found = objects(seg, astronaut())
    people, faces = find_people(astronaut()), find_faces(astronaut())
    assert [o.label for o in people] == ["person"] and [o.label for o in faces] == ["face"]
    assert people[0].box == found.items[0].box and np.array_equal(people[0].mask, found.items[0].mask)
    check_masks(people + faces)
    # A face alone is the ellipse in FACEDET's box: SEG's, before SEG cuts it to the person.
    assert box_iou(faces[0].box, found.items[1].box) > 0.95
    assert faces[0].attributes["keypoints"].keys() == found.items[1].attributes["keypoints"].keys()
    assert find_people(image(data.coffee())) == [] and find_faces(image(data.coffee())) == []


# ----------------------------------------------------------------------------- OCR / READ


def test_read_reads_a_phrase_exactly(ocr_pair: tuple[Module, Module]) -> None:
    _, read = ocr_pair
    assert call(read, text_image(["PURPLE ELEPHANT 42"])) == "PURPLE ELEPHANT 42"


def test_two_lines_come_back_in_reading_order_with_boxes_around_them(ocr_pair: tuple[Module, Module]) -> None:
    ocr, read = ocr_pair
    img = text_image(["PURPLE ELEPHANT 42", "second line here"])
    assert call(read, img) == "PURPLE ELEPHANT 42\nsecond line here"
    lines = objects(ocr, img)
    assert [o.label for o in lines] == ["PURPLE ELEPHANT 42", "second line here"]
    font = ImageFont.truetype(str(FONT), 40)
    for i, line in enumerate(lines):
        assert line.score > 0.9 and line.attributes["text"] == line.label and len(line.attributes["quad"]) == 4
        left, top, right, bottom = font.getbbox(line.label)  # where PIL drew the ink
        ink = (24 + left, 30 + 80 * i + top, 24 + right, 30 + 80 * i + bottom)
        # Around the words: the ink inside the box, with no more margin than the detector's own
        # (it grows every region by a fixed ratio before boxing it).
        assert line.box[0] <= ink[0] + 2 and line.box[1] <= ink[1] + 2
        assert line.box[2] >= ink[2] - 2 and line.box[3] >= ink[3] - 2
        assert line.area < 2.0 * (ink[2] - ink[0]) * (ink[3] - ink[1])


def test_no_text_reads_as_empty(ocr_pair: tuple[Module, Module]) -> None:
    ocr, read = ocr_pair
    blank = image(Image.new("RGB", (320, 240), (90, 140, 200)))
    assert call(read, blank) == ""
    assert len(objects(ocr, blank)) == 0


def test_text_regions_lie_over_the_lines_and_are_ocrs_lines_unread(ocr_pair: tuple[Module, Module]) -> None:
    ocr, _ = ocr_pair
    img = text_image(["PURPLE ELEPHANT 42", "second line here"])
    regions = find_text_regions(img)
    assert [o.label for o in regions] == ["text", "text"]
    check_masks(regions)
    lines = objects(ocr, img)
    for i, line in enumerate(lines):
        ink = ink_box(line.label, (24, 30 + 80 * i))
        region = max(regions, key=lambda r: box_iou(r.box, ink))
        assert region.mask is not None and region.mask[int((ink[1] + ink[3]) / 2), int((ink[0] + ink[2]) / 2)]
        assert region.box[0] <= ink[0] + 2 and region.box[2] >= ink[2] - 2
        assert box_iou(region.box, line.box) > 0.9  # the same detection, not read
        assert "text" not in region.attributes


def test_past_the_mask_budget_text_regions_keep_their_boxes_only(monkeypatch: pytest.MonkeyPatch) -> None:
    import modules.photo.text as text_mod

    img = text_image(["PURPLE ELEPHANT 42", "second line here"])
    masked = find_text_regions(img)
    monkeypatch.setattr(text_mod, "MASK_BUDGET", 1)  # a page of small print on a large scan
    plain = find_text_regions(img)
    assert [o.mask for o in plain] == [None, None]
    for a, b in zip(masked, plain):
        assert box_iou(a.box, b.box) > 0.95 and a.attributes["quad"] == b.attributes["quad"]


def test_no_text_regions_on_a_blank_a_cat_or_coffee() -> None:
    # The detector's one region on the coffee photo covers four fifths of it: no line of text does.
    assert find_text_regions(image(Image.new("RGB", (320, 240), (90, 140, 200)))) == []
    assert find_text_regions(image(data.chelsea())) == []
    assert find_text_regions(image(data.coffee())) == []


# ----------------------------------------------------------------------------- the pack, through the pool


def test_the_pack_agrees_with_the_declared_signatures() -> None:
    p = pack()
    check_declared(p)
    names = {m.name for m in p.modules}
    assert {"FACEDET", "SEG", "OCR", "READ"} <= names


async def test_facedet_through_the_pool_is_loaded_versioned_and_on_the_cpu() -> None:
    p = pack()
    mods = [m for m in p.modules if m.name in ("FACEDET", "READ")]
    before = {m.name: m.version for m in mods}  # known before anything loads
    assert all(v.startswith("1-") and len(v) == 14 for v in before.values())
    pool = Pool([type(p)("photo", mods)], "cpu")
    await pool.start()
    try:
        assert pool.ready
        called = await pool.call("FACEDET", {"image": astronaut()})
        assert isinstance(called.value, Objects) and len(called.value) == 1
        assert {m.name: m.version for m in mods} == before
        described = {d["name"]: d for d in pool.describe()}
        assert described["FACEDET"]["state"] == "ready" and described["FACEDET"]["device"] == "cpu"
        with pytest.raises(ModuleError, match="needs an image"):
            await pool.call("FACEDET", {"image": "not an image"})
    finally:
        await pool.close()


def test_a_cuda_request_still_runs_on_the_cpu() -> None:
    m = FaceDet()
    m.device = "cuda"  # what the pool does with NSX_DEVICE=cuda
    assert m.device == "cpu"
