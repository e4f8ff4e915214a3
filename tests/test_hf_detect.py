"""The hf pack's LOC on tiny, randomly initialised OWLv2 and OWL-ViT models, saved with
``save_pretrained`` and loaded through the production path (``load('cpu')``, ``forward``): Objects in
the source image's pixels (OWLv2's square padding mapped back), a batch answering as its items one
at a time, 'object' read by OWLv2's objectness head, a bad item failing alone, versions that follow
the weights, and a wrong folder named by role."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from modules.base import ModuleError, Pack
from modules.hf import pack
from modules.hf.detect import LOC_VOCABULARY, PROMPT, Detector, nms
from modules.hf.weights import ENV_MODELS, RoleWeights, WeightsError
from modules.packs import check_declared
from modules.photo.locate import LOC_SIG as PHOTO_LOC_SIG
from modules.photo.locate import LOC_VOCABULARY as PHOTO_LOC_VOCABULARY
from modules.routing import Offer, Router
from modules.values import ImageValue, Objects

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

ROOT = Path(__file__).resolve().parents[1]
SIDE = 64  # the tiny models' input: 4×4 patches of 16 pixels
TOKENS = 32  # real OWL reads 16 BPE tokens; a byte per token here needs more for 'a photo of a red bus'


def byte_chars() -> list[str]:
    """GPT-2's byte → printable character table, which CLIP's byte-level BPE is built on."""
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for _, c in sorted(zip(bs, cs))]


def clip_tokenizer(folder: Path) -> Any:
    """A CLIP tokenizer over single bytes (no merges), written offline: every phrase tokenizes."""
    chars = byte_chars()
    vocab = {t: i for i, t in enumerate([*chars, *(c + "</w>" for c in chars), "<|startoftext|>", "<|endoftext|>"])}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return transformers.CLIPTokenizer(vocab=vocab, merges=[], model_max_length=TOKENS)


def save_owl(folder: Path, kind: str = "owlv2", seed: int = 0) -> Path:
    """A tiny OWL model and its processor, as save_pretrained writes them. Random heads saturate: the
    class head's shift and scale are zeroed, so scores are sigmoid(cosine similarity), 0.27–0.73, and
    the box head's last layer is damped, so boxes stay near each patch's prior box."""
    tok = clip_tokenizer(folder)
    vocab = tok.get_vocab()
    text = {"vocab_size": len(vocab), "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
            "num_attention_heads": 2, "max_position_embeddings": TOKENS, "bos_token_id": vocab["<|startoftext|>"],
            "eos_token_id": vocab["<|endoftext|>"], "pad_token_id": vocab["<|endoftext|>"]}
    vision = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
              "image_size": SIDE, "patch_size": 16}
    torch.manual_seed(seed)
    if kind == "owlv2":
        model = transformers.Owlv2ForObjectDetection(
            transformers.Owlv2Config(text_config=text, vision_config=vision, projection_dim=32))
        images = transformers.Owlv2ImageProcessor(size={"height": SIDE, "width": SIDE})
        processor = transformers.Owlv2Processor(image_processor=images, tokenizer=tok)
    else:
        model = transformers.OwlViTForObjectDetection(
            transformers.OwlViTConfig(text_config=text, vision_config=vision, projection_dim=32))
        images = transformers.OwlViTImageProcessor(size={"height": SIDE, "width": SIDE},
                                                   crop_size={"height": SIDE, "width": SIDE})
        processor = transformers.OwlViTProcessor(image_processor=images, tokenizer=tok)
    with torch.no_grad():
        for head in (model.class_head.logit_shift, model.class_head.logit_scale):
            head.weight.zero_()
            head.bias.zero_()
        model.box_head.dense2.weight.mul_(0.005)
        model.box_head.dense2.bias.zero_()
    model.save_pretrained(folder, safe_serialization=True)
    processor.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def owlv2(tmp_path_factory: pytest.TempPathFactory) -> Detector:
    module = Detector(RoleWeights("loc", save_owl(tmp_path_factory.mktemp("owlv2") / "loc")))
    module.load("cpu")
    return module


@pytest.fixture(scope="module")
def owlvit(tmp_path_factory: pytest.TempPathFactory) -> Detector:
    module = Detector(RoleWeights("loc", save_owl(tmp_path_factory.mktemp("owlvit") / "loc", "owlvit")))
    module.load("cpu")
    return module


def image(w: int, h: int, seed: int) -> ImageValue:
    rng = np.random.default_rng(seed)
    pic = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    return ImageValue(pic, f"sha256:test-{w}x{h}-{seed}")


def call(img: ImageValue, phrase: str = "muffin", threshold: float = 0.0) -> dict[str, Any]:
    return {"image": img, "object": phrase, "threshold": threshold}


def test_loc_matches_the_declared_signature_and_takes_any_phrase(owlv2: Detector) -> None:
    check_declared(Pack("hf", [owlv2]))
    assert [p.name for p in owlv2.signature.params] == ["image", "object", "threshold"]
    assert owlv2.vocabulary is LOC_VOCABULARY and LOC_VOCABULARY.open
    router = Router("LOC", [Offer("photo", PHOTO_LOC_SIG, PHOTO_LOC_VOCABULARY), Offer("hf", owlv2.signature,
                                                                                      LOC_VOCABULARY)])
    assert router({"object": "muffin"}).reason == "hf: no pack knows 'muffin', and it takes any phrase"
    assert router({"object": "face"}).signature.pack == "photo"


@pytest.mark.parametrize("kind", ["owlv2", "owlvit"])
def test_objects_are_labelled_boxes_inside_the_image_best_first(kind: str, request: pytest.FixtureRequest) -> None:
    module: Detector = request.getfixturevalue(kind)
    img = image(96, 48, 1)
    (found,) = module.forward([call(img, "red bus")])
    assert isinstance(found, Objects) and found.image_key == img.key and found.image_size == (96, 48)
    assert 0 < len(found) <= 16  # 16 patches, duplicates suppressed
    scores = [o.score for o in found]
    assert scores == sorted(scores, reverse=True) and all(0 < s < 1 for s in scores)
    for o in found:
        x1, y1, x2, y2 = o.box
        assert o.label == "red bus" and 0 <= x1 < x2 <= 96 and 0 <= y1 < y2 <= 48
    assert module.parameter_count() < 200_000


def test_a_threshold_keeps_only_better_scores(owlv2: Detector) -> None:
    img = image(64, 64, 2)
    (everything,) = owlv2.forward([call(img, threshold=0.0)])
    cut = sorted(o.score for o in everything)[len(everything) // 2]
    (better,) = owlv2.forward([call(img, threshold=cut)])
    assert [o.box for o in better] == [o.box for o in everything if o.score > cut]


def patch_boxes(module: Detector, img: ImageValue, phrase: str) -> tuple[np.ndarray, np.ndarray]:
    """Every patch's box in the image's pixels and its score, from the model's raw output and the
    geometry each family is documented with: OWLv2 pads the image to a square, bottom and right, so
    its unit box spans the longer side both ways; OWL-ViT stretches the image, so x spans the width
    and y the height."""
    inputs = module.processor(text=[[phrase]], images=[img.image], return_tensors="pt")
    with torch.inference_mode():
        out = module.model(**inputs)
    cx, cy, bw, bh = out.pred_boxes[0].double().numpy().T
    w, h = img.width, img.height
    sx, sy = (max(w, h), max(w, h)) if module.model.config.model_type == "owlv2" else (w, h)
    boxes = np.stack([((cx - bw / 2) * sx).clip(0, w), ((cy - bh / 2) * sy).clip(0, h),
                      ((cx + bw / 2) * sx).clip(0, w), ((cy + bh / 2) * sy).clip(0, h)], axis=1)
    return boxes, torch.sigmoid(out.logits[0, :, 0]).double().numpy()


@pytest.mark.parametrize("kind", ["owlv2", "owlvit"])
@pytest.mark.parametrize("size", [(96, 40), (40, 90)])
def test_boxes_on_a_non_square_image_are_in_its_pixels(kind: str, size: tuple[int, int],
                                                       request: pytest.FixtureRequest) -> None:
    module: Detector = request.getfixturevalue(kind)
    img = image(*size, 3)
    (found,) = module.forward([call(img)])
    boxes, scores = patch_boxes(module, img, PROMPT.format("muffin"))
    assert len(found)
    for o in found:
        p = int(np.argmin(np.abs(boxes - np.array(o.box)).sum(axis=1)))
        assert np.allclose(boxes[p], o.box, atol=1e-3) and abs(scores[p] - o.score) < 1e-5
    nonempty = (boxes[:, 2] - boxes[:, 0] >= 1) & (boxes[:, 3] - boxes[:, 1] >= 1)
    assert found.items[0].score == pytest.approx(scores[nonempty].max(), abs=1e-5)


@pytest.mark.parametrize("kind", ["owlv2", "owlvit"])
def test_a_batch_answers_as_its_items_one_at_a_time(kind: str, request: pytest.FixtureRequest) -> None:
    module: Detector = request.getfixturevalue(kind)
    calls = [call(image(96, 48, 5), "muffin"), call(image(50, 70, 6), "a red bus"), call(image(64, 64, 7), "cat")]
    together = module.forward(calls)
    alone = [module.forward([c])[0] for c in calls]
    for t, a in zip(together, alone):
        assert [o.label for o in t] == [o.label for o in a]
        assert np.allclose([o.box for o in t], [o.box for o in a], atol=1e-3)
        assert np.allclose([o.score for o in t], [o.score for o in a], atol=1e-5)


def test_object_is_owlv2s_objectness_and_owlvit_refuses_it(owlv2: Detector, owlvit: Detector) -> None:
    img = image(64, 64, 8)
    anything, named = owlv2.forward([call(img, "object"), call(img, "muffin")])
    assert len(anything) and all(o.label == "object" for o in anything)
    assert [o.score for o in anything] != [o.score for o in named]
    (refused,) = owlvit.forward([call(img, "object")])
    assert isinstance(refused, ModuleError) and "name what to find" in str(refused)


def test_a_bad_item_fails_only_itself(owlv2: Detector) -> None:
    good = call(image(64, 64, 9))
    batch = [good, call(image(4, 4, 0)), call(image(64, 64, 9), "a " * 40), {"image": "not an image"},
             call(image(64, 64, 9), threshold=1.5), call(image(64, 64, 9), "  ")]
    out = owlv2.forward(batch)
    assert isinstance(out[0], Objects)
    assert np.allclose([o.box for o in out[0]], [o.box for o in owlv2.forward([good])[0]])
    messages = [str(e) for e in out[1:]]
    assert all(isinstance(e, ModuleError) for e in out[1:])
    assert "at least 8×8" in messages[0] and "is too long: as 'a photo of a a" in messages[1]
    assert f"the detector reads at most {TOKENS}" in messages[1]
    assert "needs an image" in messages[2] and "threshold must be a number" in messages[3]
    assert "empty" in messages[4]


def test_the_version_follows_the_weights(tmp_path: Path) -> None:
    folder = save_owl(tmp_path / "loc", seed=1)
    first = Detector(RoleWeights("loc", folder)).version
    assert Detector(RoleWeights("loc", folder)).version == first
    save_owl(folder, seed=2)
    assert Detector(RoleWeights("loc", folder)).version != first


@pytest.mark.parametrize(("make", "message"), [
    (lambda f: None, "no folder .*expected what save_pretrained writes for OWLv2 or OWL-ViT"),
    (lambda f: (f.mkdir(), (f / "model.safetensors").write_bytes(b"w")), "has no config.json; .*OWLv2 or OWL-ViT"),
    (lambda f: (f.mkdir(), (f / "config.json").write_text("{}"), (f / "pytorch_model.bin").write_bytes(b"w")),
     "no \\*.safetensors weights"),
    (lambda f: (f.mkdir(), (f / "config.json").write_text('{"model_type": "vit"}'),
                (f / "model.safetensors").write_bytes(b"w")), "holds a 'vit' model; expected OWLv2 or OWL-ViT"),
    (lambda f: (f.mkdir(), (f / "config.json").write_text('{"model_type": "owlv2"}'),
                (f / "model.safetensors").write_bytes(b"w")), "could not be loaded .*expected OWLv2 or OWL-ViT"),
])
def test_a_wrong_folder_is_a_weights_error_naming_the_role(tmp_path: Path, make: Any, message: str) -> None:
    folder = tmp_path / "loc"
    make(folder)
    module = Detector(RoleWeights("loc", folder))
    with pytest.raises(WeightsError, match=f"LOC: role 'loc': .*{message}"):
        module.load("cpu")


def test_nms_keeps_the_best_of_overlapping_boxes() -> None:
    boxes = np.array([[0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30], [0, 0, 10, 9]], dtype=np.float32)
    scores = np.array([0.5, 0.9, 0.4, 0.9], dtype=np.float32)
    assert nms(boxes, scores, 0.5) == [1, 2]


def test_the_pack_brings_loc_from_the_loc_folder(owlv2: Detector, monkeypatch: pytest.MonkeyPatch) -> None:
    assert owlv2.weights.folder is not None
    monkeypatch.setenv(ENV_MODELS, str(owlv2.weights.folder.parent))
    hf = pack()
    (loc,) = hf.modules
    assert isinstance(loc, Detector) and loc.version == owlv2.version
    check_declared(hf)


def test_importing_the_adapter_imports_neither_torch_nor_transformers() -> None:
    code = ("import sys, modules.hf.detect, modules.hf.segment; "
            "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# -- on a GPU ---------------------------------------------------------------------------------------

@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("kind", ["owlv2", "owlvit"])
def test_on_cuda_half_precision_batches_agree_with_the_cpu(kind: str, request: pytest.FixtureRequest) -> None:
    cpu: Detector = request.getfixturevalue(kind)
    assert cpu.weights.folder is not None
    gpu = Detector(RoleWeights("loc", cpu.weights.folder))
    gpu.load("cuda")
    assert gpu.dtype in (torch.float16, torch.bfloat16) and next(gpu.model.parameters()).is_cuda
    calls = [call(image(*(96, 48) if i % 2 else (50, 70), i), "muffin") for i in range(8)]
    for on_gpu, on_cpu, c in zip(gpu.forward(calls), cpu.forward(calls), calls):
        assert isinstance(on_gpu, Objects) and len(on_gpu) > 0 and on_gpu.image_size == c["image"].image.size
        w, h = on_gpu.image_size
        assert all(0 <= o.box[0] < o.box[2] <= w and 0 <= o.box[1] < o.box[3] <= h for o in on_gpu)
        # half precision against float32: the best score agrees to a few hundredths
        assert abs(on_gpu.items[0].score - on_cpu.items[0].score) < 0.05
