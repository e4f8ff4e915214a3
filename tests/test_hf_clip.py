"""SELECT and CLASSIFY over CLIP, on a tiny randomly initialised CLIP saved the way save_pretrained
saves a real one and loaded through the production path (``module.load``, ``module.forward``).

Random weights give arbitrary scores, so the modules are held to structure (what comes back, and
that it is what the choice functions make of the model's own similarities), the choice functions
to hand-made score matrices, and batches to the answers their items get alone."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from modules.base import ModuleError, Pack
from modules.catalog import DECLARED
from modules.hf.clip import (
    CLASSIFY_SIG,
    MIN_CROP,
    OTHER_KEY,
    PROMPT,
    SELECT_SIG,
    Classify,
    Select,
    assign_categories,
    choose_per_name,
    clip_modules,
    crop_of,
    softmax,
)
from modules.hf.weights import RoleWeights, WeightsError
from modules.packs import check_declared
from modules.values import ImageValue, Obj, Objects

ROOT = Path(__file__).resolve().parents[1]
WORDS = ["a", "photo", "of", "red", "bus", "cat", "dog", "other", "car", "tree", "apple", "banana", "orange"]
# The tiny configuration's parameters: 1-layer text and vision towers, width 32, 16-d projections.
TINY_CLIP_PARAMETERS = 25_675


def save_tiny_clip(folder: Path, seed: int = 0) -> Path:
    """A CLIPModel and CLIPProcessor as save_pretrained writes them: config.json, model.safetensors,
    the tokenizer (a character-level BPE vocabulary, built here) and the preprocessor config."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    vocab: dict[str, int] = {}
    for ch in "abcdefghijklmnopqrstuvwxyz":
        vocab[ch] = len(vocab)
        vocab[ch + "</w>"] = len(vocab)
    for w in WORDS:
        vocab.setdefault(w + "</w>", len(vocab))
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[])
    tower = {"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 1, "num_attention_heads": 4}
    config = CLIPConfig(
        text_config={**tower, "vocab_size": len(vocab), "max_position_embeddings": 64,
                     "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
                     "pad_token_id": tokenizer.pad_token_id},
        vision_config={**tower, "image_size": 32, "patch_size": 8}, projection_dim=16)
    torch.manual_seed(seed)
    CLIPModel(config).save_pretrained(folder, safe_serialization=True)
    processor = CLIPProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 32},
                                                                 crop_size={"height": 32, "width": 32}),
                              tokenizer=tokenizer)
    processor.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_clip(tmp_path_factory.mktemp("weights") / "clip")


@pytest.fixture(scope="module")
def loaded(clip_folder: Path) -> Iterator[tuple[Select, Classify]]:
    select, classify = clip_modules(RoleWeights("clip", clip_folder))
    assert isinstance(select, Select) and isinstance(classify, Classify)
    select.load("cpu")
    classify.load("cpu")
    yield select, classify


def photo(seed: int = 0, size: tuple[int, int] = (64, 48)) -> ImageValue:
    rng = np.random.default_rng(seed)
    w, h = size
    pixels = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
    pixels[5:20, 5:30] = (230, 20, 20)
    pixels[25:45, 30:60] = (20, 200, 40)
    return ImageValue(Image.fromarray(pixels), f"sha256:{seed:064d}")


def objects_in(image: ImageValue, *items: Obj) -> Objects:
    return Objects(tuple(items), image.key, (image.width, image.height))


THREE = (Obj((5, 5, 30, 20), 0.9, "car"), Obj((30, 25, 60, 45), 0.8, "car"), Obj((40, 2, 46, 8), 0.7, "tree"))


# -- the choice functions, on hand-made matrices ------------------------------------------------------------


def m(rows: list[list[float]]) -> Any:
    return np.asarray(rows, dtype=np.float32)


def test_each_name_goes_to_its_most_similar_object_when_it_beats_the_competitor() -> None:
    #            cat  dog  other
    logits = m([[5.0, 1.0, 0.0],    # object 0: a cat
                [1.0, 4.0, 0.0],    # object 1: a dog
                [0.0, 0.0, 3.0]])   # object 2: neither
    assert choose_per_name(logits) == [(0, 0), (1, 1)]


def test_a_name_nothing_fits_selects_nothing() -> None:
    # 'bus' is most similar to object 1, but there 'other' wins: no bus.
    logits = m([[1.0, 2.0],
                [1.5, 3.0]])
    assert choose_per_name(logits) == []


def test_two_names_may_choose_one_object_and_no_objects_choose_nothing() -> None:
    logits = m([[4.0, 3.0, 0.0],
                [1.0, 1.0, 0.0]])
    assert choose_per_name(logits) == [(0, 0), (1, 0)]
    assert choose_per_name(np.zeros((0, 3), np.float32)) == []


def test_each_category_goes_to_the_one_object_that_prefers_it_most() -> None:
    #            apple banana orange
    logits = m([[5.0, 1.0, 0.0],    # prefers apple, strongly
                [4.0, 3.9, 0.0],    # prefers apple too, less: apple stays with object 0
                [0.0, 1.0, 2.0]])   # prefers orange
    assert assign_categories(logits, 3) == {0: 0, 2: 2}  # banana: no object prefers it


def test_a_competitor_column_is_never_assigned() -> None:
    #            apple other
    logits = m([[1.0, 2.0],
                [3.0, 1.0],
                [2.0, 0.0]])
    assert assign_categories(logits, 1) == {1: 0}
    assert assign_categories(np.zeros((0, 2), np.float32), 1) == {}


def test_softmax_rows_sum_to_one_and_keep_the_order() -> None:
    p = softmax(m([[1.0, 2.0, 3.0], [100.0, 0.0, 0.0]]))
    assert np.allclose(p.sum(axis=1), 1.0)
    assert list(np.argsort(p[0])) == [0, 1, 2] and p[1, 0] > 0.999


# -- crops -----------------------------------------------------------------------------------------------------


def test_a_crop_is_the_box_enlarged_and_a_mask_paints_the_rest() -> None:
    pic = Image.new("RGB", (64, 48), (200, 10, 10))
    crop = crop_of(pic, Obj((20, 10, 40, 30)), (1, 2, 3))
    assert crop.size == (24, 24)  # 20 px grown by 10% on each side
    mask = np.zeros((48, 64), bool)
    mask[10:30, 20:30] = True  # the left half of the box
    masked = np.asarray(crop_of(pic, Obj((20, 10, 40, 30), mask=mask), (1, 2, 3)))
    assert tuple(masked[12, 5]) == (200, 10, 10) and tuple(masked[12, 20]) == (1, 2, 3)
    # An empty mask says nothing: the box is used.
    assert np.asarray(crop_of(pic, Obj((20, 10, 40, 30), mask=np.zeros((48, 64), bool)), (1, 2, 3)))[12, 20, 0] == 200


def test_tiny_and_edge_boxes_still_give_a_usable_crop() -> None:
    pic = Image.new("RGB", (64, 48))
    assert crop_of(pic, Obj((30, 20, 31, 21)), (0, 0, 0)).size == (MIN_CROP, MIN_CROP)
    # At the corner, the crop moves inside the image rather than shrinking.
    assert crop_of(pic, Obj((60, 44, 64, 48)), (0, 0, 0)).size == (MIN_CROP, MIN_CROP)
    assert crop_of(Image.new("RGB", (64, 12)), Obj((0, 0, 64, 12)), (0, 0, 0)).size == (64, 12)
    with pytest.raises(ModuleError, match="mask of shape 10×10"):
        crop_of(pic, Obj((1, 1, 5, 5), mask=np.ones((10, 10), bool)), (0, 0, 0))
    with pytest.raises(ModuleError, match="not finite"):
        crop_of(pic, Obj((float("nan"), 1, 5, 5)), (0, 0, 0))


# -- the modules ---------------------------------------------------------------------------------------------


def test_signatures_are_the_declared_ones() -> None:
    declared = {s.name: s for s in DECLARED}
    for sig in (SELECT_SIG, CLASSIFY_SIG):
        want = declared[sig.name]
        assert [(p.name, str(p.type), p.required) for p in sig.params] == \
            [(p.name, str(p.type), p.required) for p in want.params]
        assert sig.returns == want.returns and sig.pack == "hf"
    check_declared(Pack("hf", clip_modules(RoleWeights("clip", None, "x"))))


def test_importing_the_adapter_imports_no_model_runtime() -> None:
    code = ("import sys, modules.hf.clip, modules.hf; "
            "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_select_and_classify_share_one_model_counted_once(loaded: tuple[Select, Classify]) -> None:
    select, classify = loaded
    assert select.model is classify.model and select.shared is classify.shared
    assert list(select.shared.copies) == ["cpu"]
    total = sum(p.numel() for p in select.model.parameters())
    assert total == TINY_CLIP_PARAMETERS
    assert select.parameter_count() + classify.parameter_count() == total
    assert {select.parameter_count(), classify.parameter_count()} == {0, total}
    assert select.memory_bytes() + classify.memory_bytes() == total * 4 + sum(
        b.numel() * b.element_size() for b in select.model.buffers())


def test_unloading_frees_the_model_only_when_neither_uses_it(clip_folder: Path) -> None:
    select, classify = clip_modules(RoleWeights("clip", clip_folder))
    assert isinstance(select, Select) and isinstance(classify, Classify)
    select.load("cpu")
    classify.load("cpu")
    select.unload()
    assert classify.model is not None and classify.parameter_count() == TINY_CLIP_PARAMETERS
    image = photo()
    assert isinstance(classify.forward([{"image": image, "object": objects_in(image, *THREE),
                                         "categories": ["cat"]}])[0], Objects)
    classify.unload()
    assert select.shared.copies == {}
    # A forward loads it again.
    assert isinstance(select.forward([{"image": image, "object": objects_in(image, *THREE), "query": "cat"}])[0],
                      Objects)


def _similarities(select: Select, image: ImageValue, items: list[Obj], names: list[str]) -> Any:
    crops = [crop_of(image.image, o, select.fill(), i) for i, o in enumerate(items)]
    img, txt, scale = select.similarities(crops, [PROMPT.format(n) for n in names])
    return (scale * img @ txt.T).astype(np.float32)


def test_select_returns_what_the_choice_makes_of_clips_similarities(loaded: tuple[Select, Classify]) -> None:
    select, _ = loaded
    image = photo()
    names = ["red bus", "cat", "dog", "apple", "banana", "tree car"]
    got = select.forward([{"image": image, "object": objects_in(image, *THREE), "query": ", ".join(names)}])[0]
    assert isinstance(got, Objects) and got.image_key == image.key
    logits = _similarities(select, image, list(THREE), [*names, "other"])
    chosen = sorted({k for _, k in choose_per_name(logits)})
    assert chosen, "the fixed tiny model should pick something for six names"
    assert [o.box for o in got] == [THREE[k].box for k in chosen]
    for o in got:
        scores = o.attributes["scores"]
        assert list(scores) == [*names, OTHER_KEY] and abs(sum(scores.values()) - 1) < 1e-3
        assert "CLIP's best match among 3 object(s)" in o.attributes["matched"]
        assert o.label in ("car", "tree") and o.score in (0.9, 0.8, 0.7)  # the objects as found


def test_select_takes_a_label_as_written_before_clip(loaded: tuple[Select, Classify]) -> None:
    select, _ = loaded
    image = photo()
    got = select.forward([{"image": image, "object": objects_in(image, *THREE), "query": "Car"}])[0]
    assert [o.box for o in got] == [THREE[0].box, THREE[1].box]
    assert all(o.attributes["matched"] == "'Car': labelled so" and "scores" not in o.attributes for o in got)


def test_a_category_narrows_the_objects_clip_chooses_among(loaded: tuple[Select, Classify]) -> None:
    select, _ = loaded
    image = photo()
    names = ["red bus", "cat", "dog", "apple", "banana", "orange"]
    got = select.forward([{"image": image, "object": objects_in(image, *THREE), "query": ",".join(names),
                           "category": "car"}])[0]
    logits = _similarities(select, image, list(THREE[:2]), [*names, "other"])
    assert [o.box for o in got] == [THREE[k].box for k in sorted({k for _, k in choose_per_name(logits)})]
    assert got and all(o.label == "car" and "among 2 object(s)" in o.attributes["matched"] for o in got)
    # A category no object has narrows nothing (VisProg's fallback), and says so.
    wide = select.forward([{"image": image, "object": objects_in(image, *THREE), "query": ",".join(names),
                            "category": "boat"}])[0]
    assert all("no object is labelled 'boat'" in o.attributes["matched"] for o in wide)


def test_classify_labels_each_category_at_most_once(loaded: tuple[Select, Classify]) -> None:
    _, classify = loaded
    image = photo()
    categories = ["apple", "banana", "orange"]
    got = classify.forward([{"image": image, "object": objects_in(image, *THREE), "categories": categories}])[0]
    assert isinstance(got, Objects) and [o.box for o in got] == [o.box for o in THREE]
    given = assign_categories(_similarities(classify, image, list(THREE), categories), 3)
    assert given
    for k, o in enumerate(got):
        assert list(o.attributes["scores"]) == categories and abs(sum(o.attributes["scores"].values()) - 1) < 1e-3
        if k in given:
            assert o.label == o.attributes["category"] == categories[given[k]]
        else:
            assert o.label == THREE[k].label and "category" not in o.attributes
    labels = [o.attributes["category"] for o in got if "category" in o.attributes]
    assert len(labels) == len(set(labels))


def test_one_category_competes_with_other(loaded: tuple[Select, Classify]) -> None:
    _, classify = loaded
    image = photo()
    got = classify.forward([{"image": image, "object": objects_in(image, *THREE), "categories": ["cat"]}])[0]
    assert all(list(o.attributes["scores"]) == ["cat", OTHER_KEY] for o in got)
    assert sum(o.label == "cat" for o in got) <= 1


def test_no_objects_give_no_objects(loaded: tuple[Select, Classify]) -> None:
    select, classify = loaded
    image = photo()
    none = objects_in(image)
    assert len(select.forward([{"image": image, "object": none, "query": "cat"}])[0]) == 0
    assert len(classify.forward([{"image": image, "object": none, "categories": ["cat"]}])[0]) == 0


def _items(image_seeds: range) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    selects, classifies = [], []
    for s in image_seeds:
        image = photo(s, (64 + 8 * s, 48 + 4 * s))
        mask = np.zeros((image.height, image.width), bool)
        mask[25:45, 30:50] = True
        found = objects_in(image, *THREE[: 2 + s % 2], Obj((30, 25, 60, 45), 0.5, "blob", mask=mask))
        selects.append({"image": image, "object": found, "query": ["red bus, cat", "dog", "apple, tree car, x"][s % 3]})
        classifies.append({"image": image, "object": found,
                           "categories": [["apple", "banana"], ["cat"], ["red bus", "dog", "orange"]][s % 3]})
    return selects, classifies


def _same(a: Objects, b: Objects) -> None:
    assert [(o.box, o.label) for o in a] == [(o.box, o.label) for o in b]
    for x, y in zip(a, b):
        sx, sy = x.attributes.get("scores", {}), y.attributes.get("scores", {})
        assert list(sx) == list(sy) and all(abs(sx[k] - sy[k]) < 2e-4 for k in sx)


def test_a_batch_answers_what_each_item_gets_alone(loaded: tuple[Select, Classify]) -> None:
    select, classify = loaded
    selects, classifies = _items(range(4))
    for module, batch in ((select, selects), (classify, classifies)):
        together = module.forward(batch)
        alone = [module.forward([args])[0] for args in batch]
        for a, b in zip(together, alone):
            _same(a, b)


def test_a_bad_item_fails_only_itself(loaded: tuple[Select, Classify]) -> None:
    select, classify = loaded
    image, other = photo(0), photo(1)
    good = {"image": image, "object": objects_in(image, *THREE), "query": "cat, dog"}
    bad_mask = objects_in(image, Obj((1, 1, 9, 9), mask=np.ones((5, 5), bool)))
    out = select.forward([good, {**good, "object": objects_in(other, *THREE)}, {**good, "query": " , "},
                          {**good, "object": bad_mask}, {**good, "image": "not an image"}, good])
    assert isinstance(out[0], Objects) and isinstance(out[5], Objects)
    _same(out[0], out[5])
    messages = [str(e) for e in out[1:5]]
    assert all(isinstance(e, ModuleError) for e in out[1:5])
    assert "found in another image" in messages[0] and "SELECT needs a query" in messages[1]
    assert "mask of shape 5×5" in messages[2] and "needs an image for 'image'" in messages[3]
    out = classify.forward([{**good, "categories": []}, {**good, "categories": ["cat", 3]},
                            {**good, "categories": ["cat", "dog"]}])
    assert isinstance(out[0], ModuleError) and "non-empty list of categories" in str(out[0])
    assert isinstance(out[1], ModuleError) and "got 3" in str(out[1])
    assert isinstance(out[2], Objects)


# -- weights -----------------------------------------------------------------------------------------------


def test_the_version_hashes_the_weights(clip_folder: Path, tmp_path: Path) -> None:
    select, classify = clip_modules(RoleWeights("clip", clip_folder))
    again, _ = clip_modules(RoleWeights("clip", clip_folder))
    other, _ = clip_modules(RoleWeights("clip", save_tiny_clip(tmp_path / "clip", seed=1)))
    assert select.version == again.version
    assert select.version.split("+")[1] == classify.version.split("+")[1]
    assert other.version != select.version


@pytest.mark.parametrize(("make", "message"), [
    (lambda f: None, "no folder .*expected what save_pretrained writes for CLIP"),
    (lambda f: (f.mkdir(), (f / "model.safetensors").write_bytes(b"w")), "has no config.json"),
    (lambda f: (f.mkdir(), (f / "config.json").write_text("{}"), (f / "pytorch_model.bin").write_bytes(b"w")),
     "no \\*.safetensors weights"),
    (lambda f: (f.mkdir(), (f / "config.json").write_text('{"model_type": "bert"}'),
                (f / "model.safetensors").write_bytes(b"w")),
     "holds a 'bert' model, not a CLIP one; expected CLIP"),
], ids=["missing-folder", "no-config", "only-bin", "another-family"])
def test_wrong_weights_are_a_clear_error(tmp_path: Path, make: Any, message: str) -> None:
    folder = tmp_path / "clip"
    make(folder)
    select, classify = clip_modules(RoleWeights("clip", folder))
    for module, name in ((select, "SELECT"), (classify, "CLASSIFY")):
        with pytest.raises(WeightsError, match=f"^{name}: role 'clip': .*{message}"):
            module.load("cpu")


def test_a_folder_without_its_processor_is_a_clear_error(clip_folder: Path, tmp_path: Path) -> None:
    folder = tmp_path / "clip"
    folder.mkdir()
    for name in ("config.json", "model.safetensors"):
        (folder / name).write_bytes((clip_folder / name).read_bytes())
    select, _ = clip_modules(RoleWeights("clip", folder))
    with pytest.raises(WeightsError, match="SELECT: role 'clip': .* has no usable processor files"):
        select.load("cpu")


def test_the_pack_offers_select_and_classify_for_a_clip_folder(clip_folder: Path, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from modules.hf import pack
    from modules.hf.weights import ENV_MODELS

    (tmp_path / "models.json").write_text(f'{{"clip": "{clip_folder}"}}')
    monkeypatch.setenv(ENV_MODELS, str(tmp_path))
    hf = pack()
    assert sorted(m.name for m in hf.modules) == ["CLASSIFY", "SELECT"]
    check_declared(hf)
    select, classify = hf.modules
    assert isinstance(select, Select) and isinstance(classify, Classify) and select.shared is classify.shared
