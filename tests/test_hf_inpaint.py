"""The hf pack's REPLACE on a tiny, randomly initialised Stable Diffusion inpainting pipeline (a 9-channel
UNet, a VAE, a CLIP text encoder and a byte-level tokenizer written offline), saved with
``save_pretrained`` and loaded through the production path (the pack from ``NSX_HF_MODELS``, ``load``,
``forward``, the API): an image the size of its source, repainted inside the objects and byte-identical
outside the edge ramp; one output per input; a batch answering as its items one at a time; a bad item
failing alone; versions that follow the weights and the steps; wrong folders and a missing diffusers
named clearly."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from skimage import data

from app.main import create_app
from app.settings import Settings
from modules.base import ModuleError
from modules.hf import pack
from modules.hf.inpaint import Inpaint, _latent_cells, edge_px, inpaint_modules, pipeline_problem, working_size
from modules.hf.weights import ENV_MODELS, RoleWeights, WeightsError
from modules.packs import check_declared
from modules.values import ImageValue, Obj, Objects
from tests.apputil import post_run
from tests.test_hf_depth import picture, pixels
from tests.test_hf_detect import TOKENS, clip_tokenizer

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
diffusers = pytest.importorskip("diffusers")

ROOT = Path(__file__).resolve().parents[1]
STEPS = 2  # enough to run every part of the loop; real use takes Inpaint's default
NATIVE = 32  # the tiny UNet's sample_size (16) times the tiny VAE's scale (2)


def save_inpaint(folder: Path, seed: int = 0) -> Path:
    """A tiny StableDiffusionInpaintPipeline as save_pretrained writes it: a 2-level UNet on 9 input
    channels, a 2-level VAE (scale 2), a 1-layer CLIP text encoder over the byte tokenizer, DDIM."""
    torch.manual_seed(seed)
    unet = diffusers.UNet2DConditionModel(
        sample_size=16, in_channels=9, out_channels=4, block_out_channels=(8, 16), layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=16, attention_head_dim=4, norm_num_groups=4)
    vae = diffusers.AutoencoderKL(
        in_channels=3, out_channels=3, block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=4, layers_per_block=1,
        sample_size=NATIVE)
    tokenizer = clip_tokenizer(folder.parent / f"{folder.name}-tokenizer-source")
    vocab = tokenizer.get_vocab()
    text = transformers.CLIPTextModel(transformers.CLIPTextConfig(
        vocab_size=len(vocab), hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        max_position_embeddings=TOKENS, projection_dim=16, bos_token_id=vocab["<|startoftext|>"],
        eos_token_id=vocab["<|endoftext|>"], pad_token_id=vocab["<|endoftext|>"]))
    scheduler = diffusers.DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                        clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    pipe = diffusers.StableDiffusionInpaintPipeline(
        vae=vae, text_encoder=text, tokenizer=tokenizer, unet=unet, scheduler=scheduler, safety_checker=None,
        feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder


def loaded(folder: Path, steps: int = STEPS) -> Inpaint:
    module = Inpaint(RoleWeights("inpaint", folder), steps=steps)
    module.load("cpu")
    return module


def boxes(image: ImageValue, *found: tuple[float, float, float, float]) -> Objects:
    return Objects(tuple(Obj(b, label="thing") for b in found), image.key, (image.width, image.height))


def call(image: ImageValue, objects: Objects, prompt: str = "a red apple") -> dict[str, Any]:
    return {"image": image, "object": objects, "prompt": prompt}


def box_mask(shape: tuple[int, int], box: tuple[int, int, int, int], margin: int = 0) -> np.ndarray:
    h, w = shape
    x1, y1, x2, y2 = box
    out = np.zeros((h, w), dtype=bool)
    out[max(0, y1 - margin):min(h, y2 + margin), max(0, x1 - margin):min(w, x2 + margin)] = True
    return out


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_inpaint(tmp_path_factory.mktemp("models") / "inpaint")


@pytest.fixture(scope="module")
def module(folder: Path) -> Inpaint:
    return loaded(folder)


def test_the_pack_brings_replace_from_the_inpaint_folder(folder: Path, module: Inpaint,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_MODELS, str(folder.parent))
    hf = pack()
    (replace,) = hf.modules
    assert isinstance(replace, Inpaint) and replace.name == "REPLACE"
    check_declared(hf)  # REPLACE(image, object, prompt) as VisProg's catalog declares it
    assert replace.version.endswith("+" + RoleWeights("inpaint", folder).digest())
    assert module.side == NATIVE and module.cell == 2  # the working size comes from the model's config
    count = module.parameter_count()
    assert 50_000 < count < 300_000, count  # tiny: UNet ≈ 65 k, VAE ≈ 44 k, text encoder ≈ 11 k
    # Known from the headers before loading, but for buffers no file holds (CLIP's position ids).
    assert module.expected_bytes() == pytest.approx(module.memory_bytes(), rel=0.01) and module.expected_bytes() > 0


def test_the_objects_are_repainted_and_every_other_pixel_kept(module: Inpaint) -> None:
    source = picture(60, 40, seed=1)
    box = (10, 8, 30, 24)
    (out,) = module.forward([call(source, boxes(source, box))])
    assert isinstance(out, ImageValue) and out.image.mode == "RGB" and out.image.size == (60, 40)
    assert out.grid == source.grid  # no pixel moved: the source's objects still land on it
    before, after = pixels(source), pixels(out)
    r = edge_px(60, 40)
    inside = box_mask((40, 60), box)
    assert out.region is not None and out.region[inside].all()
    assert not out.region[~box_mask((40, 60), box, 3 * r + 1)].any()  # grown by r, ramped over 2r more
    assert np.array_equal(after[~out.region], before[~out.region])  # byte-identical outside
    assert (after[inside] != before[inside]).any(axis=-1).mean() > 0.9


def test_a_mask_is_repainted_rather_than_its_box(module: Inpaint) -> None:
    source = picture(64, 48, seed=2)
    ring = np.zeros((48, 64), dtype=bool)
    yy, xx = np.mgrid[:48, :64]
    ring[(yy - 24) ** 2 + (xx - 32) ** 2 < 100] = True
    objects = Objects((Obj((0, 0, 64, 48), mask=ring),), source.key, (64, 48))
    (out,) = module.forward([call(source, objects)])
    assert out.region is not None and out.region[ring].all() and not out.region[:, :10].any()
    assert np.array_equal(pixels(out)[~out.region], pixels(source)[~out.region])


def test_one_input_gives_one_output(module: Inpaint, folder: Path) -> None:
    source = picture(48, 48, seed=3)
    objects = boxes(source, (5, 5, 30, 40))
    first, again, other = module.forward([call(source, objects), call(source, objects),
                                          call(source, objects, "a blue car")])
    assert np.array_equal(pixels(first), pixels(again))
    assert not np.array_equal(pixels(first), pixels(other))  # the prompt is read
    (fresh,) = loaded(folder).forward([call(source, objects)])  # another load, the same answer
    assert np.array_equal(pixels(first), pixels(fresh))


def test_a_batch_answers_as_its_items_one_at_a_time_one_call_per_size(module: Inpaint,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    wide, wide2, tall = picture(60, 40, seed=4), picture(60, 40, seed=5), picture(40, 60, seed=6)
    calls = [call(wide, boxes(wide, (2, 2, 20, 20))), call(tall, boxes(tall, (5, 30, 35, 55)), "a cat"),
             call(wide2, boxes(wide2, (30, 10, 58, 38)), "a dog")]
    alone = [module.forward([c])[0] for c in calls]
    sizes: list[tuple[tuple[int, int], int]] = []
    paint = module._paint

    def counted(width: int, height: int, jobs: list[Any]) -> Any:
        sizes.append(((width, height), len(jobs)))
        return paint(width, height, jobs)

    monkeypatch.setattr(module, "_paint", counted)
    together = module.forward(calls)
    assert sorted(sizes) == [((24, 32), 1), ((32, 24), 2)]  # the two wide pictures shared one call
    for t, a in zip(together, alone):
        assert np.abs(pixels(t) - pixels(a)).max() <= 2


def test_no_objects_is_the_image_unchanged_without_a_forward(module: Inpaint,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    source = picture(40, 30, seed=7)

    def refuse(*args: Any) -> Any:
        raise AssertionError("the pipeline ran for an empty set of objects")

    monkeypatch.setattr(module, "_paint", refuse)
    (out,) = module.forward([call(source, Objects((), source.key, (40, 30)))])
    assert isinstance(out, ImageValue) and np.array_equal(pixels(out), pixels(source))
    assert out.grid == source.grid and out.region is not None and not out.region.any()


def test_a_bad_item_fails_only_itself(module: Inpaint) -> None:
    good, other = picture(40, 30, seed=8), picture(40, 30, seed=9)
    mine = boxes(good, (4, 4, 20, 20))
    out = module.forward([
        call(good, mine), call(good, boxes(other, (4, 4, 20, 20))), call(good, mine, "   "), call(good, mine, ""),
        call(good, mine, "a " * 40), {"image": good, "object": "cat", "prompt": "x"}, call(picture(4, 4), mine),
        call(good, Objects(mine.items, good.key, (41, 30)))])
    assert isinstance(out[0], ImageValue)
    assert np.array_equal(pixels(out[0]), pixels(module.forward([call(good, mine)])[0]))
    messages = [str(e) for e in out[1:]]
    assert all(isinstance(e, ModuleError) for e in out[1:]), out
    assert "found in another image" in messages[0]
    assert "empty" in messages[1] and "empty" in messages[2]
    assert f"reads at most {TOKENS}" in messages[3]
    assert "needs objects" in messages[4] and "at least 8×8" in messages[5] and "41×30" in messages[6]


def test_a_flagged_picture_is_an_error_not_a_black_image(module: Inpaint, monkeypatch: pytest.MonkeyPatch) -> None:
    def checker(image: Any, device: Any, dtype: Any) -> tuple[Any, list[bool]]:
        return image, [True] + [False] * (len(image) - 1)

    monkeypatch.setattr(module.model, "run_safety_checker", checker)
    a, b = picture(32, 32, seed=10), picture(32, 32, seed=11)
    flagged, fine = module.forward([call(a, boxes(a, (0, 0, 16, 16))), call(b, boxes(b, (0, 0, 16, 16)))])
    assert isinstance(flagged, ModuleError) and "safety checker flagged" in str(flagged)
    assert isinstance(fine, ImageValue)


def test_the_working_size_and_the_mask_in_latent_cells() -> None:
    assert working_size(4000, 3000, 512) == (512, 384)
    assert working_size(3000, 100, 512) == (512, 16)
    assert working_size(20, 20, 32) == (32, 32)  # a small picture is painted at the model's size
    thin = np.zeros((8, 8), dtype=bool)
    thin[3, 5] = True
    cells = _latent_cells(thin, 4)
    assert cells[:4, 4:].all() and cells.sum() == 16  # one pixel keeps its whole latent cell


def test_the_version_follows_the_weights_and_the_steps(tmp_path: Path, folder: Path) -> None:
    def version(f: Path, steps: int = STEPS) -> str:
        return Inpaint(RoleWeights("inpaint", f), steps=steps).version

    same = save_inpaint(tmp_path / "same" / "inpaint", seed=0)
    assert version(same) == version(folder)  # the same weights: the same cache keys
    assert version(save_inpaint(tmp_path / "b" / "inpaint", seed=1)) != version(folder)
    assert version(folder, steps=3) != version(folder)
    (same / "scheduler" / "scheduler_config.json").write_text(json.dumps({"_class_name": "PNDMScheduler"}))
    assert version(same) != version(folder)  # a sub-folder's file is part of it
    assert inpaint_modules(RoleWeights("inpaint", folder))[0].version.startswith("1.1-steps25-cfg7.5+")


def _copy(folder: Path, to: Path, edit: Any) -> None:
    shutil.copytree(folder, to)
    edit(to)


def _json(path: Path, **changes: Any) -> None:
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def _drop_weight(path: Path, name: str) -> None:
    from safetensors.torch import load_file, save_file

    tensors = load_file(path)
    del tensors[name]
    save_file(tensors, path, metadata={"format": "pt"})


@pytest.mark.parametrize(("edit", "message"), [
    (None, "no folder .*expected what a diffusers pipeline's save_pretrained writes for a Stable Diffusion "
           "inpainting pipeline"),
    (lambda f: (f / "model_index.json").unlink(), "has no model_index.json; .*not a single model"),
    (lambda f: _json(f / "unet" / "config.json", in_channels=4),
     "has a UNet with 4 input channels \\(a text-to-image model\\); inpainting takes 9"),
    (lambda f: _json(f / "model_index.json", _class_name="StableDiffusionPipeline"),
     "holds a 'StableDiffusionPipeline' pipeline; expected a Stable Diffusion inpainting pipeline"),
    (lambda f: (f / "vae" / "diffusion_pytorch_model.safetensors").rename(f / "vae" / "diffusion_pytorch_model.bin"),
     "vae has no \\*.safetensors weights \\(pickled .bin weights are not loaded\\)"),
    (lambda f: shutil.rmtree(f / "text_encoder"), "has no text_encoder/ folder, which its model_index.json names"),
    (lambda f: (f / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"broken"), "could not be loaded"),
    # diffusers would fill the gap with random values and only log it
    (lambda f: _drop_weight(f / "unet" / "diffusion_pytorch_model.safetensors", "conv_out.weight"),
     "does not hold every weight its unet \\(UNet2DConditionModel\\) needs \\(missing conv_out.weight\\)"),
])
def test_a_wrong_folder_is_a_weights_error_naming_the_role(folder: Path, tmp_path: Path, edit: Any,
                                                           message: str) -> None:
    target = tmp_path / "inpaint"
    if edit is not None:
        _copy(folder, target, edit)
    with pytest.raises(WeightsError, match=f"REPLACE: role 'inpaint': .*{message}"):
        Inpaint(RoleWeights("inpaint", target)).load("cpu")


def test_a_transformers_model_folder_is_not_a_pipeline(tmp_path: Path) -> None:
    target = tmp_path / "inpaint"
    transformers.CLIPTextModel(transformers.CLIPTextConfig(
        vocab_size=10, hidden_size=8, intermediate_size=8, num_hidden_layers=1, num_attention_heads=2,
        max_position_embeddings=8)).save_pretrained(target, safe_serialization=True)
    with pytest.raises(WeightsError, match="role 'inpaint': .*has no model_index.json"):
        Inpaint(RoleWeights("inpaint", target)).load("cpu")
    assert pipeline_problem(target) is not None


def test_without_diffusers_loading_names_the_extra(folder: Path) -> None:
    code = ("import sys; sys.modules['diffusers'] = None\n"
            "from pathlib import Path\n"
            "from modules.hf.inpaint import Inpaint\n"
            "from modules.hf.weights import RoleWeights\n"
            f"m = Inpaint(RoleWeights('inpaint', Path({str(folder)!r})))\n"
            "try:\n    m.load('cpu')\nexcept ImportError as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert "needs diffusers" in out.stdout and "install it with: pip install 'nsx[generate]'" in out.stdout


def test_importing_the_adapter_imports_neither_torch_nor_diffusers() -> None:
    code = ("import sys, modules.hf.inpaint, modules.hf.cli; "
            "print(sorted(m for m in ('torch', 'transformers', 'diffusers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_nsx_hf_check_reports_the_inpaint_role(folder: Path, tmp_path: Path) -> None:
    def nsx(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "app.cli", "hf", *args], cwd=ROOT, capture_output=True,
                              text=True, timeout=120)

    ok = nsx("check", str(folder.parent))
    assert ok.returncode == 0 and "inpaint: ok" in ok.stdout, ok.stdout + ok.stderr
    _copy(folder, tmp_path / "inpaint", lambda f: _json(f / "unet" / "config.json", in_channels=4))
    bad = nsx("check", str(tmp_path))
    assert bad.returncode == 1 and "inpaint: error  role 'inpaint':" in bad.stdout and "4 input channels" in bad.stdout
    dry = nsx("download", "--out", str(tmp_path), "--dry-run")
    assert dry.returncode == 0 and "inpaint: not fetched unless named" in dry.stdout and "loc:" in dry.stdout
    named = nsx("download", "--out", str(tmp_path), "--dry-run", "inpaint")
    assert "inpaint: stabilityai/stable-diffusion-2-inpainting →" in named.stdout


# -- through the service ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def client(folder: Path) -> Iterator[TestClient]:
    mp = pytest.MonkeyPatch()
    mp.setenv(ENV_MODELS, str(folder.parent))
    try:
        with TestClient(create_app(Settings(redis_url=None, packs="core,photo,hf"))) as c:
            deadline = time.monotonic() + 120
            while c.get("/readyz").status_code != 200:
                assert time.monotonic() < deadline, c.get("/readyz").json()
                time.sleep(0.05)
            yield c
    finally:
        mp.undo()


def test_replace_over_faces_through_the_api(client: TestClient) -> None:
    buf = io.BytesIO()
    Image.fromarray(data.astronaut()).save(buf, format="PNG")
    record = post_run(client, "faces = FACEDET(IMAGE)\nout = REPLACE(IMAGE, faces, 'a smiling cat')",
                      {"IMAGE": buf.getvalue()})
    assert record["status"] == "succeeded", record
    step = next(s for s in record["steps"] if s["module"] == "REPLACE")
    assert step["pack"] == "hf"
    result = record["result"]
    assert result["type"] == "image" and (result["width"], result["height"]) == (512, 512)
    out = np.asarray(Image.open(io.BytesIO(client.get(result["url"]).content)).convert("RGB"), dtype=np.int16)
    region = np.asarray(Image.open(io.BytesIO(client.get(result["mask_url"]).content))) > 0
    source = data.astronaut().astype(np.int16)
    (face,) = next(s for s in record["steps"] if s["module"] == "FACEDET")["output"]["items"]
    x1, y1, x2, y2 = (round(v) for v in face["box"])
    assert region[y1:y2, x1:x2].all() and 0 < region.mean() < 0.5
    assert np.array_equal(out[~region], source[~region])
    assert (out[y1:y2, x1:x2] != source[y1:y2, x1:x2]).any(axis=-1).mean() > 0.5


# -- on a GPU -----------------------------------------------------------------------------------------

@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_on_cuda_half_precision_paints_the_same_region(folder: Path, module: Inpaint) -> None:
    gpu = Inpaint(RoleWeights("inpaint", folder), steps=STEPS)
    gpu.load("cuda")
    assert gpu.dtype == torch.float16 and next(gpu.model.unet.parameters()).is_cuda
    assert gpu.expected_bytes() == pytest.approx(gpu.memory_bytes(), rel=0.01)
    sources = [picture(60, 40, seed=20 + i) for i in range(4)]
    calls = [call(s, boxes(s, (5, 5, 40, 30))) for s in sources]
    for on_gpu, on_cpu, s in zip(gpu.forward(calls), module.forward(calls), sources):
        assert isinstance(on_gpu, ImageValue) and on_gpu.image.size == s.image.size
        assert on_gpu.region is not None and np.array_equal(on_gpu.region, on_cpu.region)
        assert np.array_equal(pixels(on_gpu)[~on_gpu.region], pixels(s)[~on_gpu.region])
        # the same noise (CPU generators) in half precision: the painted pixels agree closely
        assert np.abs(pixels(on_gpu) - pixels(on_cpu)).mean() < 8
    assert gpu.forward(calls[:1])[0].image.tobytes() == gpu.forward(calls[:1])[0].image.tobytes()
