"""Who is who: FACE_MATCH, SELECT and CLASSIFY on dlib's face embeddings, and the gallery of known
faces they read, on real photos with the real models (loaded once for the module).

The photos: scikit-image's astronaut (Eileen Collins) and matplotlib's Grace Hopper, pasted into
one collage at other scales and mirrored, so no face there is a copy of a reference's pixels.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from matplotlib import cbook
from PIL import Image, ImageOps
from skimage import data

from app.store import MemoryStore
from modules.base import Module, ModuleError
from modules.gallery import Galleries, Gallery, GalleryError, clean_name
from modules.packs import check_declared
from modules.photo import identity, pack
from modules.photo.faces import FaceDet
from modules.photo.people import Seg
from modules.values import ImageValue, Obj, Objects

ASTRONAUT = Image.fromarray(data.astronaut())  # 512×512
with Image.open(cbook.get_sample_data("grace_hopper.jpg")) as _hopper:
    HOPPER = _hopper.convert("RGB")  # 512 wide × 600 high
ASTRONAUT_FACE = (173.7, 67.8, 277.6, 171.7)  # as MediaPipe boxes it on the whole photo
HOPPER_FACE = (166.0, 128.0, 366.0, 329.0)

# (photo, its face, size pasted at, where, mirrored)
PASTES = [
    ("astronaut", (300, 300), (20, 20), False),
    ("astronaut", (420, 420), (360, 10), True),
    ("hopper", (256, 300), (820, 20), False),
    ("hopper", (340, 400), (820, 300), True),
]
EILEEN = "Eileen Collins"
GRACE = "Grace Hopper"


def photo(name: str) -> Image.Image:
    return ASTRONAUT if name == "astronaut" else HOPPER


def collage() -> ImageValue:
    """The two people twice each, scaled and mirrored (1200×720)."""
    canvas = Image.new("RGB", (1200, 720), (90, 100, 110))
    for name, size, at, mirrored in PASTES:
        im = photo(name)
        canvas.paste((ImageOps.mirror(im) if mirrored else im).resize(size), at)
    return ImageValue(canvas, "sha256:collage")


def pasted_faces(who: str) -> list[tuple[float, float, float, float]]:
    """Where each copy of ``who``'s face lies in the collage."""
    out = []
    for name, (w, h), (x0, y0), mirrored in PASTES:
        if name != who:
            continue
        im = photo(name)
        x1, y1, x2, y2 = ASTRONAUT_FACE if name == "astronaut" else HOPPER_FACE
        if mirrored:
            x1, x2 = im.width - x2, im.width - x1
        sx, sy = w / im.width, h / im.height
        out.append((x0 + x1 * sx, y0 + y1 * sy, x0 + x2 * sx, y0 + y2 * sy))
    return out


def centre_in(o: Obj, boxes: list[tuple[float, float, float, float]]) -> int | None:
    cx, cy = (o.box[0] + o.box[2]) / 2, (o.box[1] + o.box[3]) / 2
    for i, (x1, y1, x2, y2) in enumerate(boxes):
        if x1 <= cx <= x2 and y1 <= cy <= y2:
            return i
    return None


def reference() -> ImageValue:
    """Another crop and scale of the astronaut: her face, a little of her suit."""
    return ImageValue(ASTRONAUT.crop((120, 20, 360, 260)).resize((180, 180)), "sha256:eileen-ref")


def hopper() -> ImageValue:
    return ImageValue(HOPPER, "sha256:hopper")


def astronaut() -> ImageValue:
    return ImageValue(ASTRONAUT, "sha256:astronaut")


def call(module: Module, **args: object) -> Objects:
    result = module.forward([args])[0]
    if isinstance(result, Exception):
        raise result
    assert isinstance(result, Objects)
    return result


@dataclass
class Known:
    match: Module
    select: Module
    classify: Module
    gallery: Gallery
    embedder: identity.FaceEmbedder


@pytest.fixture(scope="module")
def known() -> Iterator[Known]:
    mods, gallery = identity.build()
    for m in mods:
        m.load("cpu")
    mods[1].warmup()  # the embedder; the word model loads on first need
    assert isinstance(mods[0], identity.FaceMatch)
    yield Known(mods[0], mods[1], mods[2], gallery, mods[0].embedder)


@pytest.fixture
def gallery(known: Known) -> Iterator[Gallery]:
    """The module's gallery, empty at the start and the end of the test."""
    for name in list(known.gallery.names()):
        known.gallery.remove(name)
    yield known.gallery
    for name in list(known.gallery.names()):
        known.gallery.remove(name)


@pytest.fixture(scope="module")
def facedet() -> Iterator[Module]:
    m = FaceDet()
    m.load("cpu")
    yield m


@pytest.fixture(scope="module")
def seg() -> Iterator[Module]:
    m = Seg()
    m.load("cpu")
    yield m


@pytest.fixture(scope="module")
def collage_faces(facedet: Module) -> Objects:
    img = collage()
    faces = call(facedet, image=img)
    # The detector must see all four for what follows to mean anything.
    for who in ("astronaut", "hopper"):
        assert sorted(i for o in faces if (i := centre_in(o, pasted_faces(who))) is not None) == [0, 1], who
    return faces


# ----------------------------------------------------------------------------- FACE_MATCH


def test_face_match_finds_the_astronaut_and_not_grace_hopper(known: Known, collage_faces: Objects) -> None:
    found = call(known.match, image=collage(), object=collage_faces, reference=reference(), threshold=0.6)
    assert sorted(centre_in(o, pasted_faces("astronaut")) for o in found) == [0, 1]  # both copies, mirrored too
    assert all(centre_in(o, pasted_faces("hopper")) is None for o in found)
    assert all(o.label == "face" and 0 <= o.attributes["distance"] < 0.35 for o in found)
    assert found.image_key == "sha256:collage"
    # The same faces are Grace Hopper's when she is the reference.
    theirs = call(known.match, image=collage(), object=collage_faces, reference=hopper(), threshold=0.6)
    assert sorted(centre_in(o, pasted_faces("hopper")) for o in theirs) == [0, 1]


def test_a_tight_threshold_matches_nobody(known: Known, collage_faces: Objects) -> None:
    assert len(call(known.match, image=collage(), object=collage_faces, reference=reference(), threshold=0.01)) == 0
    with pytest.raises(ModuleError, match=r"threshold must be a number in \(0, 2\]"):
        call(known.match, image=collage(), object=collage_faces, reference=reference(), threshold=-1)


def test_a_reference_needs_exactly_one_face(known: Known, collage_faces: Objects) -> None:
    with pytest.raises(ModuleError, match="no face found in the reference image"):
        call(known.match, image=collage(), object=collage_faces, reference=ImageValue(
            Image.fromarray(data.coffee()), "sha256:coffee"))
    two = Image.new("RGB", (1024, 512))
    two.paste(ASTRONAUT, (0, 0))
    two.paste(HOPPER.resize((512, 600)).crop((0, 44, 512, 556)), (512, 0))
    with pytest.raises(ModuleError, match="the reference image has 2 faces .*one person only"):
        call(known.match, image=collage(), object=collage_faces, reference=ImageValue(two, "sha256:two"))


def test_objects_from_another_image_are_refused(known: Known, collage_faces: Objects) -> None:
    with pytest.raises(ModuleError, match="the objects were found in another image"):
        call(known.match, image=astronaut(), object=collage_faces, reference=reference())


# ----------------------------------------------------------------------------- SELECT by words


def test_select_by_a_person_word_on_seg_output(known: Known, gallery: Gallery, seg: Module) -> None:
    found = call(seg, image=astronaut())
    assert sorted(o.label for o in found if o.label in ("person", "face")) == ["face", "person"]
    woman = call(known.select, image=astronaut(), object=found, query="woman", category=None)
    # One individual: the person, whose face is part of her, not a second woman.
    assert [o.label for o in woman] == ["person"]
    assert "'woman' read as person" in woman.items[0].attributes["matched"]
    assert "cannot tell men from women" in woman.items[0].attributes["matched"]
    people = call(known.select, image=astronaut(), object=found, query="people", category=None)
    assert [o.label for o in people] == ["person"]
    assert "cannot tell" not in people.items[0].attributes["matched"]
    youngster = call(known.select, image=astronaut(), object=found, query="youngster", category=None)
    assert [o.label for o in youngster] == ["person"]
    assert "similarity" in youngster.items[0].attributes["matched"]  # not an exact word: the embedding's
    faces = call(known.select, image=astronaut(), object=found, query="face", category=None)
    assert [o.label for o in faces] == ["face"]
    # A category narrows first: 'person' asked of the faces alone is each face.
    narrowed = call(known.select, image=astronaut(), object=found, query="person", category="face")
    assert [o.label for o in narrowed] == ["face"]


def test_select_what_this_pack_cannot_see_fails_naming_hf(known: Known, gallery: Gallery,
                                                         collage_faces: Objects) -> None:
    for query in ("dog", "red bus", "man in red", "sky"):
        with pytest.raises(ModuleError, match=r"cannot select .*people \(person, people, man.*'face', 'hand', "
                                              r"'text'.*faces gallery \(none yet\).*needs the 'hf' pack"):
            call(known.select, image=collage(), object=collage_faces, query=query, category=None)
    with pytest.raises(ModuleError, match="category 'sky' is not one this pack tells apart"):
        call(known.select, image=collage(), object=collage_faces, query="person", category="sky")


def test_select_an_unknown_name_says_it_is_not_in_the_gallery_and_how_to_add_it(
        known: Known, gallery: Gallery, collage_faces: Objects) -> None:
    with pytest.raises(ModuleError, match=r"'Ada Lovelace' is not in the faces gallery; add a photo of them with "
                                          r"POST /v1/galleries/faces \(curl -F name='Ada Lovelace'"):
        call(known.select, image=collage(), object=collage_faces, query="Ada Lovelace", category=None)


# ----------------------------------------------------------------------------- SELECT and CLASSIFY by names


def test_select_by_gallery_names_tags_the_right_faces(known: Known, gallery: Gallery,
                                                      collage_faces: Objects) -> None:
    gallery.add(EILEEN, reference())
    gallery.add(GRACE, hopper())
    grace = call(known.select, image=collage(), object=collage_faces, query="grace hopper", category=None)
    assert sorted(centre_in(o, pasted_faces("hopper")) for o in grace) == [0, 1]
    assert all(o.attributes["name"] == GRACE and o.attributes["distance"] < 0.6 for o in grace)
    both = call(known.select, image=collage(), object=collage_faces, query=f"{EILEEN}, {GRACE}", category=None)
    assert len(both) == 4
    eileen = [o for o in both if o.attributes["name"] == EILEEN]
    assert sorted(centre_in(o, pasted_faces("astronaut")) for o in eileen) == [0, 1]


def test_a_name_on_seg_output_is_the_person_once_or_her_face(known: Known, gallery: Gallery, seg: Module) -> None:
    gallery.add(EILEEN, reference())
    found = call(seg, image=astronaut())
    her = call(known.select, image=astronaut(), object=found, query="EILEEN COLLINS", category=None)
    assert [o.label for o in her] == ["person"]
    assert her.items[0].attributes["name"] == EILEEN and len(her.items[0].attributes["face_box"]) == 4
    face = call(known.select, image=astronaut(), object=found, query=EILEEN, category="face")
    assert [o.label for o in face] == ["face"] and face.items[0].attributes["name"] == EILEEN


def test_classify_gives_each_name_to_the_face_it_fits_best(known: Known, gallery: Gallery,
                                                          collage_faces: Objects) -> None:
    gallery.add(EILEEN, reference())
    gallery.add(GRACE, hopper())
    out = call(known.classify, image=collage(), object=collage_faces, categories=[EILEEN])
    assert len(out) == len(collage_faces)  # every object comes back
    named = [o for o in out if o.label == EILEEN]
    assert len(named) == 1 and centre_in(named[0], pasted_faces("astronaut")) is not None  # VisProg: one object
    for o in out:
        if centre_in(o, pasted_faces("hopper")) is not None:
            # Nearer to Grace Hopper, who is in the gallery: never given Eileen's name.
            assert o.label == "face" and o.attributes["nearest"]["name"] == GRACE
            assert EILEEN in o.attributes["distances"]
    both = call(known.classify, image=collage(), object=collage_faces, categories=[GRACE, EILEEN])
    assert sorted(o.label for o in both if o.label != "face") == [EILEEN, GRACE]


def test_classify_refuses_categories_not_in_the_gallery(known: Known, gallery: Gallery,
                                                        collage_faces: Objects) -> None:
    gallery.add(EILEEN, reference())
    with pytest.raises(ModuleError, match=r"'cat' is not a name in the faces gallery \(it has: Eileen Collins\); "
                                          r".*need the 'hf' pack"):
        call(known.classify, image=collage(), object=collage_faces, categories=["cat"])
    with pytest.raises(ModuleError, match="cannot tell man from other people"):
        call(known.classify, image=collage(), object=collage_faces, categories=["man", EILEEN])


def test_the_modules_state_is_the_gallery_digest(known: Known, gallery: Gallery) -> None:
    empty = known.select.state()
    assert empty == gallery.digest() == known.classify.state()
    assert known.match.state() == ""  # FACE_MATCH reads no gallery
    gallery.add(EILEEN, reference())
    assert known.select.state() not in ("", empty)
    gallery.remove(EILEEN)
    assert known.select.state() == empty


def test_the_pack_declares_the_gallery_and_agrees_with_visprogs_signatures() -> None:
    p = pack()
    check_declared(p)
    assert [g.name for g in p.galleries] == ["faces"]
    names = {m.name: m for m in p.modules}
    assert {"FACE_MATCH", "SELECT", "CLASSIFY"} <= set(names)
    assert not any(names[n].cheap for n in ("FACE_MATCH", "SELECT", "CLASSIFY"))
    assert names["FACE_MATCH"].version == names["CLASSIFY"].version  # one embedder, one weights hash
    assert names["SELECT"].version.startswith(names["FACE_MATCH"].version + "-w")


# ----------------------------------------------------------------------------- the gallery itself


def _fake() -> Gallery:
    """A gallery whose embedding is the image's mean colour: the gallery's own rules, no model."""
    def embed(image: ImageValue) -> np.ndarray:
        return np.asarray(image.image, np.float32).mean(axis=(0, 1)) / 255
    return Gallery("things", embed, model=lambda: "fake-1")


def _img(colour: tuple[int, int, int], key: str) -> ImageValue:
    return ImageValue(Image.new("RGB", (32, 32), colour), key)


def test_names_match_in_any_case_and_keep_their_first_spelling() -> None:
    g = _fake()
    g.add("Nicole  Kidman ", _img((10, 20, 30), "sha256:a"))
    g.add("nicole kidman", _img((11, 20, 30), "sha256:b"))
    g.add("NICOLE KIDMAN", _img((11, 20, 30), "sha256:b"))  # the same image again: one entry
    assert g.names() == {"Nicole Kidman": 2}
    assert g.lookup("nicole KIDMAN") == "Nicole Kidman" and g.lookup("Nicole") is None
    names, vectors = g.matrix()
    assert names == ("Nicole Kidman", "Nicole Kidman") and vectors.shape == (2, 3)
    assert len(g.remove("NICOLE kidman")) == 2 and len(g) == 0
    with pytest.raises(KeyError):
        g.remove("Nicole Kidman")


@pytest.mark.parametrize(("name", "why"), [("", "the name is empty"), ("   ", "the name is empty"),
                                           ("Ada, Alan", "a comma"), ("a/b", "a slash"),
                                           ("x" * 101, "at most 100"), ("Ada\x00", "control character")])
def test_names_that_could_never_be_asked_for_are_refused(name: str, why: str) -> None:
    with pytest.raises(GalleryError, match=why):
        clean_name(name)


def test_the_digest_follows_the_entries_not_their_order() -> None:
    a, b = _fake(), _fake()
    a.add("Ada", _img((1, 2, 3), "sha256:1"))
    a.add("Alan", _img((4, 5, 6), "sha256:2"))
    b.add("Alan", _img((4, 5, 6), "sha256:2"))
    before = b.digest()
    b.add("Ada", _img((1, 2, 3), "sha256:1"))
    assert a.digest() == b.digest() != before


def test_the_gallery_is_thread_safe() -> None:
    g = _fake()
    errors: list[BaseException] = []

    def add(t: int) -> None:
        try:
            for i in range(25):
                g.add(f"person {i % 5}", _img((t, i, 0), f"sha256:{t}-{i}"))
                g.digest()
                g.matrix()
        except BaseException as e:  # noqa: BLE001 - collected and re-raised by the test
            errors.append(e)

    threads = [threading.Thread(target=add, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert g.names() == {f"person {i}": 40 for i in range(5)}


# ----------------------------------------------------------------------------- loading: folder and store


def _jpeg(im: Image.Image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path, format="JPEG", quality=92)


async def test_a_folder_loads_one_file_or_one_folder_per_name_and_warns_about_the_rest(
        known: Known, gallery: Gallery, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    _jpeg(ASTRONAUT.crop((100, 0, 400, 300)), tmp_path / "faces" / f"{EILEEN}.jpg")
    _jpeg(HOPPER, tmp_path / "faces" / GRACE / "1.jpg")
    _jpeg(HOPPER.resize((256, 300)), tmp_path / "faces" / GRACE / "2.jpg")
    _jpeg(Image.fromarray(data.coffee()), tmp_path / "faces" / "Coffee.jpg")
    (tmp_path / "faces" / "notes.txt").write_text("not a face")
    (tmp_path / "faces" / "Broken.png").write_bytes(b"\x89PNG not really")
    _jpeg(ASTRONAUT, tmp_path / "pets" / "Rex.jpg")
    with caplog.at_level(logging.WARNING, logger="nsx.gallery"):
        await Galleries([gallery]).load(tmp_path)
    assert gallery.names() == {EILEEN: 1, GRACE: 2}
    assert {e.source for e in gallery.entries()} == {"folder"}
    warned = "\n".join(r.getMessage() for r in caplog.records)
    assert "Coffee.jpg: skipped: no face found" in warned
    assert "notes.txt: skipped: not an image file" in warned
    assert "Broken.png: skipped: it is not a readable image" in warned
    assert "pets: skipped: not the folder of a gallery (galleries here: faces" in warned


def fresh(known: Known) -> Gallery:
    """A new faces gallery on the module's embedder: what a restarted process starts with."""
    return Gallery("faces", known.embedder.reference, model=lambda: known.embedder.version)


async def test_the_store_keeps_api_names_and_deletions_across_a_restart(known: Known, tmp_path: Path) -> None:
    store = MemoryStore()
    first = fresh(known)
    await Galleries([first], store).add("faces", EILEEN, reference())
    _jpeg(HOPPER, tmp_path / "faces" / f"{GRACE}.jpg")
    # A restart: a new gallery over the same store and folder.
    second = fresh(known)
    book = Galleries([second], store)
    await book.load(tmp_path)
    assert second.names() == {EILEEN: 1, GRACE: 1} and second.digest() != first.digest()
    assert {e.name: e.source for e in second.entries()} == {EILEEN: "api", GRACE: "folder"}
    await book.remove("faces", GRACE)  # a folder name deleted through the API stays deleted
    third = fresh(known)
    await Galleries([third], store).load(tmp_path)
    assert third.names() == {EILEEN: 1}


async def test_entries_of_another_model_are_embedded_again_from_the_kept_copy(known: Known) -> None:
    store = MemoryStore()
    old = Gallery("faces", known.embedder.reference, model=lambda: "old-model")
    await Galleries([old], store).add("faces", EILEEN, reference())
    new = fresh(known)
    await Galleries([new], store).load()
    (entry,) = new.entries()
    assert entry.model == known.embedder.version and entry.name == EILEEN
    # Embedded from the stored copy (a JPEG of the same pixels): the same face, near enough.
    assert float(np.linalg.norm(entry.vector - old.entries()[0].vector)) < 0.1


async def test_writes_before_the_stored_gallery_is_loaded_wait_for_it(known: Known) -> None:
    # A write during start-up must not save a gallery without the stored names over them.
    store = MemoryStore()
    await Galleries([fresh(known)], store).add("faces", EILEEN, reference())
    restarted = fresh(known)
    book = Galleries([restarted], store)
    book.expect_load()
    adding = asyncio.create_task(book.add("faces", GRACE, reference()))
    await asyncio.sleep(0.05)
    assert not adding.done()  # waiting for the load
    await book.load()
    await adding
    again = fresh(known)
    await Galleries([again], store).load()
    assert set(again.names()) == {EILEEN, GRACE}


@pytest.mark.parametrize("query", [",,,", " , "])
def test_select_without_a_name_says_so(known: Known, query: str) -> None:
    found = Objects((), "sha256:astronaut", (512, 512))
    with pytest.raises(ModuleError, match="SELECT needs a query"):
        call(known.select, image=astronaut(), object=found, query=query, category=None)
