"""The photo pack's edits (BGBLUR, COLORPOP, BLUR, PIXELATE, and EMOJI where it shares their
contract) on real photos, with masks and boxes drawn here; then through the HTTP API: every edit's
output and mask downloadable, and VisProg's chained edits, from the cache as without it."""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Iterator

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from scipy import ndimage
from skimage import data

from app.main import create_app
from app.records import artifact_url
from app.settings import Settings
from modules.base import ModuleError, Pack
from modules.core import pack as core_pack
from modules.packs import check_declared
from modules.photo import edits, faces
from modules.photo.edits import bgblur as bgblur_fn
from modules.photo.edits import blur, colorpop, cover_with_emoji, feather_px, pixel_block, pixelate
from modules.values import ImageValue, Obj, Objects, pixel_box
from tests.apputil import b64

ASTRONAUT = data.astronaut()  # 512×512
COFFEE = data.coffee()  # 400 rows × 600 columns
FACE = (170, 40, 260, 150)  # the astronaut's face, x1 y1 x2 y2
F = feather_px(512, 512)

Edit = Callable[[ImageValue, Objects], ImageValue]


def emoji_fn(image: ImageValue, objects: Objects) -> ImageValue:
    return cover_with_emoji(image, objects, "grinning_face")


EDITS = [bgblur_fn, colorpop, blur, pixelate, emoji_fn]
EDIT_IDS = ["BGBLUR", "COLORPOP", "BLUR", "PIXELATE", "EMOJI"]


def image(pixels: np.ndarray, key: str = "sha256:astronaut") -> ImageValue:
    return ImageValue(Image.fromarray(pixels), key)


def objects_in(img: ImageValue, *items: Obj) -> Objects:
    return Objects(tuple(items), img.key, (img.width, img.height))


def body_mask() -> np.ndarray:
    """An ellipse over the astronaut's suit; it runs off the bottom of the frame."""
    yy, xx = np.mgrid[:512, :512]
    return ((xx - 250) / 150) ** 2 + ((yy - 330) / 200) ** 2 <= 1


def box_mask(box: tuple[int, int, int, int], shape: tuple[int, int]) -> np.ndarray:
    m = np.zeros(shape, dtype=bool)
    m[box[1]:box[3], box[0]:box[2]] = True
    return m


def square(r: int) -> np.ndarray:
    return np.ones((2 * r + 1, 2 * r + 1), dtype=bool)


def inside(mask: np.ndarray, r: int) -> np.ndarray:
    """Pixels whose whole (2r+1)² window is in the mask; the frame's outside counts as in, so a
    region running off the edge must be kept exactly right up to the edge."""
    return ndimage.binary_erosion(mask, square(r), border_value=1)


def outside(mask: np.ndarray, r: int) -> np.ndarray:
    return ~ndimage.binary_dilation(mask, square(r))


def px(im: ImageValue | Image.Image) -> np.ndarray:
    pil = im.image if isinstance(im, ImageValue) else im
    assert pil.mode == "RGB"
    return np.asarray(pil).astype(np.int16)


def detail(pixels: np.ndarray, where: np.ndarray) -> float:
    """High-frequency energy: mean squared Laplacian of the luma over ``where``."""
    grey = pixels.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    return float((ndimage.laplace(grey) ** 2)[where].mean())


# -- the pack -------------------------------------------------------------------------------------

def test_signatures_agree_with_visprog_and_run_off_the_event_loop() -> None:
    mods = edits.modules()
    check_declared(Pack("photo", mods))  # raises if BGBLUR/COLORPOP/EMOJI differ from the declarations
    assert {m.name for m in mods} == {"BGBLUR", "COLORPOP", "BLUR", "PIXELATE", "EMOJI"}
    assert all(m.signature.pack == "photo" and not m.cheap for m in mods)
    assert all([p.name for p in m.signature.params][:2] == ["image", "object"] for m in mods)


@pytest.mark.parametrize("edit", EDITS, ids=EDIT_IDS)
def test_every_edit_keeps_the_grid_and_the_mask_it_used(edit: Edit) -> None:
    img = image(ASTRONAUT)
    out = edit(img, objects_in(img, Obj(FACE, label="face")))
    assert out.grid == img.grid and out.key != img.key and out.region is not None
    face = box_mask(FACE, (512, 512))
    if edit is emoji_fn:  # the emoji's own outline: inside the (square) cover of the box
        assert out.region[face].mean() > 0.7 and not out.region[outside(face, 12)].any()
    else:
        assert np.array_equal(out.region, face)


def test_an_edit_of_an_edit_takes_the_objects_found_on_the_original() -> None:
    img = image(ASTRONAUT)
    found = objects_in(img, Obj(FACE, label="face"))
    blurred = bgblur_fn(img, found)
    out = pixelate(blurred, found)
    found_on_blurred = Objects(found.items, blurred.key, (512, 512))
    assert out.grid == img.grid and np.array_equal(px(out), px(pixelate(blurred, found_on_blurred)))


# -- BGBLUR and COLORPOP ----------------------------------------------------------------------------

def test_bgblur_keeps_the_masked_subject_and_blurs_the_rest() -> None:
    img, mask = image(ASTRONAUT), body_mask()
    out = px(bgblur_fn(img, objects_in(img, Obj((100, 130, 400, 512), label="person", mask=mask))))
    src = ASTRONAUT.astype(np.int16)
    keep, background = inside(mask, F), outside(mask, F)
    assert keep[-1].any()  # the subject runs off the bottom edge and is kept there too
    assert np.array_equal(out[keep], src[keep])
    assert np.abs(out - src)[background].mean() > 4
    assert detail(out, background) < 0.2 * detail(ASTRONAUT, background)
    # The seam is soft: the band just across the edge is neither all kept nor all blurred.
    band = ~keep & ~background
    assert 0 < np.count_nonzero(np.any(out != src, axis=-1)[band]) < np.count_nonzero(band)


def test_colorpop_keeps_colour_inside_and_greys_the_rest() -> None:
    img, mask = image(ASTRONAUT), body_mask()
    out = px(colorpop(img, objects_in(img, Obj((100, 130, 400, 512), mask=mask))))
    src = ASTRONAUT.astype(np.int16)
    keep, rest = inside(mask, F), outside(mask, F)
    assert np.array_equal(out[keep], src[keep])
    assert np.abs(out[keep][:, 0] - out[keep][:, 2]).mean() > 30  # the orange suit really is colour
    r, g, b = out[..., 0], out[..., 1], out[..., 2]
    assert np.array_equal(r[rest], g[rest]) and np.array_equal(g[rest], b[rest])
    luma = np.asarray(Image.fromarray(ASTRONAUT).convert("L")).astype(np.int16)
    assert np.array_equal(r[rest], luma[rest])
    # Across the seam, colour fades in: never more saturated than the source.
    band = ~keep & ~rest
    assert np.all(np.ptp(out[band], axis=-1) <= np.ptp(src[band], axis=-1) + 1)


@pytest.mark.parametrize("edit", [bgblur_fn, colorpop], ids=["BGBLUR", "COLORPOP"])
def test_box_only_objects_keep_their_box(edit: Edit) -> None:
    img = image(COFFEE, "sha256:coffee")
    cup = (150, 20, 450, 300)
    out = px(edit(img, objects_in(img, Obj(cup, label="cup"))))
    region = box_mask(cup, COFFEE.shape[:2])
    f = feather_px(600, 400)
    src = COFFEE.astype(np.int16)
    assert np.array_equal(out[inside(region, f)], src[inside(region, f)])
    assert np.abs(out - src)[outside(region, f)].mean() > 2


def test_several_objects_are_one_region() -> None:
    img = image(COFFEE, "sha256:coffee")
    a, b = (20, 20, 120, 120), (450, 250, 580, 380)
    out = px(colorpop(img, objects_in(img, Obj(a), Obj(b))))
    both = box_mask(a, COFFEE.shape[:2]) | box_mask(b, COFFEE.shape[:2])
    f = feather_px(600, 400)
    assert np.array_equal(out[inside(both, f)], COFFEE.astype(np.int16)[inside(both, f)])
    rest = outside(both, f)
    assert np.array_equal(out[..., 0][rest], out[..., 1][rest])


# -- BLUR and PIXELATE ------------------------------------------------------------------------------

@pytest.mark.parametrize("edit", [blur, pixelate], ids=["BLUR", "PIXELATE"])
def test_redaction_changes_the_face_and_nothing_beyond_its_feather(edit: Edit) -> None:
    img = image(ASTRONAUT)
    out = px(edit(img, objects_in(img, Obj(FACE, label="face"))))
    src = ASTRONAUT.astype(np.int16)
    face = box_mask(FACE, (512, 512))
    assert np.abs(out - src)[face].mean() > 10
    if edit is blur:
        assert detail(out, inside(face, 2)) < 0.1 * detail(ASTRONAUT, inside(face, 2))
    else:  # block edges are sharp by design; what matters is how few values are left
        x1, y1, x2, y2 = FACE
        b = pixel_block(x2 - x1, y2 - y1)
        colours = np.unique(out[y1:y2, x1:x2].reshape(-1, 3), axis=0)
        assert len(colours) <= -(-(x2 - x1) // b) * -(-(y2 - y1) // b)
    # The feather lies outside: beyond 2f of the box nothing changed, and inside every pixel did its part.
    assert np.array_equal(out[outside(face, 2 * F)], src[outside(face, 2 * F)])


def test_pixelate_blocks_are_uniform_over_the_face() -> None:
    img = image(ASTRONAUT)
    out = px(pixelate(img, objects_in(img, Obj(FACE))))
    b = pixel_block(FACE[2] - FACE[0], FACE[3] - FACE[1])
    assert 90 // b >= 5  # ≥ 5 blocks across: coarse, not a mosaic of hundreds
    x1, y1, x2, y2 = FACE
    for y in range(y1, y2, b):
        for x in range(x1, x2, b):
            block = out[y:min(y + b, y2), x:min(x + b, x2)].reshape(-1, 3)
            assert (block == block[0]).all(), (x, y)


def test_pixelate_follows_a_mask_not_its_box() -> None:
    img = image(ASTRONAUT)
    mask = body_mask()
    out = px(pixelate(img, objects_in(img, Obj((100, 130, 400, 512), mask=mask))))
    src = ASTRONAUT.astype(np.int16)
    assert np.abs(out - src)[mask].mean() > 10
    beyond = outside(mask, 2 * F)
    assert beyond[130:512, 100:400].any()  # corners of the box, outside the ellipse
    assert np.array_equal(out[beyond], src[beyond])


# -- empty and wrong inputs -------------------------------------------------------------------------

def test_no_objects_is_an_empty_region() -> None:
    """VisProg's loop over objects simply does not run: all blurred, all grey, or nothing hidden."""
    img = image(ASTRONAUT)
    none = objects_in(img)
    everywhere = np.ones((512, 512), dtype=bool)
    blurred = px(bgblur_fn(img, none))
    assert detail(blurred, everywhere) < 0.2 * detail(ASTRONAUT, everywhere)
    grey = px(colorpop(img, none))
    assert (grey[..., 0] == grey[..., 1]).all() and (grey[..., 1] == grey[..., 2]).all()
    for redact in (blur, pixelate):
        assert np.array_equal(px(redact(img, none)), ASTRONAUT)


@pytest.mark.parametrize("edit", EDITS, ids=EDIT_IDS)
def test_objects_from_another_image_are_refused(edit: Edit) -> None:
    img = image(ASTRONAUT)
    other = Objects((Obj(FACE),), "sha256:coffee", (512, 512))
    with pytest.raises(ModuleError, match="found in another 512×512 image"):
        edit(img, other)
    from_crop = Objects((Obj((10, 10, 40, 40)),), "sha256:crop", (90, 110))
    with pytest.raises(ModuleError, match="of size 90×110.*a crop"):
        edit(img, from_crop)
    inconsistent = Objects((Obj(FACE),), img.key, (256, 256))
    with pytest.raises(ModuleError, match="say their image is 256×256"):
        edit(img, inconsistent)


@pytest.mark.parametrize("edit", [bgblur_fn, colorpop, blur, pixelate], ids=["BGBLUR", "COLORPOP", "BLUR", "PIXELATE"])
def test_a_mask_of_the_wrong_shape_is_refused(edit: Edit) -> None:
    img = image(ASTRONAUT)
    bad = objects_in(img, Obj(FACE), Obj(FACE, label="face", mask=np.ones((256, 512), dtype=bool)))
    with pytest.raises(ModuleError, match=r"object 1 \(face\) has a mask of shape 256×512"):
        edit(img, bad)


# -- through the service ----------------------------------------------------------------------------

@pytest.fixture
def photo_client() -> Iterator[TestClient]:
    app = create_app(Settings(packs="core"), packs=[core_pack(), Pack("photo", [*faces.modules(), *edits.modules()])])
    with TestClient(app) as client:
        deadline = time.monotonic() + 30
        while client.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline, "service never became ready"
            time.sleep(0.02)
        yield client


def test_bgblur_over_http(photo_client: TestClient) -> None:
    buf = io.BytesIO()
    Image.fromarray(ASTRONAUT).save(buf, format="PNG")
    x1, y1, x2, y2 = FACE
    program = f"out = BGBLUR(IMAGE, REGION(IMAGE, [{x1}, {y1}, {x2}, {y2}]))\n"
    r = photo_client.post("/v1/runs", json={"program": program, "images": {"IMAGE": b64(buf.getvalue())}})
    assert r.status_code == 200, r.text
    record = r.json()
    assert record["status"] == "succeeded", record
    step = next(s for s in record["steps"] if s["module"] == "BGBLUR")
    assert (step["output"]["width"], step["output"]["height"]) == (512, 512)
    art = photo_client.get(step["output"]["url"])
    assert art.status_code == 200 and art.headers["content-type"] == "image/png"
    out = Image.open(io.BytesIO(art.content))
    assert out.format == "PNG" and out.size == (512, 512)
    got, src = px(out.convert("RGB")), ASTRONAUT.astype(np.int16)
    face = box_mask(FACE, (512, 512))
    assert np.array_equal(got[inside(face, F)], src[inside(face, F)])
    assert np.abs(got - src)[outside(face, F)].mean() > 4

    # Objects found in a crop cannot be applied to the whole photo: the step fails and says why.
    wrong = (f"c = CROP(IMAGE, REGION(IMAGE, [{x1}, {y1}, {x2}, {y2}]))\n"
             "out = BGBLUR(IMAGE, REGION(c, [0, 0, 20, 20]))\n")
    r = photo_client.post("/v1/runs", json={"program": wrong, "images": {"IMAGE": b64(buf.getvalue())}})
    failed = next(s for s in r.json()["steps"] if s["module"] == "BGBLUR")
    assert failed["status"] == "failed" and "a crop" in str(failed), failed


def astronaut_png() -> str:
    buf = io.BytesIO()
    Image.fromarray(ASTRONAUT).save(buf, format="PNG")
    return b64(buf.getvalue())


def run(client: TestClient, program: str, **options: object) -> dict[str, object]:
    r = client.post("/v1/runs", json={"program": program, "images": {"IMAGE": astronaut_png()}, "options": options})
    assert r.status_code == 200, r.text
    record: dict[str, object] = r.json()
    return record


def download(client: TestClient, url: str, mode: str) -> np.ndarray:
    r = client.get(url)
    assert r.status_code == 200 and r.headers["content-type"] == "image/png", url
    im = Image.open(io.BytesIO(r.content))
    assert im.format == "PNG" and im.size == (512, 512) and im.mode == mode
    return np.asarray(im.convert("L") if mode == "1" else im)  # a 1-bit mask read as 0/255


def mask_url(output: dict[str, str]) -> str:
    """The link the record gives beside ``mask_key``."""
    url = output["mask_url"]
    assert url == artifact_url(output["mask_key"])
    return url


def test_every_edit_output_and_its_mask_download_over_http(photo_client: TestClient) -> None:
    program = ("faces = FACEDET(IMAGE)\n"
               "a = BGBLUR(IMAGE, faces)\nb = COLORPOP(IMAGE, faces)\nc = BLUR(IMAGE, faces)\n"
               "d = PIXELATE(IMAGE, faces)\ne = EMOJI(IMAGE, faces, 'smiling_face_with_sunglasses')\n")
    record = run(photo_client, program)
    assert record["status"] == "succeeded", record
    steps = {s["module"]: s for s in record["steps"]}  # type: ignore[attr-defined]
    (face,) = steps["FACEDET"]["output"]["items"]
    box = box_mask(pixel_box(tuple(face["box"]), 512, 512), (512, 512))
    for module in ("BGBLUR", "COLORPOP", "BLUR", "PIXELATE", "EMOJI"):
        out = steps[module]["output"]
        assert out["grid"] == record["inputs"]["IMAGE"]["key"], module  # type: ignore[index]
        pixels = download(photo_client, out["url"], "RGB").astype(np.int16)
        mask = download(photo_client, mask_url(out), "1") > 127
        changed = np.any(pixels != ASTRONAUT, axis=-1)
        if module == "EMOJI":  # the mask is the emoji's outline: exactly where pixels may change
            assert not changed[~mask].any() and changed[mask].mean() > 0.9
            assert mask[box].mean() > 0.7
        else:  # the region the edit kept or hid: the face's box
            assert np.array_equal(mask, box), module


CHAIN = ("OBJ0=FACEDET(image=IMAGE)\n"
         "IMAGE0=BGBLUR(image=IMAGE,object=OBJ0)\n"
         "IMAGE1=EMOJI(image=IMAGE0,object=OBJ0,emoji='smiling_face_with_sunglasses')\n"
         "FINAL_RESULT=RESULT(var=IMAGE1)\n")


def test_visprog_chained_edits_over_http_with_the_cache(photo_client: TestClient) -> None:
    """EMOJI on BGBLUR's output with the faces found on the original: computed fresh, then with
    BGBLUR and FACEDET decoded from the cache, then wholly from the cache: one answer."""
    prefix = run(photo_client, CHAIN.split("IMAGE1=")[0])
    assert prefix["status"] == "succeeded", prefix
    partly, cached = run(photo_client, CHAIN), run(photo_client, CHAIN)
    fresh = run(photo_client, CHAIN, cache=False)
    for record in (partly, cached, fresh):
        assert record["status"] == "succeeded", record
    assert [s["cache"] for s in partly["steps"]] == ["hit", "hit", "miss"]  # type: ignore[index]
    assert {s["cache"] for s in cached["steps"]} == {"hit"}  # type: ignore[attr-defined]
    assert partly["result"] == cached["result"]
    got = [download(photo_client, r["result"]["url"], "RGB") for r in (partly, fresh)]  # type: ignore[index]
    assert np.array_equal(got[0], got[1])
    # The background is BGBLUR's, the face EMOJI's.
    steps = {s["module"]: s for s in partly["steps"]}  # type: ignore[attr-defined]
    blurred = download(photo_client, steps["BGBLUR"]["output"]["url"], "RGB")
    covered = download(photo_client, mask_url(steps["EMOJI"]["output"]), "1") > 127
    assert np.array_equal(got[0][~covered], blurred[~covered]) and (got[0][covered] != blurred[covered]).any()


def test_emoji_on_a_crop_with_the_photos_faces_is_refused_over_http(photo_client: TestClient) -> None:
    program = ("faces = FACEDET(IMAGE)\n"
               "c = CROP(IMAGE, faces)\n"
               "out = EMOJI(c, faces, 'grinning_face')\n")
    record = run(photo_client, program)
    failed = next(s for s in record["steps"] if s["module"] == "EMOJI")  # type: ignore[attr-defined]
    assert failed["status"] == "failed" and "a crop" in failed["error"], failed
