"""DEPTH and DEPTH_OF over DPT or Depth Anything: monocular depth from one picture, both names
reading one loaded network (``SharedDepth``), so the role costs one model's memory, not two.

What the numbers mean:

- DPT (MiDaS: ``Intel/dpt-hybrid-midas``, ``Intel/dpt-large``) and relative Depth Anything
  (``depth-anything/Depth-Anything-V2-Small-hf``) predict relative inverse depth: larger is nearer,
  with no unit and a scale of its own for every image. Metric Depth Anything checkpoints
  (``depth_estimation_type="metric"``) predict metres: larger is farther. Both are turned into
  *nearness* before anything is shown, so nearer is always larger (and brighter).
- ``DEPTH(image)`` is an image the size of the source: nearness normalised per image, the farthest
  point black and the nearest white (a flat map is all black). It is on the source's pixel grid, so
  objects found on the source may be used on it. Per-image normalisation means two images' maps do
  not compare; the raw scale is kept where it can be compared, in DEPTH_OF's ``depth_raw``.
- ``DEPTH_OF(image, object)`` gives each object ``attributes["depth"]``: the median normalised nearness
  inside its mask (or its box when it has none), from 0 (as far as the farthest point of the image)
  to 1 (as near as the nearest), so ``a.depth > b.depth`` means a is in front of b. And
  ``attributes["depth_raw"]``: the median of the model's own output there, in its own units (see
  above: for a metric model, metres, and then smaller is nearer).

Batching: every image goes through the processor alone (Depth Anything keeps the aspect ratio, so
pictures of different shapes give tensors of different sizes); images whose tensors have one shape
(all of them, for DPT's fixed 384×384) share one forward. Each prediction is resized back to its
source with bicubic interpolation, as the processors' own ``post_process_depth_estimation`` does.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from program_dsl import param, signature

from ..base import Module, ModuleError
from ..device import canonical
from ..values import ImageValue, Objects, pixel_box
from .base import HfModule, checked, objects_arg, pil_of, release
from .weights import RoleWeights

FAMILIES = ("dpt", "depth_anything")

DEPTH_SIG = signature(
    "DEPTH", "Image", param("image", "Image"),
    doc="The image's depth map, the size of the image: nearer is brighter, from black (the farthest point) to "
        "white (the nearest), normalised per image (DPT / Depth Anything).", pack="hf")
DEPTH_OF_SIG = signature(
    "DEPTH_OF", "Objects", param("image", "Image"), param("object", "Objects"),
    doc="The objects, each with attributes depth (median nearness over its mask or box: 0 as far as the farthest "
        "point of the image, 1 as near as the nearest; larger is in front) and depth_raw (the model's own "
        "median: relative inverse depth, or metres for metric models).", pack="hf")

Depths = NDArray[np.float32]


class SharedDepth:
    """The one depth network DEPTH and DEPTH_OF both read, loaded once per device whichever of them
    loads first and kept until the last of them there unloads (the pool unloads them together: they
    share a ``memory_group``). Guarded by a lock: each device's worker thread may load at once."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.loaded: dict[str, tuple[Any, Any, Any]] = {}  # device → model, processor, dtype
        self.users: dict[str, set[int]] = {}  # device → ids of the modules holding it there


class _Depth(HfModule):
    expected = ("DPT or Depth Anything depth estimation (e.g. depth-anything/Depth-Anything-V2-Small-hf, "
                "Intel/dpt-hybrid-midas)")
    code_version = "1"

    def __init__(self, weights: RoleWeights, shared: SharedDepth) -> None:
        super().__init__(weights)
        self.shared = shared

    def memory_group(self) -> str:
        return f"hf.depth@{id(self.shared):x}"

    def build(self, source: Path | str, local_only: bool) -> tuple[Any, Any]:
        from transformers import AutoImageProcessor, AutoModelForDepthEstimation

        return self.load_family(source, local_only, FAMILIES, AutoModelForDepthEstimation, AutoImageProcessor)

    def load(self, device: str) -> None:
        key = canonical(device)
        with self.shared.lock:
            there = self.shared.loaded.get(key)
            if there is None:
                super().load(device)
                self.shared.loaded[key] = (self.model, self.processor, self.dtype)
            else:
                self.model, self.processor, self.dtype = there
                self.device = device
            self.shared.users.setdefault(key, set()).add(id(self))

    def unload(self) -> None:
        key = canonical(self.device)
        with self.shared.lock:
            users = self.shared.users.setdefault(key, set())
            users.discard(id(self))
            self.model, self.processor = None, None
            last = not users
            if last:
                self.shared.loaded.pop(key, None)
        if last:
            release(self.device)

    @property
    def nearer_is_larger(self) -> bool:
        """Whether the model's output grows as things come nearer (relative inverse depth)."""
        config = self.model.config
        if config.model_type == "dpt":
            return True
        return getattr(config, "depth_estimation_type", "relative") == "relative"

    def predict(self, pics: Sequence[Image.Image]) -> list[Depths]:
        """The model's raw output for each picture, resized to the picture (float32, H×W): one forward
        for every group of pictures the processor gives tensors of one shape."""
        import torch
        from torch.nn import functional

        pixels = [self.processor(images=pic, return_tensors="pt")["pixel_values"] for pic in pics]
        shapes: dict[tuple[int, ...], list[int]] = {}
        for i, px in enumerate(pixels):
            shapes.setdefault(tuple(px.shape[-2:]), []).append(i)
        out: list[Depths] = [np.zeros((0, 0), np.float32)] * len(pics)
        with torch.inference_mode():  # forward holds it already; a direct caller (a tool, a test) may not
            for members in shapes.values():
                x = torch.cat([pixels[i] for i in members]).to(self.device, self.dtype)
                # float32 before resizing: bicubic interpolation has no half-precision kernel everywhere.
                predicted = self.model(pixel_values=x).predicted_depth.float()
                for j, i in enumerate(members):
                    w, h = pics[i].size
                    up = functional.interpolate(predicted[j][None, None], size=(h, w), mode="bicubic",
                                                align_corners=False)
                    out[i] = up[0, 0].cpu().numpy().astype(np.float32)
        return out


def nearness(raw: Depths, nearer_is_larger: bool) -> Depths:
    """``raw`` as 0 (the farthest point) … 1 (the nearest); all 0 for a flat map."""
    near = raw if nearer_is_larger else -raw
    if not np.isfinite(near).all():
        # Half precision can overflow on some inputs; an answer from a broken map would be a guess.
        raise ModuleError("the depth model's output is not finite for this image")
    lo, hi = float(near.min()), float(near.max())
    if hi <= lo:
        return np.zeros_like(near, dtype=np.float32)
    return ((near - lo) / (hi - lo)).astype(np.float32)


def depth_picture(near: Depths) -> Image.Image:
    """Nearness as an RGB grey image: nearer is brighter."""
    grey = np.clip(np.rint(near * 255), 0, 255).astype(np.uint8)
    return Image.fromarray(grey).convert("RGB")


class Depth(_Depth):
    """DEPTH(image) → the depth map as an image, nearer brighter."""

    signature = DEPTH_SIG

    def run(self, batch: Sequence[dict[str, Any]]) -> list[Any]:
        good, values, out = checked(batch, lambda args: pil_of(args, "DEPTH"))
        raws = self.predict([pic for _, pic in values])
        for i, (image, _), raw in zip(good, values, raws):
            try:
                out[i] = image.edited(depth_picture(nearness(raw, self.nearer_is_larger)))
            except ModuleError as e:
                out[i] = e
        return out


class DepthOf(_Depth):
    """DEPTH_OF(image, object) → the objects with their depth: larger ``depth`` is nearer."""

    signature = DEPTH_OF_SIG

    @staticmethod
    def _check(args: dict[str, Any]) -> tuple[ImageValue, Image.Image, Objects]:
        image, pic = pil_of(args, "DEPTH_OF")
        return image, pic, objects_arg("DEPTH_OF", args, image)

    def run(self, batch: Sequence[dict[str, Any]]) -> list[Any]:
        good, values, out = checked(batch, self._check)
        # No objects, nothing to measure: not worth a forward.
        for i, (_, _, objects) in zip(good, values):
            if not objects.items:
                out[i] = objects
        todo = [(i, v) for i, v in zip(good, values) if v[2].items]
        raws = self.predict([pic for _, (_, pic, _) in todo])
        for (i, (_, _, objects)), raw in zip(todo, raws):
            try:
                out[i] = self._measure(objects, raw, nearness(raw, self.nearer_is_larger))
            except ModuleError as e:
                out[i] = e
        return out

    @staticmethod
    def _measure(objects: Objects, raw: Depths, near: Depths) -> Objects:
        h, w = raw.shape
        items = []
        for o in objects.items:
            if o.mask is not None and o.mask.shape == (h, w) and o.mask.any():
                region = o.mask
            else:
                x1, y1, x2, y2 = pixel_box(o.box, w, h)
                region = np.zeros((h, w), dtype=bool)
                region[y1:y2, x1:x2] = True
            depth = round(float(np.median(near[region])), 4)
            depth_raw = float(f"{float(np.median(raw[region])):.5g}")
            items.append(replace(o, attributes={**o.attributes, "depth": depth, "depth_raw": depth_raw}))
        return objects.with_items(items)


def depth_modules(weights: RoleWeights) -> list[Module]:
    """The ``depth`` role's modules, sharing one network."""
    shared = SharedDepth()
    return [Depth(weights, shared), DepthOf(weights, shared)]
