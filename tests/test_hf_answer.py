"""VQA (BLIP or ViLT) and CAPTION (BLIP) on tiny randomly initialised models saved as
save_pretrained saves real ones, loaded through the production path (``module.load``,
``module.forward``): texts come back, a batch answers what each item gets alone (even with
questions of different lengths, which transformers' own BLIP generate gets wrong), the family is
read from the folder, and wrong weights are named by role."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from modules.base import Module, ModuleError, Pack
from modules.catalog import DECLARED
from modules.hf.answer import CAPTION_SIG, VQA_SIG, Caption, Vqa, caption_modules, vqa_modules
from modules.hf.weights import RoleWeights, WeightsError
from modules.packs import check_declared
from modules.values import ImageValue

ROOT = Path(__file__).resolve().parents[1]
WORDS = ["what", "colour", "is", "the", "bus", "a", "how", "many", "red", "blue", "yes", "no", "there", "cat",
         "dog", "?", ".", "picture", "of", "on", "in", "two"]
ANSWERS = {0: "yes", 1: "no", 2: "2", 3: "red"}
# Wide initial weights, so a random model's answers depend on its input and batching is put to the test.
SPREAD = 0.3
# The tiny configurations' parameters (1 layer per tower, width 32).
TINY_PARAMETERS = {"blip-vqa": 42_923, "blip-caption": 28_838, "vilt": 19_529}


def _tokenizer() -> Any:
    from transformers import BertTokenizer

    vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]", *WORDS])}
    tokenizer = BertTokenizer(vocab=vocab)
    tokenizer.add_special_tokens({"bos_token": "[DEC]"})  # BLIP's decoder starts from its own token
    return tokenizer


def save_tiny_blip(folder: Path, task: str, seed: int = 0) -> Path:
    """BlipForQuestionAnswering (task 'vqa') or BlipForConditionalGeneration ('caption') with a BERT
    vocabulary built here and 32-px images."""
    import torch
    from transformers import (
        BlipConfig,
        BlipForConditionalGeneration,
        BlipForQuestionAnswering,
        BlipImageProcessor,
        BlipProcessor,
    )

    tokenizer = _tokenizer()
    tower = {"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 1, "num_attention_heads": 4,
             "initializer_range": SPREAD}
    config = BlipConfig(
        text_config={**tower, "vocab_size": len(tokenizer), "max_position_embeddings": 64,
                     "bos_token_id": tokenizer.bos_token_id, "sep_token_id": tokenizer.sep_token_id,
                     "pad_token_id": tokenizer.pad_token_id},
        vision_config={**tower, "image_size": 32, "patch_size": 8}, projection_dim=16, initializer_range=SPREAD)
    torch.manual_seed(seed)
    cls = BlipForQuestionAnswering if task == "vqa" else BlipForConditionalGeneration
    cls(config).save_pretrained(folder, safe_serialization=True)
    BlipProcessor(image_processor=BlipImageProcessor(size={"height": 32, "width": 32}),
                  tokenizer=tokenizer).save_pretrained(folder)
    return folder


def save_tiny_vilt(folder: Path, seed: int = 0) -> Path:
    import torch
    from transformers import ViltConfig, ViltForQuestionAnswering, ViltImageProcessor, ViltProcessor

    tokenizer = _tokenizer()
    config = ViltConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=37, num_hidden_layers=1,
                        num_attention_heads=4, image_size=32, patch_size=8, max_position_embeddings=40,
                        num_labels=len(ANSWERS), id2label=ANSWERS, label2id={v: k for k, v in ANSWERS.items()},
                        initializer_range=SPREAD)
    torch.manual_seed(seed)
    ViltForQuestionAnswering(config).save_pretrained(folder, safe_serialization=True)
    ViltProcessor(image_processor=ViltImageProcessor(size={"shortest_edge": 32}, size_divisor=8),
                  tokenizer=tokenizer).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("weights")
    return {"blip-vqa": save_tiny_blip(root / "blip-vqa", "vqa"),
            "blip-caption": save_tiny_blip(root / "blip-caption", "caption"),
            "vilt": save_tiny_vilt(root / "vilt")}


@pytest.fixture(scope="module")
def blip_vqa(folders: dict[str, Path]) -> Vqa:
    return _loaded(vqa_modules(RoleWeights("vqa", folders["blip-vqa"])), Vqa)


@pytest.fixture(scope="module")
def vilt_vqa(folders: dict[str, Path]) -> Vqa:
    return _loaded(vqa_modules(RoleWeights("vqa", folders["vilt"])), Vqa)


@pytest.fixture(scope="module")
def caption(folders: dict[str, Path]) -> Caption:
    return _loaded(caption_modules(RoleWeights("caption", folders["blip-caption"])), Caption)


def _loaded(modules: list[Module], cls: type[Any]) -> Any:
    (module,) = modules
    assert isinstance(module, cls)
    module.load("cpu")
    return module


def photo(seed: int, size: tuple[int, int] = (50, 40)) -> ImageValue:
    pixels = np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    return ImageValue(Image.fromarray(pixels), f"sha256:{seed:064d}")


# Questions of very different lengths: a batch pads the short ones.
QUESTIONS = ["what colour is the bus?", "how many?", "is there a cat on the red bus in the picture", "what"]
IMAGES = [photo(i, (50 + 10 * i, 40 + 8 * i)) for i in range(4)]


def test_signatures_are_the_declared_ones() -> None:
    declared = {s.name: s for s in DECLARED}
    for sig in (VQA_SIG, CAPTION_SIG):
        want = declared[sig.name]
        assert [(p.name, str(p.type), p.required) for p in sig.params] == \
            [(p.name, str(p.type), p.required) for p in want.params]
        assert sig.returns == want.returns and sig.pack == "hf"
    hub = RoleWeights("vqa", None, "x")
    check_declared(Pack("hf", [*vqa_modules(hub), *caption_modules(hub)]))


def test_importing_the_adapter_imports_no_model_runtime() -> None:
    code = ("import sys, modules.hf.answer; "
            "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_family_is_read_from_the_folder(blip_vqa: Vqa, vilt_vqa: Vqa, caption: Caption) -> None:
    assert (blip_vqa.family, type(blip_vqa.model).__name__) == ("blip", "BlipForQuestionAnswering")
    assert (vilt_vqa.family, type(vilt_vqa.model).__name__) == ("vilt", "ViltForQuestionAnswering")
    assert type(caption.model).__name__ == "BlipForConditionalGeneration"
    assert blip_vqa.parameter_count() == TINY_PARAMETERS["blip-vqa"]
    assert vilt_vqa.parameter_count() == TINY_PARAMETERS["vilt"]
    assert caption.parameter_count() == TINY_PARAMETERS["blip-caption"]
    assert vilt_vqa.memory_bytes() >= vilt_vqa.parameter_count() * 4


@pytest.mark.parametrize("which", ["blip", "vilt"])
def test_vqa_answers_a_batch_as_each_question_alone(which: str, blip_vqa: Vqa, vilt_vqa: Vqa) -> None:
    module = blip_vqa if which == "blip" else vilt_vqa
    batch = [{"image": i, "question": q} for i, q in zip(IMAGES, QUESTIONS)]
    together = module.forward(batch)
    assert all(isinstance(a, str) for a in together)
    assert together == [module.forward([args])[0] for args in batch]
    if which == "vilt":
        assert set(together) <= set(ANSWERS.values())
    else:
        assert all(a for a in together) and len(set(together)) > 1  # the random model's answers vary


def test_transformers_own_blip_generate_answers_differently_in_a_batch(blip_vqa: Vqa) -> None:
    """Why the adapter runs BLIP's answer decoder itself: the library's generate lets a padded
    question's answer depend on its batch-mates (this fails once transformers fixes it; then the
    workaround in modules.hf.answer can go)."""
    import torch

    model, processor = blip_vqa.model, blip_vqa.processor
    pics = [i.image for i in IMAGES]
    with torch.inference_mode():
        batched = model.generate(**processor(images=pics, text=QUESTIONS, padding=True, return_tensors="pt"),
                                 max_new_tokens=8)
        alone = [model.generate(**processor(images=[p], text=[q], return_tensors="pt"), max_new_tokens=8)[0]
                 for p, q in zip(pics, QUESTIONS)]
    decode = processor.tokenizer.decode
    assert [decode(b, skip_special_tokens=True) for b in batched] != \
        [decode(a, skip_special_tokens=True) for a in alone]


def test_caption_describes_a_batch_as_each_image_alone(caption: Caption) -> None:
    batch = [{"image": i} for i in IMAGES]
    together = caption.forward(batch)
    assert all(isinstance(c, str) for c in together) and any(together)  # a random model may stop at once
    assert together == [caption.forward([args])[0] for args in batch]


def test_a_bad_item_fails_only_itself(blip_vqa: Vqa, vilt_vqa: Vqa, caption: Caption) -> None:
    good = {"image": IMAGES[0], "question": QUESTIONS[0]}
    for module in (blip_vqa, vilt_vqa):
        out = module.forward([good, {**good, "question": "  "}, {**good, "image": None},
                              {**good, "image": photo(9, (6, 30))}, {**good, "question": "x" * 5000}, good])
        assert isinstance(out[0], str) and out[0] == out[5]
        assert all(isinstance(e, ModuleError) for e in out[1:5])
        assert "needs a question" in str(out[1]) and "needs an image" in str(out[2])
        assert "at least 8×8" in str(out[3]) and "5000 characters" in str(out[4])
    out = caption.forward([{"image": IMAGES[1]}, {"image": "nope"}])
    assert isinstance(out[0], str) and isinstance(out[1], ModuleError)
    assert all(isinstance(e, ModuleError) for e in caption.forward([{"image": None}]))


def test_the_version_hashes_the_weights(folders: dict[str, Path], tmp_path: Path) -> None:
    (first,) = vqa_modules(RoleWeights("vqa", folders["blip-vqa"]))
    (again,) = vqa_modules(RoleWeights("vqa", folders["blip-vqa"]))
    (other,) = vqa_modules(RoleWeights("vqa", save_tiny_blip(tmp_path / "vqa", "vqa", seed=1)))
    assert first.version == again.version != other.version
    (cap,) = caption_modules(RoleWeights("caption", folders["blip-caption"]))
    (cap2,) = caption_modules(RoleWeights("caption", save_tiny_blip(tmp_path / "caption", "caption", seed=1)))
    assert cap.version != cap2.version


def test_weights_for_another_task_are_named(folders: dict[str, Path]) -> None:
    (vqa,) = vqa_modules(RoleWeights("vqa", folders["blip-caption"]))
    with pytest.raises(WeightsError, match="^VQA: role 'vqa': .* holds blip weights for BlipForConditionalGeneration, "
                                           "not BlipForQuestionAnswering; expected BLIP question answering"):
        vqa.load("cpu")
    (cap,) = caption_modules(RoleWeights("caption", folders["vilt"]))
    with pytest.raises(WeightsError, match="^CAPTION: role 'caption': .* holds a 'vilt' model, not a BLIP one"):
        cap.load("cpu")


def test_weights_that_leave_parameters_missing_are_refused(folders: dict[str, Path], tmp_path: Path) -> None:
    # Captioning weights with the config claiming question answering: transformers would fill the
    # question encoder with random values and only warn.
    folder = tmp_path / "vqa"
    shutil.copytree(folders["blip-caption"], folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "architectures": ["BlipForQuestionAnswering"]}))
    (vqa,) = vqa_modules(RoleWeights("vqa", folder))
    with pytest.raises(WeightsError, match="does not hold every weight BlipForQuestionAnswering needs "
                                           "\\(missing text_encoder"):
        vqa.load("cpu")


@pytest.mark.parametrize(("make", "message"), [
    (lambda f: None, "no folder .*{expected}"),
    (lambda f: (f.mkdir(), (f / "model.safetensors").write_bytes(b"w")), "has no config.json.*{expected}"),
    (lambda f: (f.mkdir(), (f / "config.json").write_text("{}"), (f / "pytorch_model.bin").write_bytes(b"w")),
     "no \\*.safetensors weights \\(pickled .bin weights are not loaded\\)"),
    (lambda f: (f.mkdir(), (f / "config.json").write_text('{"model_type": "clip"}'),
                (f / "model.safetensors").write_bytes(b"w")), "holds a 'clip' model.*{expected}"),
], ids=["missing-folder", "no-config", "only-bin", "another-family"])
def test_wrong_folders_are_a_clear_error(tmp_path: Path, make: Any, message: str) -> None:
    for role, modules, name, expected in (("vqa", vqa_modules, "VQA", "BLIP question answering"),
                                          ("caption", caption_modules, "CAPTION", "BLIP captioning")):
        folder = tmp_path / role
        make(folder)
        (module,) = modules(RoleWeights(role, folder))
        with pytest.raises(WeightsError, match=f"^{name}: role '{role}': .*" + message.format(expected=expected)):
            module.load("cpu")
