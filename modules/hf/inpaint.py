"""REPLACE over a Stable Diffusion inpainting pipeline (diffusers, the ``generate`` extra): the
objects' region repainted from a text prompt, everything else left as it was.

The role folder is what a diffusers ``StableDiffusionInpaintPipeline`` writes with ``save_pretrained``
(``model_index.json`` and one sub-folder per component), for checkpoints such as
``stabilityai/stable-diffusion-2-inpainting`` or ``stable-diffusion-v1-5/stable-diffusion-inpainting``:
a UNet with 9 input channels (noisy latents, the mask, the masked image's latents). A text-to-image
UNet (4 channels) never sees the mask or what surrounds it (diffusers would only blend its latents
into the source's, and the seams show), so it is refused, as is any other pipeline.

What is repainted: the union of the objects' masks (their box where an object has none), grown by a
few pixels so a segmenter's uncertain rim is repainted too. The pipeline sees the whole image at its
working size (the long side the model was trained at: the UNet's ``sample_size`` times the VAE's
scale, 512 for the checkpoints above; the other side kept in proportion, both multiples of 8), with
the region widened to whole latent cells, so a small object is never dropped by the pipeline's own
downscaling of the mask. Its output is scaled back and laid over the source with an edge ramp that
lies wholly outside the grown region: every pixel beyond that ramp is the source's, byte for byte,
whatever the VAE's round trip does to colours there.

One input gives one output: the noise comes from a CPU generator seeded by a hash of the image's
key, the objects' boxes and the prompt, and the number of steps and the guidance scale are fixed
(``STEPS``, ``GUIDANCE``; both are in the module's version, as the weights' digest is). Calls of one
working size share one pipeline call, each with its own generator, so a batch answers as its items
would alone. A result the pipeline's safety checker flags is an error, never the black picture the
pipeline puts in its place.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from program_dsl import param, signature

from ..base import Module, ModuleError
from ..softedge import Alpha, Mask, Pixels, bbox, blend, grow, grown, soft
from ..values import ImageValue, Objects, region_mask
from .base import HfModule, checked, objects_arg, pil_of, release, safetensors_bytes
from .weights import CONFIG, PIPELINE, RoleWeights, WeightsError, pipeline_components

CLASSES = ("StableDiffusionInpaintPipeline",)
IN_CHANNELS = 9  # latents (4) + mask (1) + masked image latents (4)
STEPS = 25  # half of diffusers' default 50: the usual trade for these schedulers; fixed, so results repeat
GUIDANCE = 7.5  # diffusers' default for these pipelines
SIDE = 512  # the working long side when the model's config does not say
MULTIPLE = 8  # the pipeline refuses sizes that are not multiples of 8
EXTRA = "pip install 'nsx[generate]'"


REPLACE_SIG = signature(
    "REPLACE", "Image", param("image", "Image"), param("object", "Objects"),
    param("prompt", "Text", doc="what to paint in the objects' place ('a golden retriever')"),
    doc="Inpaint the objects from a prompt (Stable Diffusion inpainting): their masks (or boxes) repainted, "
        "every other pixel kept; deterministic for one image, objects and prompt.", pack="hf")


@dataclass(frozen=True)
class Job:
    """One checked call: its image, what to paint, where, and the pipeline's inputs at working size."""

    image: ImageValue
    prompt: str
    alpha: Alpha | None  # the painted picture's weight over ``window``; None: no objects, nothing to paint
    window: tuple[int, int, int, int]  # x0, y0, x1, y1 of the source that may change
    work: Image.Image | None  # the source at working size
    mask: Image.Image | None  # the region at working size, in whole latent cells
    seed: int


def pipeline_problem(folder: Path) -> str | None:
    """What makes a pipeline folder something other than a Stable Diffusion inpainting pipeline, read
    from its JSON files alone (nothing is imported or loaded); None when it is one."""
    try:
        index = json.loads((folder / PIPELINE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        return f"has no readable {PIPELINE} ({e})"
    if not isinstance(index, dict):
        return f"has a {PIPELINE} that is not an object"
    kind = index.get("_class_name")
    if kind not in CLASSES:
        return f"holds a {kind!r} pipeline"
    if "unet" not in pipeline_components(index):
        return f"has no UNet in its {PIPELINE}"
    try:
        unet = json.loads((folder / "unet" / CONFIG).read_text(encoding="utf-8"))
        channels = unet["in_channels"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        return f"has no readable unet/{CONFIG} ({type(e).__name__}: {e})"
    if channels != IN_CHANNELS:
        return (f"has a UNet with {channels} input channels (a text-to-image model); inpainting takes "
                f"{IN_CHANNELS}: latents, mask and masked image")
    return None


def _pipeline_class() -> Any:
    """diffusers' inpainting pipeline, or an ImportError naming the extra that installs it."""
    try:
        from diffusers import StableDiffusionInpaintPipeline
    except ImportError as e:
        raise ImportError(f"REPLACE: the hf pack's inpaint role needs diffusers, which could not be imported "
                          f"({e}); install it with: {EXTRA}") from None
    return StableDiffusionInpaintPipeline


def _dtype_arg(library: str, dtype: Any) -> dict[str, Any]:
    """``from_pretrained``'s dtype argument as the installed library names it: both renamed
    ``torch_dtype`` to ``dtype`` (the old name warns, and goes in diffusers 1.0), and the versions
    allowed here are on both sides of the rename."""
    if library == "diffusers":
        import diffusers.utils

        new = hasattr(diffusers.utils, "_resolve_dtype")
    else:
        import transformers
        from packaging.version import Version

        new = Version(transformers.__version__) >= Version("4.56")
    return {"dtype" if new else "torch_dtype": dtype}


def working_size(width: int, height: int, side: int) -> tuple[int, int]:
    """The size the pipeline paints at: the long side ``side``, the other in proportion, both
    multiples of ``MULTIPLE`` (at least one)."""
    scale = side / max(width, height)
    return (max(MULTIPLE, round(width * scale / MULTIPLE) * MULTIPLE),
            max(MULTIPLE, round(height * scale / MULTIPLE) * MULTIPLE))


def edge_px(width: int, height: int) -> int:
    """How far the region grows, and the half-width of the ramp beyond it: ~0.5% of the shorter side."""
    return max(2, min(16, round(min(width, height) / 200)))


def seed_of(image_key: str, objects: Objects, prompt: str) -> int:
    """The noise's seed: one per image, set of boxes and prompt, the same in every process."""
    boxes = [[round(float(v), 2) for v in o.box] for o in objects.items]
    data = json.dumps([image_key, boxes, prompt], separators=(",", ":")).encode()
    return int.from_bytes(hashlib.sha256(data).digest()[:8], "big") & (2**63 - 1)


def _spans(n: int, at: int, size: int, full: int) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """For each of ``n`` working pixels along an axis of ``full`` source pixels scaled to ``n``: the
    first and one-past-last source pixel it overlaps, relative to a window of ``size`` from ``at``
    (clipped to it)."""
    j = np.arange(n, dtype=np.int64)
    lo = (j * full) // n
    hi = -((-(j + 1) * full) // n)  # ceil
    return np.clip(lo - at, 0, size), np.clip(hi - at, 0, size)


def _covered(grown: Mask, at: tuple[int, int], full: tuple[int, int], size: tuple[int, int]) -> Mask:
    """The working-size mask of the pixels the grown region touches at all, so a thin object does not
    vanish when scaled down. Counted from the window alone (prefix sums over its rows and columns):
    a full-size copy of the mask would cost more than the rest of the step on a large photo."""
    (x0, y0), (w, h), (ww, wh) = at, full, size
    gh, gw = grown.shape
    xa, xb = _spans(ww, x0, gw, w)
    ya, yb = _spans(wh, y0, gh, h)
    cols = np.zeros((gh, gw + 1), dtype=np.int32)
    np.cumsum(grown, axis=1, out=cols[:, 1:])
    by_col = (cols[:, xb] - cols[:, xa]) > 0  # gh × ww: any pixel of the row inside the column's span
    rows = np.zeros((gh + 1, ww), dtype=np.int32)
    np.cumsum(by_col, axis=0, out=rows[1:])
    out: Mask = (rows[yb] - rows[ya]) > 0
    return out


def _latent_cells(mask: Mask, cell: int) -> Mask:
    """``mask`` widened to whole cells of ``cell`` pixels: the pipeline scales the mask down to its
    latents by nearest neighbour, which would drop an object smaller than a cell."""
    h, w = mask.shape
    if cell <= 1 or h % cell or w % cell:
        return mask
    cells = mask.reshape(h // cell, cell, w // cell, cell).any(axis=(1, 3))
    out: Mask = np.repeat(np.repeat(cells, cell, axis=0), cell, axis=1)
    return out


class Inpaint(HfModule):
    """REPLACE(image, object, prompt) → the image with the objects repainted from the prompt."""

    signature = REPLACE_SIG
    expected = ("a Stable Diffusion inpainting pipeline, as diffusers' save_pretrained writes it "
                "(e.g. stabilityai/stable-diffusion-2-inpainting, stable-diffusion-v1-5/stable-diffusion-inpainting)")
    max_batch_size = 4  # with guidance each picture is two UNet rows per step: 8 rows of 64² latents at 512²

    def __init__(self, weights: RoleWeights, steps: int = STEPS, guidance: float = GUIDANCE) -> None:
        super().__init__(weights)
        self.steps = steps
        self.guidance = guidance
        # The answer depends on both: another count of steps must not be served from the cache.
        self.code_version = f"1-steps{steps}-cfg{guidance:g}"
        self.side = SIDE
        self.cell = 8

    # -- loading ----------------------------------------------------------------------------------

    def build(self, source: Path | str, local_only: bool) -> tuple[Any, Any]:
        from safetensors import SafetensorError

        pipeline_cls = _pipeline_class()
        if isinstance(source, Path):
            problem = pipeline_problem(source)
            if problem is not None:
                raise self.wrong_weights(source, problem)
        try:
            index = dict(pipeline_cls.load_config(str(source), local_files_only=local_only))
            parts = self._models(source, local_only, index)
            # Never a pickled checkpoint, even from a hub repo that also ships one.
            pipe = pipeline_cls.from_pretrained(str(source), local_files_only=local_only, use_safetensors=True,
                                                **_dtype_arg("diffusers", self.dtype), **parts)
        except (OSError, ValueError, KeyError, RuntimeError, TypeError, SafetensorError) as e:
            raise self.wrong_weights(source, f"could not be loaded ({type(e).__name__}: {e})") from None
        channels = pipe.unet.config.in_channels
        if channels != IN_CHANNELS:  # a hub id is only known once loaded
            raise self.wrong_weights(source, f"has a UNet with {channels} input channels; inpainting takes "
                                             f"{IN_CHANNELS}")
        pipe.set_progress_bar_config(disable=True)
        return pipe, pipe.tokenizer

    def _models(self, source: Path | str, local_only: bool, index: dict[str, Any]) -> dict[str, Any]:
        """The pipeline's networks (UNet, VAE, text encoder…), each loaded on its own first: a
        pipeline fills weights its files lack with random values and only logs it, and REPLACE would
        paint noise. The pipeline then takes them as they are, and loads the rest itself."""
        import importlib

        import torch

        out: dict[str, Any] = {}
        for name in pipeline_components(index):
            library, cls_name = index[name]
            if library not in ("diffusers", "transformers"):
                continue  # a pipeline's own class (the safety checker): the pipeline loads it
            cls = getattr(importlib.import_module(library), cls_name, None)
            if not isinstance(cls, type) or not issubclass(cls, torch.nn.Module):
                continue  # a tokenizer, a scheduler, an image processor: no weights to miss
            loader: Any = cls
            model, info = loader.from_pretrained(str(source), subfolder=name, local_files_only=local_only,
                                                 use_safetensors=True, output_loading_info=True,
                                                 **_dtype_arg(library, self.dtype))
            missing = sorted({*(info.get("missing_keys") or ()), *(str(k) for k in info.get("mismatched_keys") or ())})
            if missing:
                shown = ", ".join(missing[:3]) + (f", … ({len(missing)} in all)" if len(missing) > 3 else "")
                raise self.wrong_weights(source, f"does not hold every weight its {name} ({cls_name}) needs "
                                                 f"(missing {shown})")
            out[name] = model
        return out

    def load(self, device: str) -> None:
        import torch

        _pipeline_class()  # before the folder: without diffusers no folder can be checked, or used
        try:
            source = self.weights.check(self.expected)
        except WeightsError as e:
            raise WeightsError(f"{self.name}: {e}") from None
        # float16, not the base's bfloat16 where supported: these checkpoints' half-precision variants
        # are float16, the precision they are published and usually run in; an overflow to NaN is
        # caught per picture in _paint.
        half = device.startswith("cuda") and self.supports_half
        self.dtype = torch.float16 if half else torch.float32
        pipe, tokenizer = self.build(source, local_only=isinstance(source, Path))
        self.model = pipe.to(device)
        self.processor = tokenizer
        self.device = device
        self.cell = int(pipe.vae_scale_factor)
        sample = pipe.unet.config.sample_size
        sample = sample[0] if isinstance(sample, list | tuple) else sample
        native = int(sample) * self.cell if sample else SIDE
        self.side = max(MULTIPLE, native // MULTIPLE * MULTIPLE)

    def _components(self) -> list[Any]:
        import torch

        if self.model is None:
            return []
        return [c for c in self.model.components.values() if isinstance(c, torch.nn.Module)]

    def parameter_count(self) -> int:
        return int(sum(p.numel() for c in self._components() for p in c.parameters()))

    def memory_bytes(self) -> int:
        tensors = [t for c in self._components() for t in (*c.parameters(), *c.buffers())]
        return int(sum(t.numel() * t.element_size() for t in tensors))

    def expected_bytes(self) -> int:
        """The components' weights from their safetensors headers: the files diffusers loads (no
        ``.fp16`` variants, which it leaves alone unless asked), in the components' sub-folders."""
        folder = self.weights.folder
        if folder is None or not (folder / PIPELINE).is_file():
            return 0
        try:
            index = json.loads((folder / PIPELINE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return 0
        if not isinstance(index, dict):
            return 0
        half = self.device.startswith("cuda") and self.supports_half
        total = 0
        for name in pipeline_components(index):
            for p in sorted((folder / name).glob("*.safetensors")):
                if "." not in p.name.removesuffix(".safetensors"):
                    total += safetensors_bytes(p, half)
        return total

    def unload(self) -> None:
        device, self.model, self.processor = self.device, None, None
        release(device)

    # -- running ----------------------------------------------------------------------------------

    def _check(self, args: dict[str, Any]) -> Job:
        image, pic = pil_of(args, "REPLACE")
        objects = objects_arg("REPLACE", args, image)
        prompt = args.get("prompt")
        if not isinstance(prompt, str):
            raise ModuleError(f"REPLACE needs a text prompt for 'prompt', got {type(prompt).__name__}")
        prompt = " ".join(prompt.split())
        if not prompt:
            raise ModuleError("REPLACE needs a prompt saying what to paint in the objects' place, got an empty one")
        tokenizer = self.model.tokenizer
        tokens = len(tokenizer(prompt)["input_ids"])
        if tokens > tokenizer.model_max_length:
            # The pipeline would cut the prompt and only log it: the picture would follow half a sentence.
            raise ModuleError(f"REPLACE: the prompt is {tokens} tokens, and the text encoder reads at most "
                              f"{tokenizer.model_max_length} (with the start and end marks); use a shorter prompt")
        w, h = image.width, image.height
        if not objects.items:
            return Job(image, prompt, None, (0, 0, w, h), None, None, 0)
        r = edge_px(w, h)
        raw = region_mask("REPLACE", image, objects)
        tight = bbox(raw)
        if tight is None:  # only empty masks: nothing to paint
            return Job(image, prompt, None, (0, 0, w, h), None, None, 0)
        # The ramp ends 3r beyond the objects: only that neighbourhood is worked on, so a small object
        # on a large photo stays cheap. The window reaches past the ramp by the ramp's own radius r, so
        # every pixel of the ramp averages over a neighbourhood the cut leaves whole.
        x0, y0, x1, y1 = grow(tight, 4 * r + 1, w, h)
        region = grown(raw[y0:y1, x0:x1], r)
        # Grown by r once more inside soft: the ramp lies wholly outside the grown region.
        alpha = soft(region, r, outward=True)
        size = working_size(w, h, self.side)
        resample = Image.Resampling.LANCZOS if size[0] < w else Image.Resampling.BICUBIC
        work = pic.resize(size, resample)
        covered = _covered(region, (x0, y0), (w, h), size)
        mask = Image.fromarray(_latent_cells(covered, self.cell).astype(np.uint8) * 255, mode="L")
        return Job(image, prompt, alpha, (x0, y0, x1, y1), work, mask, seed_of(image.key, objects, prompt))

    def run(self, batch: Sequence[dict[str, Any]]) -> list[Any]:
        good, jobs, out = checked(batch, self._check)
        groups: dict[tuple[int, int], list[tuple[int, Job]]] = {}
        for i, job in zip(good, jobs):
            if job.work is None:  # no objects: nothing to paint, not worth a pipeline call
                out[i] = job.image.edited(job.image.image, np.zeros((job.image.height, job.image.width), bool))
            else:
                groups.setdefault(job.work.size, []).append((i, job))
        for (w, h), members in groups.items():
            for (i, job), painted, flagged in zip(members, *self._paint(w, h, [j for _, j in members])):
                try:
                    out[i] = self._composite(job, painted, flagged)
                except ModuleError as e:
                    out[i] = e
        return out

    def _paint(self, width: int, height: int, jobs: list[Job]) -> tuple[list[Pixels], list[bool]]:
        """One pipeline call for jobs of one working size: each one's picture there, and whether the
        safety checker flagged it."""
        import torch

        generators = [torch.Generator("cpu").manual_seed(j.seed) for j in jobs]
        result = self.model(prompt=[j.prompt for j in jobs], image=[j.work for j in jobs],
                            mask_image=[j.mask for j in jobs], height=height, width=width,
                            num_inference_steps=self.steps, guidance_scale=self.guidance, generator=generators,
                            output_type="np")
        images = np.asarray(result.images, dtype=np.float32)
        flags = result.nsfw_content_detected or [False] * len(jobs)
        painted = []
        for picture in images:
            if not np.isfinite(picture).all():
                # Half precision can overflow in the VAE's decoder; its NaNs would read as black.
                painted.append(np.zeros((0, 0, 3), np.uint8))
            else:
                painted.append(np.clip(np.rint(picture * 255), 0, 255).astype(np.uint8))
        return painted, [bool(f) for f in flags]

    def _composite(self, job: Job, painted: Pixels, flagged: bool) -> ImageValue:
        """The painted picture over the source within the ramp; every pixel beyond it the source's own."""
        if flagged:
            raise ModuleError(f"REPLACE: the pipeline's safety checker flagged the picture painted for "
                              f"{job.prompt!r} as not safe for work; no image is returned for it")
        if painted.size == 0:
            raise ModuleError("REPLACE: the inpainting pipeline's output is not finite for this image")
        assert job.alpha is not None and job.work is not None
        image = job.image
        w, h = image.width, image.height
        ww, wh = job.work.size
        x0, y0, x1, y1 = job.window
        # Only the window is scaled back, from the matching part of the painted picture: the same
        # pixels a resize of the whole would give there, at a fraction of the cost on a large photo.
        fg = np.asarray(Image.fromarray(painted, mode="RGB").resize(
            (x1 - x0, y1 - y0), Image.Resampling.BICUBIC, box=(x0 * ww / w, y0 * wh / h, x1 * ww / w, y1 * wh / h)),
            dtype=np.uint8)
        # Only the window becomes an array: a full-size copy of a large photo would be the biggest
        # allocation of the step for an object a few hundred pixels across.
        rgb = image.image if image.image.mode == "RGB" else image.image.convert("RGB")
        out = rgb.copy()
        bg = np.asarray(rgb.crop((x0, y0, x1, y1)), dtype=np.uint8)
        out.paste(Image.fromarray(blend(fg, bg, job.alpha), mode="RGB"), (x0, y0))
        changed = np.zeros((h, w), dtype=bool)
        changed[y0:y1, x0:x1] = job.alpha > 0
        return image.edited(out, changed)


def inpaint_modules(weights: RoleWeights) -> list[Module]:
    """The ``inpaint`` role's module."""
    return [Inpaint(weights)]
