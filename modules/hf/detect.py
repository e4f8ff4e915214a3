"""LOC over OWLv2 or OWL-ViT: open-vocabulary detection, one text query per image, every image of a
batch and its query in one forward.

Routing sends LOC here only for phrases no closed-vocabulary pack knows (``open=True``), so
``LOC(IMAGE, 'muffin')`` runs OWL while ``LOC(IMAGE, 'face')`` still goes to the photo pack. The
query is ``PROMPT`` around the phrase ('a photo of muffin', as VisProg's LOC and the OWL model
cards ask), and the phrase as written is the label of every box it finds.

The generic ``'object'`` (LOC's default, ``COUNT(LOC(IMAGE))``) names nothing a text query could
match. OWLv2 has an objectness head, trained to score any object whatever its class, and answers
'object' with it; OWL-ViT has none, and refuses 'object' rather than guess at a query.

Boxes are the processor's ``post_process_object_detection`` with each image's own size, so OWLv2's
padding to a square (bottom and right) maps back to the source pixels; then clipped to the image,
and near-duplicates removed by non-maximum suppression, best score first.
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

from ..base import Module, ModuleError
from ..routing import Vocabulary
from ..values import ImageValue, Obj, Objects
from .base import HfModule, checked, pil_of
from .weights import RoleWeights

FAMILIES = ("owlv2", "owlvit")
PROMPT = "a photo of {}"
GENERIC = frozenset({"object", "objects"})  # what LOC's default asks for: anything
NMS_IOU = 0.5  # OWL scores overlapping patches of one object alike: above this overlap they are one
CANDIDATES = 300  # the best-scoring boxes NMS looks at (OWLv2 scores 3600 patches per image)
MAX_OBJECTS = 100

LOC_VOCABULARY = Vocabulary(categories=("any phrase (open vocabulary)",), open=True)
LOC_SIG = signature(
    "LOC", "Objects", param("image", "Image"),
    param("object", "Text", "object", doc="what to find, as a phrase ('muffin', 'red bus'); 'object' finds "
                                          "anything (OWLv2's objectness; OWL-ViT needs a name)"),
    param("threshold", "Number", 0.1, doc="the lowest score kept, between 0 and 1"),
    doc="Find objects by any description (OWLv2 / OWL-ViT zero-shot detection).", pack="hf")


@dataclass(frozen=True)
class Query:
    """One checked call: its image, the picture, the text query and how to score it."""

    image: ImageValue
    pic: Image.Image
    phrase: str
    text: str  # the query the model reads
    objectness: bool
    threshold: float


class Detector(HfModule):
    """LOC over a zero-shot detector of the OWL family."""

    signature = LOC_SIG
    vocabulary = LOC_VOCABULARY
    expected = "OWLv2 or OWL-ViT zero-shot detection (e.g. google/owlv2-base-patch16-ensemble)"
    code_version = "1"

    def build(self, source: Path | str, local_only: bool) -> tuple[Any, Any]:
        from transformers import AutoModelForZeroShotObjectDetection, AutoProcessor

        return self.load_family(source, local_only, FAMILIES, AutoModelForZeroShotObjectDetection, AutoProcessor)

    @property
    def has_objectness(self) -> bool:
        return self.model is not None and self.model.config.model_type == "owlv2"

    @property
    def max_tokens(self) -> int:
        return int(self.model.config.text_config.max_position_embeddings)

    def _check(self, args: dict[str, Any]) -> Query:
        image, pic = pil_of(args, "LOC")
        phrase = " ".join(str(args.get("object", "object")).split())
        if not phrase:
            raise ModuleError("LOC needs a phrase naming what to find, got an empty one")
        threshold = args.get("threshold", 0.1)
        if isinstance(threshold, bool) or not isinstance(threshold, int | float) or not 0 <= threshold < 1:
            raise ModuleError(f"LOC's threshold must be a number from 0 up to 1, got {threshold!r}")
        generic = phrase.lower() in GENERIC
        if generic and not self.has_objectness:
            raise ModuleError(f"the hf pack's LOC ({self.model.config.model_type}) finds things by name and has no "
                              f"notion of 'object' in general: name what to find ('muffin', 'red bus')")
        text = PROMPT.format(phrase)
        # The processor pads every query to the model's length and cannot cut one: a longer phrase
        # would fail the whole batch's forward, so it is refused here, alone.
        tokens = len(self.processor.tokenizer(text)["input_ids"])
        if tokens > self.max_tokens:
            raise ModuleError(f"'{phrase}' is too long: as '{text}' it is {tokens} tokens, and the detector reads "
                              f"at most {self.max_tokens} (with the start and end marks); use a shorter phrase")
        return Query(image, pic, phrase, text, generic, float(threshold))

    def run(self, batch: Sequence[dict[str, Any]]) -> list[Any]:
        import torch

        good, queries, out = checked(batch, self._check)
        if not good:
            return out
        inputs = self.processor(text=[[q.text] for q in queries], images=[q.pic for q in queries],
                                return_tensors="pt")
        outputs = self.model(**self.to_device(inputs))
        # Post-processed in float32: scaled to pixels in half precision, a box would move by whole
        # pixels (bfloat16 steps by 4 at OWLv2's 960).
        logits = outputs.logits.float()  # (batch, patches, queries = 1)
        objectness = [i for i, q in enumerate(queries) if q.objectness]
        if objectness:
            logits[objectness, :, 0] = outputs.objectness_logits[objectness].float()
        found = self.processor.image_processor.post_process_object_detection(
            SimpleNamespace(logits=logits, pred_boxes=outputs.pred_boxes.float()),
            threshold=min(q.threshold for q in queries),
            target_sizes=torch.tensor([(q.pic.height, q.pic.width) for q in queries]))
        for i, q, result in zip(good, queries, found):
            out[i] = self._objects(q, result["boxes"].cpu().numpy(), result["scores"].cpu().numpy())
        return out

    def _objects(self, q: Query, boxes: NDArray[np.float32], scores: NDArray[np.float32]) -> Objects:
        w, h = q.pic.width, q.pic.height
        boxes = np.stack([boxes[:, 0].clip(0, w), boxes[:, 1].clip(0, h),
                          boxes[:, 2].clip(0, w), boxes[:, 3].clip(0, h)], axis=1)
        # A box wholly in OWLv2's padding clips to nothing: nothing of the image is in it.
        real = (scores > q.threshold) & (boxes[:, 2] - boxes[:, 0] >= 1) & (boxes[:, 3] - boxes[:, 1] >= 1)
        boxes, scores = boxes[real], scores[real]
        keep = nms(boxes, scores, NMS_IOU)[:MAX_OBJECTS]
        label = "object" if q.objectness else q.phrase
        items = tuple(Obj((float(boxes[k, 0]), float(boxes[k, 1]), float(boxes[k, 2]), float(boxes[k, 3])),
                          float(scores[k]), label) for k in keep)
        return Objects(items, q.image.key, (w, h))


def nms(boxes: NDArray[np.float32], scores: NDArray[np.float32], iou: float) -> list[int]:
    """Greedy non-maximum suppression: indices of the boxes kept, best score first. Ties keep the
    lower index, so a batch and its items one at a time keep the same boxes."""
    order = np.argsort(-scores, kind="stable")[:CANDIDATES]
    b = boxes[order].astype(np.float64)
    area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    alive = np.ones(len(order), dtype=bool)
    keep: list[int] = []
    for n in range(len(order)):
        if not alive[n]:
            continue
        keep.append(int(order[n]))
        ix = np.clip(np.minimum(b[n, 2], b[:, 2]) - np.maximum(b[n, 0], b[:, 0]), 0, None)
        iy = np.clip(np.minimum(b[n, 3], b[:, 3]) - np.maximum(b[n, 1], b[:, 1]), 0, None)
        inter = ix * iy
        overlap = inter / np.maximum(area[n] + area - inter, 1e-9)
        alive &= overlap <= iou
    return keep


def loc_modules(weights: RoleWeights) -> list[Module]:
    return [Detector(weights)]
