"""The hf pack's SEG on tiny, randomly initialised Mask2Former and MaskFormer models, saved with
``save_pretrained`` and loaded through the production path: one labelled object per segment with a
mask over the source image and the mask's box, the square padding cropped off, a batch answering
as its images one at a time, a bad item failing alone, versions that follow the weights, and a
wrong folder named by role."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from modules.base import ModuleError, Pack
from modules.hf import pack, segment
from modules.hf.segment import MASK_SIDE, Segmenter
from modules.hf.weights import ENV_MODELS, RoleWeights, WeightsError
from modules.packs import check_declared
from modules.values import ImageValue, Objects, box_iou

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

SIDE = 64
LABELS = ("person", "dog", "sky", "grass")
MEAN = tuple(round(255 * m) for m in (0.485, 0.456, 0.406))  # ImageNet's, the processors' default


def save_segmenter(folder: Path, kind: str = "mask2former", seed: int = 0) -> Path:
    """A tiny panoptic model and its image processor, as save_pretrained writes them. Random heads
    are undecided (every mask ~0.5, every class alike, so no segment passes the thresholds): the mask
    embedding is sharpened, the class head made confident and 'no object' ruled out."""
    swin = {"image_size": SIDE, "patch_size": 4, "embed_dim": 16, "depths": [1, 1, 1, 1], "num_heads": [1, 1, 2, 2],
            "window_size": 4, "out_features": ["stage1", "stage2", "stage3", "stage4"]}
    labels = {"id2label": dict(enumerate(LABELS)), "label2id": {name: i for i, name in enumerate(LABELS)}}
    torch.manual_seed(seed)
    if kind == "mask2former":
        model = transformers.Mask2FormerForUniversalSegmentation(transformers.Mask2FormerConfig(
            backbone_config=transformers.SwinConfig(**swin), feature_size=32, mask_feature_size=32, hidden_dim=32,
            encoder_feedforward_dim=64, encoder_layers=1, decoder_layers=2, num_attention_heads=2, dim_feedforward=64,
            num_queries=6, **labels))
        embedder = "model.transformer_module.decoder.mask_predictor.mask_embedder.2.0.weight"
        images = transformers.Mask2FormerImageProcessor(size={"shortest_edge": SIDE, "longest_edge": 2 * SIDE})
    else:
        detr = {"model_type": "detr", "d_model": 32, "encoder_layers": 1, "decoder_layers": 1, "encoder_ffn_dim": 64,
                "decoder_ffn_dim": 64, "encoder_attention_heads": 2, "decoder_attention_heads": 2}
        model = transformers.MaskFormerForInstanceSegmentation(transformers.MaskFormerConfig(
            backbone_config=transformers.MaskFormerSwinConfig(**swin), fpn_feature_size=32, mask_feature_size=32,
            num_queries=6, decoder_config=detr, **labels))
        embedder = "mask_embedder.2.0.weight"
        images = transformers.MaskFormerImageProcessor(size={"shortest_edge": SIDE, "longest_edge": 2 * SIDE})
    with torch.no_grad():
        dict(model.named_parameters())[embedder].mul_(60)
        model.class_predictor.weight.mul_(20)
        model.class_predictor.bias.zero_()
        model.class_predictor.bias[-1] = -10  # the last class is 'no object'
    model.save_pretrained(folder, safe_serialization=True)
    images.save_pretrained(folder)
    return folder


def loaded(folder: Path) -> Segmenter:
    module = Segmenter(RoleWeights("seg", folder))
    module.load("cpu")
    return module


@pytest.fixture(scope="module", params=["mask2former", "maskformer"])
def seg(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Segmenter:
    return loaded(save_segmenter(tmp_path_factory.mktemp(request.param) / "seg", request.param))


def image(w: int, h: int, seed: int) -> ImageValue:
    rng = np.random.default_rng(seed)
    return ImageValue(Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)), f"sha256:seg-{w}x{h}-{seed}")


def test_seg_matches_the_declared_signature(seg: Segmenter) -> None:
    check_declared(Pack("hf", [seg]))
    assert [p.name for p in seg.signature.params] == ["image"] and seg.signature.pack == "hf"


@pytest.mark.parametrize("size", [(90, 50), (40, 70), (MASK_SIDE + 76, 60)])
def test_segments_are_labelled_objects_with_masks_over_the_source(seg: Segmenter, size: tuple[int, int]) -> None:
    img = image(*size, 1)
    (found,) = seg.forward([{"image": img}])
    assert isinstance(found, Objects) and found.image_key == img.key and found.image_size == size
    assert len(found) > 0
    assert [o.score for o in found] == sorted((o.score for o in found), reverse=True)
    taken = np.zeros((size[1], size[0]), dtype=bool)
    for o in found:
        assert o.label in LABELS and 0 < o.score <= 1
        assert o.mask is not None and o.mask.dtype == np.bool_ and o.mask.shape == (size[1], size[0])
        ys, xs = np.nonzero(o.mask)
        assert o.box == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
        assert not (taken & o.mask).any()  # panoptic: every pixel is one segment's at most
        taken |= o.mask
    assert seg.parameter_count() < 500_000


def smooth(w: int, h: int, seed: int) -> Image.Image:
    """Colour blobs with no edges, which resizing changes only by rounding."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (4, 8, 3), dtype=np.uint8)).resize((w, h), Image.Resampling.BICUBIC)


@pytest.mark.parametrize("mask_side", [MASK_SIDE, 40])
def test_the_square_padding_is_cropped_off(seg: Segmenter, mask_side: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """A 2:1 image at the model's side fills the top half of its square, the rest the mean colour:
    the same picture already padded with that colour is the same model input, and its segments,
    cut to the top half, are the wide image's; also where the segmentation's resolution is not the
    model input's (40 pixels for a 64-pixel input)."""
    monkeypatch.setattr(segment, "MASK_SIDE", mask_side)
    wide = smooth(SIDE, SIDE // 2, 2)
    padded = Image.new("RGB", (SIDE, SIDE), MEAN)
    padded.paste(wide, (0, 0))
    (a,) = seg.forward([{"image": ImageValue(wide, "sha256:wide")}])
    (b,) = seg.forward([{"image": ImageValue(padded, "sha256:padded")}])
    assert len(a) > 0
    cut = {(o.label, o.mask[: SIDE // 2].tobytes()) for o in b if o.mask is not None and o.mask[: SIDE // 2].any()}
    assert {(o.label, o.mask.tobytes()) for o in a if o.mask is not None} == cut


def test_masks_scale_back_to_the_source_pixels(seg: Segmenter) -> None:
    """Beyond ``MASK_SIDE`` an image is segmented at that side and its masks scaled up. One colour
    at two sizes is one model input, so one segmentation: the same masks at twice the pixels. (A
    random model is chaotic enough that any other picture, resized, would not be one input.)"""
    small = Image.new("RGB", (MASK_SIDE + 76, (MASK_SIDE + 76) // 2), (200, 120, 40))
    large = small.resize((2 * small.width, 2 * small.height))
    (a,) = seg.forward([{"image": ImageValue(small, "sha256:small")}])
    (b,) = seg.forward([{"image": ImageValue(large, "sha256:large")}])
    assert [o.label for o in a] == [o.label for o in b] and len(a) > 0
    assert [o.score for o in a] == [o.score for o in b]
    for x, y in zip(a, b):
        assert x.mask is not None and y.mask is not None and y.mask.shape == (large.height, large.width)
        assert mask_iou(x.mask.repeat(2, axis=0).repeat(2, axis=1), y.mask) > 0.98
        assert np.allclose(np.array(x.box) * 2, y.box, atol=3)


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max(1, (a | b).sum()))


def test_a_batch_answers_as_its_images_one_at_a_time(seg: Segmenter) -> None:
    calls = [{"image": image(90, 50, 3)}, {"image": image(64, 64, 4)}, {"image": image(30, 80, 5)}]
    together = seg.forward(calls)
    alone = [seg.forward([c])[0] for c in calls]
    # Logits agree to ~1e-6 relative; a random model's masks nearly tie in places, where that noise
    # may move a pixel from one segment to the next.
    for t, a in zip(together, alone):
        assert [o.label for o in t] == [o.label for o in a]
        assert np.allclose([o.score for o in t], [o.score for o in a], atol=1e-5)
        for x, y in zip(t, a):
            assert x.mask is not None and y.mask is not None and mask_iou(x.mask, y.mask) > 0.97
            assert box_iou(x.box, y.box) > 0.95


def test_a_bad_item_fails_only_itself(seg: Segmenter) -> None:
    good = {"image": image(64, 48, 6)}
    out = seg.forward([{"image": image(5, 40, 0)}, good, {"image": None}])
    assert isinstance(out[0], ModuleError) and "at least 8×8" in str(out[0])
    assert isinstance(out[2], ModuleError) and "needs an image" in str(out[2])
    (alone,) = seg.forward([good])
    assert isinstance(out[1], Objects) and [o.label for o in out[1]] == [o.label for o in alone]


def test_the_version_follows_the_weights(tmp_path: Path) -> None:
    folder = save_segmenter(tmp_path / "seg", seed=1)
    first = Segmenter(RoleWeights("seg", folder)).version
    assert Segmenter(RoleWeights("seg", folder)).version == first
    save_segmenter(folder, seed=2)
    assert Segmenter(RoleWeights("seg", folder)).version != first


@pytest.mark.parametrize(("make", "message"), [
    (lambda f: None, "no folder .*expected what save_pretrained writes for Mask2Former or MaskFormer"),
    (lambda f: (f.mkdir(), (f / "model.safetensors").write_bytes(b"w")), "has no config.json"),
    (lambda f: (f.mkdir(), (f / "config.json").write_text("{}"), (f / "pytorch_model.bin").write_bytes(b"w")),
     "no \\*.safetensors weights"),
    (lambda f: (f.mkdir(), (f / "config.json").write_text('{"model_type": "oneformer"}'),
                (f / "model.safetensors").write_bytes(b"w")), "holds a 'oneformer' model; expected Mask2Former"),
    (lambda f: (f.mkdir(), (f / "config.json").write_text('{"model_type": "mask2former"}'),
                (f / "model.safetensors").write_bytes(b"w")), "could not be loaded .*expected Mask2Former"),
])
def test_a_wrong_folder_is_a_weights_error_naming_the_role(tmp_path: Path, make: Any, message: str) -> None:
    folder = tmp_path / "seg"
    make(folder)
    with pytest.raises(WeightsError, match=f"SEG: role 'seg': .*{message}"):
        Segmenter(RoleWeights("seg", folder)).load("cpu")


def test_the_pack_brings_seg_from_the_seg_folder(seg: Segmenter, monkeypatch: pytest.MonkeyPatch) -> None:
    assert seg.weights.folder is not None
    monkeypatch.setenv(ENV_MODELS, str(seg.weights.folder.parent))
    hf = pack()
    (module,) = hf.modules
    assert isinstance(module, Segmenter) and module.version == seg.version
    check_declared(hf)


# -- on a GPU ---------------------------------------------------------------------------------------

@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_on_cuda_half_precision_segments_a_batch(seg: Segmenter) -> None:
    assert seg.weights.folder is not None
    gpu = loaded_on(seg.weights.folder, "cuda")
    assert gpu.dtype in (torch.float16, torch.bfloat16) and next(gpu.model.parameters()).is_cuda
    sizes = [(90, 50), (64, 64), (30, 80), (MASK_SIDE + 76, 60)] * 2
    for found, size in zip(gpu.forward([{"image": image(*s, i)} for i, s in enumerate(sizes)]), sizes):
        assert isinstance(found, Objects) and found.image_size == size and len(found) > 0
        assert all(o.mask is not None and o.mask.shape == (size[1], size[0]) and o.label in LABELS for o in found)


def loaded_on(folder: Path, device: str) -> Segmenter:
    module = Segmenter(RoleWeights("seg", folder))
    module.load(device)
    return module
