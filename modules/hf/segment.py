"""SEG over Mask2Former or MaskFormer panoptic segmentation: one object per segment, labelled with
the model's own category names (COCO panoptic's 133 for the usual checkpoints), with its score, a
mask over the source image and the mask's bounding box as the box.

Every image is scaled so its longer side is the processor's short side (its ``shortest_edge``, or
its height), and padded to a square of that side with the normalisation's mean colour, which is
what the processor's own padding looks like after normalising. Every input of a batch then has
the same shape and none is padded to fit another, so a batch answers as its images would one at a
time; the padding is cropped off the segmentation before it is scaled to the source image.
Segmentation is computed at most ``MASK_SIDE`` pixels on the longer side, then scaled to the source
(nearest neighbour): a 12-megapixel photo does not cost a 12-megapixel map per query.

No category is fused: two people are two objects, and so may be two regions of sky.
OneFormer is not taken: its processor fetches its category file from the hub when it loads.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from program_dsl import param, signature

from ..base import Module
from ..values import ImageValue, Obj, Objects
from .base import HfModule, checked, pil_of
from .weights import RoleWeights

FAMILIES = ("mask2former", "maskformer")
MASK_SIDE = 1024
DEFAULT_SIDE = 384  # a processor that names no size: the side the Mask2Former checkpoints are run at

SEG_SIG = signature("SEG", "Objects", param("image", "Image"),
                    doc="Segment the image into labelled objects with masks (Mask2Former / MaskFormer panoptic).",
                    pack="hf")


@dataclass(frozen=True)
class Frame:
    """Where one image sits in its model input: scaled to ``inner`` (w, h) inside a ``side`` square."""

    image: ImageValue
    square: Image.Image
    inner: tuple[int, int]
    side: int


class Segmenter(HfModule):
    """SEG over a universal-segmentation model of the MaskFormer family."""

    signature = SEG_SIG
    expected = "Mask2Former or MaskFormer panoptic segmentation (e.g. facebook/mask2former-swin-tiny-coco-panoptic)"
    code_version = "1"
    # The processor's own defaults: a query's class score, the mask probability a pixel needs, and
    # the share of a query's mask it must win to be a segment.
    threshold = 0.5
    mask_threshold = 0.5
    overlap = 0.8

    def build(self, source: Path | str, local_only: bool) -> tuple[Any, Any]:
        from transformers import AutoImageProcessor, AutoModelForUniversalSegmentation

        return self.load_family(source, local_only, FAMILIES, AutoModelForUniversalSegmentation, AutoImageProcessor)

    @property
    def side(self) -> int:
        """The model input's side: the processor's short side, a multiple of its size divisor."""
        size = self.processor.size
        side = (size.get("shortest_edge") or max(size.get("height") or 0, size.get("width") or 0)
                or size.get("longest_edge") or DEFAULT_SIDE)
        divisor = int(getattr(self.processor, "size_divisor", None) or 32)
        return -(-int(side) // divisor) * divisor

    def _frame(self, args: dict[str, Any]) -> Frame:
        image, pic = pil_of(args, "SEG")
        side = self.side
        scale = side / max(pic.width, pic.height)
        inner = (max(1, round(pic.width * scale)), max(1, round(pic.height * scale)))
        mean = getattr(self.processor, "image_mean", None) or (0.5, 0.5, 0.5)
        square = Image.new("RGB", (side, side), tuple(round(255 * float(m)) for m in mean))
        square.paste(pic.resize(inner, Image.Resampling.BILINEAR), (0, 0))
        return Frame(image, square, inner, side)

    def run(self, batch: Sequence[dict[str, Any]]) -> list[Any]:
        good, frames, out = checked(batch, self._frame)
        if not good:
            return out
        # The squares are already at the model's scale: the processor only rescales and normalises.
        inputs = self.processor(images=[f.square for f in frames], do_resize=False, return_tensors="pt")
        outputs = self.model(pixel_values=self.to_device(inputs)["pixel_values"])
        targets = [min(MASK_SIDE, max(f.image.width, f.image.height)) for f in frames]
        found = self.processor.post_process_panoptic_segmentation(
            SimpleNamespace(class_queries_logits=outputs.class_queries_logits.float(),
                            masks_queries_logits=outputs.masks_queries_logits.float()),
            threshold=self.threshold, mask_threshold=self.mask_threshold, overlap_mask_area_threshold=self.overlap,
            label_ids_to_fuse=set(), target_sizes=[(t, t) for t in targets])
        for i, f, t, result in zip(good, frames, targets, found):
            out[i] = self._objects(f, t, result["segmentation"].cpu().numpy(), result["segments_info"])
        return out

    def _objects(self, f: Frame, target: int, segmentation: NDArray[Any], segments: list[dict[str, Any]]) -> Objects:
        w, h = f.image.width, f.image.height
        # The image's part of the square, at the segmentation's resolution; the rest was padding.
        cw, ch = max(1, round(target * f.inner[0] / f.side)), max(1, round(target * f.inner[1] / f.side))
        ids = Image.fromarray(segmentation[:ch, :cw].astype(np.int32))
        full = np.asarray(ids.resize((w, h), Image.Resampling.NEAREST) if ids.size != (w, h) else ids)
        names: dict[int, str] = self.model.config.id2label
        items: list[Obj] = []
        for seg in segments:
            mask = full == seg["id"]
            rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
            if not len(rows):
                continue  # all of it lay in the padding
            label_id = int(seg["label_id"])
            box = (float(cols[0]), float(rows[0]), float(cols[-1] + 1), float(rows[-1] + 1))
            items.append(Obj(box, float(seg["score"]), str(names.get(label_id, label_id)), mask=mask))
        items.sort(key=lambda o: -o.score)
        return Objects(tuple(items), f.image.key, (w, h))


def seg_modules(weights: RoleWeights) -> list[Module]:
    return [Segmenter(weights)]
