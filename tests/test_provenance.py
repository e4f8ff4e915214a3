"""Pixel grids: an image made by an edit that moves no pixel shares its input's grid, objects know
the grid they were found on, and both survive the step cache's JSON."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import pytest
from PIL import Image

from app.executor import Executor
from app.serialize import artifact_keys, decode, encode
from app.store import MemoryStore
from modules.base import ModuleError
from modules.core import crop, tag, union
from modules.core import pack as core_pack
from modules.pool import Pool
from modules.values import ImageValue, Obj, Objects, step_output
from program_dsl import IMAGE, compile_program


def photo(color: tuple[int, int, int] = (40, 80, 120)) -> ImageValue:
    buf = io.BytesIO()
    Image.new("RGB", (64, 48), color).save(buf, format="PNG")
    return ImageValue.from_bytes(buf.getvalue())


def found_in(image: ImageValue, *boxes: tuple[float, float, float, float]) -> Objects:
    return Objects(tuple(Obj(b, label="thing") for b in boxes), image.key, (image.width, image.height))


def fetcher(artifacts: dict[str, bytes]) -> Any:
    async def fetch(key: str) -> bytes | None:
        return artifacts.get(key)

    return fetch


# -- the values -------------------------------------------------------------------------------------

def test_an_upload_is_its_own_grid_and_an_edit_keeps_it() -> None:
    img = photo()
    assert img.grid == img.key
    edited = img.edited(img.image.copy())
    assert edited.key != img.key and edited.grid == img.key
    again = edited.edited(edited.image)
    assert again.grid == img.key


def test_a_step_keys_its_output_and_keeps_the_grid_its_module_gave() -> None:
    img = photo()
    kept = step_output(img.edited(img.image.convert("L")), "sha256:step", [img])
    assert (kept.key, kept.grid, kept.image.mode) == ("sha256:step", img.key, "RGB")
    fresh = step_output(img.image.crop((0, 0, 10, 10)), "sha256:crop", [img])
    assert (fresh.key, fresh.grid) == ("sha256:crop", "sha256:crop")


def test_objects_learn_the_grid_of_the_image_they_were_found_in() -> None:
    img = photo()
    edited = step_output(img.edited(img.image), "sha256:edited", [img])
    found = step_output(found_in(edited, (1, 1, 5, 5)), "sha256:det", [edited])
    assert (found.image_key, found.grid) == ("sha256:edited", img.key)
    assert found.with_items([]).grid == img.key  # SORT, PICK, SELECT… keep it
    # Objects rebuilt from other objects (a selector) take their grid from them.
    rebuilt = step_output(Objects(found.items, found.image_key, found.image_size), "sha256:sel", [found])
    assert rebuilt.grid == img.key
    # Found in an image that is not an input: nothing to learn from, the key stands.
    other = step_output(found_in(photo((1, 1, 1)), (1, 1, 5, 5)), "sha256:x", [img])
    assert other.grid == other.image_key


# -- the cache's JSON -------------------------------------------------------------------------------

async def test_image_docs_carry_the_grid_and_the_mask_an_edit_used() -> None:
    img = photo()
    region = np.zeros((48, 64), dtype=bool)
    region[5:20, 10:30] = True
    out = step_output(img.edited(img.image.copy(), region), "sha256:edit", [img])
    doc, artifacts = encode(out)
    assert doc["grid"] == img.key and doc["mask_key"] in artifacts
    assert artifact_keys(doc) == ["sha256:edit", doc["mask_key"]]
    back = await decode(doc, fetcher(artifacts))
    assert (back.key, back.grid) == ("sha256:edit", img.key)
    assert back.region is not None and np.array_equal(back.region, region)


async def test_docs_from_before_grids_decode_as_their_own_grid() -> None:
    img = photo()
    doc, artifacts = encode(img)
    del doc["grid"]
    assert (await decode(doc, fetcher(artifacts))).grid == img.key
    objects = found_in(img, (1, 2, 3, 4))
    odoc, _ = encode(objects)
    assert odoc["grid"] == img.key
    del odoc["grid"]
    assert (await decode(odoc, fetcher({}))).grid == img.key


async def test_objects_docs_keep_a_grid_other_than_their_image() -> None:
    objects = Objects((Obj((1, 2, 3, 4)),), "sha256:edited", (64, 48), "sha256:original")
    doc, _ = encode(objects)
    back = await decode(doc, fetcher({}))
    assert (back.image_key, back.grid) == ("sha256:edited", "sha256:original")


# -- core's modules ---------------------------------------------------------------------------------

def test_tag_keeps_the_grid_and_crop_starts_one() -> None:
    img = photo()
    objects = found_in(img, (10, 10, 20, 20))
    assert tag(img, objects).grid == img.key
    assert isinstance(crop(img, objects), Image.Image)  # a bare image: the executor gives it a grid of its own
    whole = crop(img, found_in(img, (0, 0, 64, 48)))  # enlarged past the frame: nothing is cut
    assert isinstance(whole, ImageValue) and whole.grid == img.key
    nothing = crop(img, found_in(img))
    assert isinstance(nothing, ImageValue) and nothing.grid == img.key


def test_set_operations_compare_grids() -> None:
    img = photo()
    edited = step_output(img.edited(img.image), "sha256:edited", [img])
    a = found_in(img, (1, 1, 5, 5))
    b = step_output(found_in(edited, (1, 1, 5, 5), (9, 9, 20, 20)), "sha256:det", [edited])
    assert len(union(a, b)) == 2
    cropped = step_output(img.image.crop((0, 0, 30, 30)), "sha256:crop", [img])
    c = step_output(found_in(cropped, (1, 1, 5, 5)), "sha256:det2", [cropped])
    with pytest.raises(ModuleError, match="same image"):
        union(a, c)


# -- through the executor, twice ----------------------------------------------------------------------

@pytest.fixture
async def executor() -> AsyncIterator[Executor]:
    pool = Pool([core_pack()], "cpu")
    await pool.start()
    yield Executor(pool, MemoryStore(), step_timeout_s=5)
    await pool.close()


PREFIX = ("boxes = REGION(IMAGE, [4, 4, 20, 20], 'a')\n"
          "tagged = TAG(IMAGE, boxes)\n")
CHAIN = PREFIX + ("more = REGION(tagged, [30, 10, 50, 40], 'b')\n"
                  "both = UNION(boxes, more)\n"
                  "again = TAG(tagged, both)\n")


async def test_a_chain_on_one_grid_runs_the_same_from_the_cache(executor: Executor) -> None:
    """The second run gets ``boxes`` and ``tagged`` from the cache and computes the rest from their
    decoded values, so the grids must have survived the JSON; the third gets everything from it."""
    catalog, img = executor.pool.catalog, photo()
    prefix = await executor.execute(compile_program(PREFIX, catalog, {"IMAGE": IMAGE}), {"IMAGE": img})
    assert prefix.status == "succeeded"
    plan = compile_program(CHAIN, catalog, {"IMAGE": IMAGE})
    runs = [await executor.execute(plan, {"IMAGE": img}) for _ in range(2)]
    assert [s.cache for s in runs[0].steps] == ["hit", "hit", "miss", "miss", "miss"]
    assert runs[0].status == "succeeded", [s.error for s in runs[0].steps]
    assert {s.cache for s in runs[1].steps} == {"hit"}
    assert runs[0].result_json["grid"] == runs[1].result_json["grid"] == img.key
    assert runs[1].result_json == runs[0].result_json
    assert np.array_equal(np.asarray(runs[1].result.image), np.asarray(runs[0].result.image))


def test_objects_are_found_on_their_image_and_its_grid_only() -> None:
    photo = ImageValue(Image.new("RGB", (8, 8)), "sha256:photo")
    edit = ImageValue(Image.new("RGB", (8, 8)), "sha256:edit", grid="sha256:photo")
    other = ImageValue(Image.new("RGB", (8, 8)), "sha256:other")
    found = Objects((), "sha256:photo", (8, 8))
    assert found.found_on(photo) and found.found_on(edit) and not found.found_on(other)
