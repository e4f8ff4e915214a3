"""The hf pack's DEPTH and DEPTH_OF on tiny, randomly initialised DPT and Depth Anything models, saved
with ``save_pretrained`` and loaded through the production path (the pack from ``NSX_HF_MODELS``,
``load``, ``forward``, the pool, the API): depth maps the size of their source, nearer brighter; per
object depth from masks or boxes; one network behind both names; a batch answering as its items one
at a time; a bad item failing alone; versions that follow the weights; wrong folders named by role."""

from __future__ import annotations

import asyncio
import io
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from app.main import create_app
from app.settings import Settings
from modules.base import Module, ModuleError, Pack
from modules.core import pack as core_pack
from modules.hf import pack
from modules.hf.depth import Depth, DepthOf, depth_modules, depth_picture, nearness
from modules.hf.weights import ENV_MODELS, RoleWeights, WeightsError
from modules.packs import check_declared
from modules.pool import Pool, PoolConfig
from modules.values import ImageValue, Obj, Objects
from tests.apputil import post_run

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

ROOT = Path(__file__).resolve().parents[1]
KINDS = ("dpt", "depth_anything")
SIZES = [(64, 64), (60, 40), (30, 50)]


def save_depth(folder: Path, kind: str = "dpt", seed: int = 0, metric: bool = False) -> Path:
    """A tiny depth model and its image processor, as save_pretrained writes them. DPT: a 4-layer ViT
    on 32×32 inputs resized to a square, as Intel/dpt-hybrid-midas does at 384. Depth Anything: a
    4-layer DINOv2 on 14-pixel patches, the aspect ratio kept, as Depth-Anything-V2-Small-hf does at 518."""
    torch.manual_seed(seed)
    if kind == "dpt":
        config = transformers.DPTConfig(
            hidden_size=16, num_hidden_layers=4, num_attention_heads=2, intermediate_size=32, image_size=32,
            patch_size=8, neck_hidden_sizes=[8, 8, 16, 16], fusion_hidden_size=16, backbone_out_indices=[0, 1, 2, 3],
            reassemble_factors=[4, 2, 1, 0.5])
        model = transformers.DPTForDepthEstimation(config)
        processor = transformers.DPTImageProcessor(size={"height": 32, "width": 32})
    else:
        backbone = transformers.Dinov2Config(
            hidden_size=16, num_hidden_layers=4, num_attention_heads=2, intermediate_size=32, image_size=28,
            patch_size=14, out_indices=[1, 2, 3, 4], reshape_hidden_states=False)
        config = transformers.DepthAnythingConfig(
            backbone_config=backbone, reassemble_hidden_size=16, neck_hidden_sizes=[8, 8, 16, 16],
            fusion_hidden_size=16, head_hidden_size=8, patch_size=14,
            depth_estimation_type="metric" if metric else "relative")
        model = transformers.DepthAnythingForDepthEstimation(config)
        if metric:
            # Random features are ~1e-7, so the metric head's sigmoid is 0.5 to five digits everywhere:
            # a steeper last layer gives depths that differ from place to place, as real ones do.
            with torch.no_grad():
                model.head.conv3.weight.mul_(1e6)
        processor = transformers.DPTImageProcessor(size={"height": 28, "width": 28}, keep_aspect_ratio=True,
                                                   ensure_multiple_of=14, do_pad=False)
    model.save_pretrained(folder, safe_serialization=True)
    processor.save_pretrained(folder)
    return folder


def loaded(folder: Path) -> tuple[Depth, DepthOf]:
    depth, depth_of = depth_modules(RoleWeights("depth", folder))
    assert isinstance(depth, Depth) and isinstance(depth_of, DepthOf)
    depth.load("cpu")
    depth_of.load("cpu")
    return depth, depth_of


def picture(w: int, h: int, seed: int = 0) -> ImageValue:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buf, format="PNG")
    return ImageValue.from_bytes(buf.getvalue())


def pixels(value: ImageValue) -> np.ndarray:
    return np.asarray(value.image, dtype=np.int16)


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("depth")
    return {kind: save_depth(root / kind / "depth", kind) for kind in KINDS}


@pytest.fixture(scope="module")
def models(folders: dict[str, Path]) -> dict[str, tuple[Depth, DepthOf]]:
    return {kind: loaded(folder) for kind, folder in folders.items()}


def test_the_pack_brings_depth_and_depth_of_from_the_depth_folder(folders: dict[str, Path],
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_MODELS, str(folders["dpt"].parent))
    hf = pack()
    assert [m.name for m in hf.modules] == ["DEPTH", "DEPTH_OF"]
    check_declared(hf)  # DEPTH as VisProg's catalog declares it
    assert [str(p.type) for p in hf.modules[1].signature.params] == ["Image", "Objects"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("size", SIZES)
def test_the_depth_map_is_an_image_the_size_of_its_source(kind: str, size: tuple[int, int],
                                                          models: dict[str, tuple[Depth, DepthOf]]) -> None:
    depth, _ = models[kind]
    source = picture(*size)
    (out,) = depth.forward([{"image": source}])
    assert isinstance(out, ImageValue) and out.image.mode == "RGB" and out.image.size == size
    grey = pixels(out)
    assert (grey[..., 0] == grey[..., 1]).all() and (grey[..., 1] == grey[..., 2]).all()
    assert grey.min() == 0 and grey.max() == 255  # normalised per image
    assert out.grid == source.grid  # on the source's pixels: its objects carry over


def test_nearer_is_brighter_whichever_way_the_model_counts() -> None:
    raw = np.array([[1.0, 2.0], [3.0, 4.0]], dtype=np.float32)
    inverse = nearness(raw, nearer_is_larger=True)  # MiDaS, relative Depth Anything: larger is nearer
    metres = nearness(raw, nearer_is_larger=False)  # metric models: larger is farther
    assert inverse[1, 1] == 1 and inverse[0, 0] == 0
    assert metres[0, 0] == 1 and metres[1, 1] == 0
    assert np.asarray(depth_picture(inverse))[1, 1].tolist() == [255, 255, 255]
    assert not nearness(np.full((3, 3), 7.0, np.float32), True).any()  # a flat map is all far
    with pytest.raises(ModuleError, match="not finite"):
        nearness(np.array([[np.nan, 1.0]], np.float32), True)


def test_metric_models_count_nearer_as_smaller(tmp_path: Path, models: dict[str, tuple[Depth, DepthOf]]) -> None:
    _, relative = models["depth_anything"]
    _, metric = loaded(save_depth(tmp_path / "depth", "depth_anything", metric=True))
    assert models["dpt"][1].nearer_is_larger and relative.nearer_is_larger and not metric.nearer_is_larger
    source = picture(56, 42, seed=3)
    boxes = Objects(tuple(Obj((x, y, x + 14, y + 14)) for x in (0, 28) for y in (0, 28)), source.key, (56, 42))
    for module, sign in ((relative, 1), (metric, -1)):
        (out,) = module.forward([{"image": source, "object": boxes}])
        measured = sorted((o.attributes["depth_raw"], o.attributes["depth"]) for o in out)
        assert len({raw for raw, _ in measured}) > 1
        # depth (nearness) follows depth_raw for inverse-depth models, and runs against it for metres.
        assert [d for _, d in measured] == sorted((d for _, d in measured), reverse=sign < 0)


@pytest.mark.parametrize("kind", KINDS)
def test_a_batch_answers_as_its_items_one_at_a_time(kind: str, models: dict[str, tuple[Depth, DepthOf]]) -> None:
    depth, depth_of = models[kind]
    sources = [picture(*size, seed=i) for i, size in enumerate(SIZES * 2)]
    batched = depth.forward([{"image": s} for s in sources])
    single = [depth.forward([{"image": s}])[0] for s in sources]
    for b, s in zip(batched, single):
        assert np.abs(pixels(b) - pixels(s)).max() <= 1
    calls = [{"image": s, "object": Objects((Obj((2, 3, 20, 25)),), s.key, (s.width, s.height))} for s in sources]
    together = [o.items[0].attributes["depth"] for o in depth_of.forward(calls)]
    alone = [depth_of.forward([c])[0].items[0].attributes["depth"] for c in calls]
    assert np.allclose(together, alone, atol=1e-3)


async def test_the_pool_batches_depth_calls_into_shared_forwards(folders: dict[str, Path]) -> None:
    modules = depth_modules(RoleWeights("depth", folders["depth_anything"]))
    pool = Pool([Pack("hf", modules)], PoolConfig(device="cpu", max_wait_ms=30))
    await pool.start()
    sources = [picture(48, 36, seed=i) for i in range(8)]
    results = await asyncio.gather(*(pool.call("DEPTH", {"image": s}) for s in sources))
    assert max(r.batch_size for r in results) > 1 and all(r.device == "cpu" for r in results)
    alone = [modules[0].forward([{"image": s}])[0] for s in sources]
    assert all(np.abs(pixels(r.value) - pixels(a)).max() <= 1 for r, a in zip(results, alone))
    await pool.close()


def test_depth_of_measures_inside_each_mask_or_box(models: dict[str, tuple[Depth, DepthOf]]) -> None:
    depth, depth_of = models["dpt"]
    source = picture(60, 40, seed=5)
    (raw,) = depth.predict([source.image])
    near = nearness(raw, depth.nearer_is_larger)
    y, x = np.unravel_index(int(np.argmax(near)), near.shape)
    nearest = np.zeros((40, 60), dtype=bool)
    nearest[y, x] = True
    objects = Objects((Obj((0, 0, 60, 40), label="all", mask=nearest), Obj((0, 0, 60, 40), label="box", score=0.5,
                                                                          attributes={"colour": "red"})),
                      source.key, (60, 40))
    (out,) = depth_of.forward([{"image": source, "object": objects}])
    masked, boxed = out.items
    assert masked.attributes["depth"] == 1.0  # the mask, not its box, is what is measured
    assert boxed.attributes["depth"] == pytest.approx(float(np.median(near)), abs=1e-4)
    assert boxed.attributes["depth_raw"] == pytest.approx(float(np.median(raw)), rel=1e-3)
    assert boxed.attributes["colour"] == "red" and boxed.label == "box" and boxed.score == 0.5
    assert out.image_key == source.key and len(out) == 2
    empty = Objects((), source.key, (60, 40))
    assert depth_of.forward([{"image": source, "object": empty}]) == [empty]


def test_a_bad_item_fails_only_itself(models: dict[str, tuple[Depth, DepthOf]]) -> None:
    depth, depth_of = models["depth_anything"]
    good, other = picture(40, 30, seed=1), picture(40, 30, seed=2)
    out = depth.forward([{"image": good}, {"image": picture(4, 4)}, {"image": "not an image"}])
    assert isinstance(out[0], ImageValue) and out[0].image.size == (40, 30)
    assert isinstance(out[1], ModuleError) and "at least 8×8" in str(out[1])
    assert isinstance(out[2], ModuleError) and "needs an image" in str(out[2])
    assert np.abs(pixels(out[0]) - pixels(depth.forward([{"image": good}])[0])).max() <= 1
    mine = Objects((Obj((1, 1, 9, 9)),), good.key, (40, 30))
    theirs = Objects((Obj((1, 1, 9, 9)),), other.key, (40, 30))
    out = depth_of.forward([{"image": good, "object": mine}, {"image": good, "object": theirs},
                            {"image": good, "object": "cat"}])
    assert isinstance(out[0], Objects) and "depth" in out[0].items[0].attributes
    assert isinstance(out[1], ModuleError) and "found in another image" in str(out[1])
    assert isinstance(out[2], ModuleError) and "needs objects" in str(out[2])


def test_one_network_serves_both_names_and_is_freed_with_the_last(folders: dict[str, Path]) -> None:
    depth, depth_of = loaded(folders["dpt"])
    assert depth.model is depth_of.model and depth.memory_group() == depth_of.memory_group()
    assert depth.memory_bytes() == depth.expected_bytes() > 0  # known from the file headers before loading
    depth.unload()
    assert depth.model is None and depth.memory_bytes() == 0
    assert depth_of.model is not None and depth.shared.loaded  # still held by DEPTH_OF
    depth_of.unload()
    assert not depth.shared.loaded
    depth.load("cpu")  # loads again, from the files
    assert isinstance(depth.forward([{"image": picture(32, 32)}])[0], ImageValue)


def test_parameter_counts_of_the_tiny_models(models: dict[str, tuple[Depth, DepthOf]]) -> None:
    for kind, (depth, depth_of) in models.items():
        count = depth.parameter_count()
        assert count == depth_of.parameter_count() == sum(p.numel() for p in depth.model.parameters())
        assert 10_000 < count < 200_000, (kind, count)  # tiny: DPT ≈ 67 k, Depth Anything ≈ 74 k


def test_the_version_follows_the_weights(tmp_path: Path) -> None:
    def version(folder: Path) -> str:
        return depth_modules(RoleWeights("depth", folder))[0].version

    a = version(save_depth(tmp_path / "a" / "depth", seed=0))
    assert version(save_depth(tmp_path / "a2" / "depth", seed=0)) == a  # same weights, same cache keys
    assert version(save_depth(tmp_path / "b" / "depth", seed=1)) != a
    missing = version(tmp_path / "none" / "depth")
    assert missing != a and "+" in missing  # known (and different) even without the weights


@pytest.mark.parametrize(("make", "message"), [
    (lambda f: None, "role 'depth': no folder"),
    (lambda f: transformers.ViTModel(transformers.ViTConfig(
        hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16, image_size=16,
        patch_size=8)).save_pretrained(f, safe_serialization=True),
     "holds a 'vit' model; expected DPT or Depth Anything"),
    (lambda f: (save_depth(f), (f / "preprocessor_config.json").unlink()), "could not be loaded"),
])
def test_a_wrong_folder_is_a_weights_error_naming_the_role(tmp_path: Path, make: Any, message: str) -> None:
    folder = tmp_path / "depth"
    make(folder)
    for module in depth_modules(RoleWeights("depth", folder)):
        with pytest.raises(WeightsError, match=f"{module.name}: .*{message}"):
            module.load("cpu")


def ready_client(packs: list[Pack], **settings: Any) -> TestClient:
    return TestClient(create_app(Settings(**settings), packs=packs))


def wait_ready(client: TestClient) -> None:
    deadline = time.monotonic() + 30
    while client.get("/readyz").status_code != 200:
        assert time.monotonic() < deadline, client.get("/readyz").json()
        time.sleep(0.02)


def test_depth_through_the_api(folders: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_MODELS, str(folders["depth_anything"].parent))
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (45, 70, 3), dtype=np.uint8)).save(buf, format="PNG")
    with ready_client([core_pack(), pack()]) as client:
        wait_ready(client)
        record = post_run(client, "d = DEPTH(IMAGE)", {"IMAGE": buf.getvalue()})
        assert record["status"] == "succeeded", record
        assert record["result"]["type"] == "image"
        assert (record["result"]["width"], record["result"]["height"]) == (70, 45)
        mods = {m["qualified"]: m for m in client.get("/v1/modules").json()["modules"] if m.get("qualified")}
        assert mods["hf.DEPTH"]["memory_bytes"] == mods["hf.DEPTH_OF"]["memory_bytes"] > 0
        assert 'nsx_module_memory_bytes{device="cpu",module="hf.DEPTH"}' in client.get("/metrics").text


def test_a_missing_depth_folder_shows_in_readyz_and_modules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "models.json").write_text('{"depth": "nowhere"}')
    monkeypatch.setenv(ENV_MODELS, str(tmp_path))
    with ready_client([core_pack(), pack()]) as client:
        wait_ready(client)  # the pack was not named in NSX_PACKS: reported, left out
        mods = {m["qualified"]: m for m in client.get("/v1/modules").json()["modules"] if m.get("qualified")}
        assert mods["hf.DEPTH"]["state"] == "failed"
        assert "role 'depth': no folder" in mods["hf.DEPTH"]["error"]


def test_importing_the_adapter_imports_neither_torch_nor_transformers() -> None:
    code = ("import sys, modules.hf.depth; "
            "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# -- on a GPU ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
async def test_on_cuda_half_precision_batches_agree_with_the_cpu(kind: str, folders: dict[str, Path],
                                                                models: dict[str, tuple[Depth, DepthOf]]) -> None:
    modules: list[Module] = depth_modules(RoleWeights("depth", folders[kind]))
    pool = Pool([Pack("hf", modules)], PoolConfig(device="cuda", max_wait_ms=30))
    await pool.start()
    gpu = modules[0]
    assert isinstance(gpu, Depth) and gpu.dtype in (torch.float16, torch.bfloat16)
    assert next(gpu.model.parameters()).is_cuda and gpu.model is modules[1].model  # type: ignore[attr-defined]
    sources = [picture(*SIZES[i % 3], seed=i) for i in range(12)]
    results = await asyncio.gather(*(pool.call("DEPTH", {"image": s}) for s in sources))
    assert max(r.batch_size for r in results) > 1 and all(r.device.startswith("cuda") for r in results)
    cpu, _ = models[kind]
    for r, s in zip(results, sources):
        assert r.value.image.size == s.image.size
        # half precision against float32: maps agree up to a few grey levels
        assert np.abs(pixels(r.value) - pixels(cpu.forward([{"image": s}])[0])).mean() < 8
    await pool.close()
