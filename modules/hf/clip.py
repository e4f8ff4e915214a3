"""SELECT and CLASSIFY over CLIP: object crops scored against text prompts (``CLIPModel``, written
against openai/clip-vit-base-patch32; VisProg used openai/clip-vit-large-patch14, which loads the same way).

Both modules share one model (``SharedClip``): one copy per device, loaded by whichever module the
pool loads first there, so enabling both never doubles memory. Its parameters and bytes are
counted once, under the module that loaded it (the other reports 0), so sums over modules are true.

Each object is seen as a crop: its box grown by ``ENLARGE`` (a little context helps CLIP name a
thing), at least ``MIN_CROP`` pixels on a side (a tiny box would be upsampled into noise), and,
when the object has a mask, with every pixel outside the mask painted the model's mean colour,
which the processor normalises to zero: a segment is judged by itself, not by what overlaps its
box. (VisProg crops by the box alone.) Prompts are VisProg's, ``a photo of {name}``.

- ``SELECT(image, object, query, category)``: ``query`` is one or more comma-separated names.
  ``category`` narrows the objects to those labelled so (as VisProg, ``-merged`` forms of panoptic
  labels included, and all objects when none is). Without a category, a name that is some
  objects' label selects those objects as they are (VisProg's string match). Every other name
  goes to CLIP: its candidate is the object whose crop is most similar to it (VisProg's argmax),
  and, unlike VisProg, which always returns one, the candidate is kept only if the name beats
  the competitor prompt ``a photo of other`` on it, so a name nothing in the image fits returns
  no object. A kept object records ``attributes["scores"]``, the softmax (at CLIP's own learned
  temperature) over the names CLIP scored and ``<other>``, and ``["matched"]``, why it was chosen.
  The competitor is a heuristic, not a calibrated threshold: the scores say how close a call was.
- ``CLASSIFY(image, object, categories)``: VisProg's assignment. Each object prefers the category
  its crop is most similar to (with one category, ``other`` competes, as in VisProg); each category
  goes to the one object, among those that prefer it, that is most similar to it. A chosen object
  takes the category as its label (``attributes["category"]``); every object records
  ``attributes["scores"]`` over the categories. Unlike VisProg, which returns only the chosen
  objects, the others pass through with their labels, as the photo pack's CLASSIFY does.

All crops of a batch go through one image forward and all its distinct prompts through one text
forward (in chunks of ``MAX_CROPS`` images, so a batch of large segmentations cannot exhaust memory);
the choice itself is a pure function of the similarity matrix (``choose_per_name``,
``assign_categories``).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from program_dsl import param, signature

from ..base import Module, ModuleError
from ..values import Obj, Objects, pixel_box
from .base import HfModule, checked, objects_arg, pil_of
from .weights import RoleWeights

__all__ = ["CLASSIFY_SIG", "OTHER", "SELECT_SIG", "Classify", "Select", "SharedClip", "assign_categories",
           "choose_per_name", "clip_modules", "crop_of", "softmax"]

CODE_VERSION = "1"
PROMPT = "a photo of {}"
OTHER = "other"  # the competitor prompt's name (VisProg's CLASSIFY uses the same word)
OTHER_KEY = "<other>"  # its key in attributes["scores"], apart from any name a program may use
ENLARGE = 1.2  # the crop is the box grown by 10% on each side
MIN_CROP = 16  # px: smaller boxes are grown about their centre to this
MAX_CROPS = 256  # images per forward: one forward for any usual batch, bounded memory for a huge one

Scores = NDArray[np.float32]

SELECT_SIG = signature(
    "SELECT", "Objects", param("image", "Image"), param("object", "Objects"), param("query", "Text"),
    param("category", "Text", None),
    doc="The objects matching comma-separated names (CLIP over each object's crop); `category` narrows.",
    pack="hf")
CLASSIFY_SIG = signature(
    "CLASSIFY", "Objects", param("image", "Image"), param("object", "Objects"), param("categories", "List[Text]"),
    doc="Label objects with the categories, each on the object it fits best (CLIP over each object's crop).",
    pack="hf")


# -- the choice, as pure functions of a score matrix ---------------------------------------------------


def softmax(logits: Scores) -> Scores:
    """Row-wise softmax (objects × prompts)."""
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    out: Scores = (e / e.sum(axis=1, keepdims=True)).astype(np.float32)
    return out


def choose_per_name(logits: Scores) -> list[tuple[int, int]]:
    """SELECT's choice on an objects × (names + competitor) matrix of logits, the competitor last:
    (name, object) for each name whose most similar object prefers it to the competitor."""
    n_objects, n_prompts = logits.shape
    if n_objects == 0:
        return []
    out: list[tuple[int, int]] = []
    for j in range(n_prompts - 1):
        i = int(np.argmax(logits[:, j]))
        if logits[i, j] > logits[i, -1]:
            out.append((j, i))
    return out


def assign_categories(logits: Scores, n_categories: int) -> dict[int, int]:
    """CLASSIFY's choice on an objects × prompts matrix of logits whose first ``n_categories``
    columns are categories (any further column competes but is never assigned): object → category.
    Each object prefers its highest column; each category goes to the object preferring it with
    the highest logit. A category no object prefers is given to none."""
    if logits.shape[0] == 0:
        return {}
    prefers = np.argmax(logits, axis=1)
    out: dict[int, int] = {}
    for c in range(n_categories):
        fans = np.flatnonzero(prefers == c)
        if fans.size:
            out[int(fans[np.argmax(logits[fans, c])])] = c
    return out


# -- crops ----------------------------------------------------------------------------------------------


def crop_of(pic: Image.Image, o: Obj, fill: tuple[int, int, int], index: int = 0) -> Image.Image:
    """What CLIP sees of one object (see the module doc): the enlarged box, outside the mask ``fill``."""
    w, h = pic.size
    if not all(np.isfinite(v) for v in o.box):
        raise ModuleError(f"object {index} ({o.label or 'unlabelled'}) has a box that is not finite: {list(o.box)}")
    x1, y1, x2, y2 = o.box
    left, right = _span(x1, x2, w)
    top, bottom = _span(y1, y2, h)
    box = pixel_box((left, top, right, bottom), w, h)
    crop = pic.crop(box)
    if o.mask is None:
        return crop
    mask = np.asarray(o.mask)
    if mask.shape != (h, w):
        raise ModuleError(f"object {index} ({o.label or 'unlabelled'}) has a mask of shape "
                          f"{'×'.join(map(str, mask.shape))} (rows×columns), but the image is {h}×{w}")
    inside = (mask if mask.dtype == np.bool_ else mask > 0.5)[box[1]:box[3], box[0]:box[2]]
    if not inside.any():
        return crop  # an empty mask says nothing about where the object is: its box does
    pixels = np.array(crop)
    pixels[~inside] = fill
    return Image.fromarray(pixels)


def _span(a: float, b: float, size: int) -> tuple[float, float]:
    """One side of the crop: the box's side grown, at least MIN_CROP, moved inside the image when it
    pokes out (an object at the edge keeps its context rather than losing half of it)."""
    length = min(max(abs(b - a) * ENLARGE, MIN_CROP), size)
    start = min(max((a + b - length) / 2, 0.0), size - length)
    return start, start + length


def _label_forms(name: str) -> set[str]:
    # COCO panoptic's stuff labels ("sky-other-merged") answer to their plain name, as in VisProg.
    n = " ".join(name.split()).casefold()
    return {n, f"{n}-merged", f"{n}-other-merged"}


def _labelled(items: Sequence[Obj], candidates: Sequence[int], name: str) -> list[int]:
    forms = _label_forms(name)
    return [i for i in candidates if " ".join(items[i].label.split()).casefold() in forms]


# -- the shared model -------------------------------------------------------------------------------------


@dataclass(eq=False)
class _Copy:
    """One loaded model on one device, the modules using it (the first counts its memory), and the
    lock its forwards take."""

    model: Any
    processor: Any
    dtype: Any
    users: list[Module] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


class SharedClip:
    """The CLIP model SELECT and CLASSIFY share: one copy per device, and the weights' digest hashed once."""

    def __init__(self, weights: RoleWeights) -> None:
        self.weights = weights
        self.lock = threading.Lock()  # held while a copy is loaded or released
        self.copies: dict[str, _Copy] = {}
        self._digest: str | None = None

    def digest(self) -> str:
        if self._digest is None:
            self._digest = self.weights.digest()
        return self._digest

    def copy_for(self, module: Module) -> _Copy | None:
        copy = self.copies.get(module.device)
        return copy if copy is not None and module in copy.users else None


class _Clip(HfModule):
    """What SELECT and CLASSIFY share: loading through ``SharedClip``, crops and embeddings."""

    code_version = CODE_VERSION
    expected = "CLIP (a CLIPModel with its CLIPProcessor, e.g. openai/clip-vit-base-patch32)"

    def __init__(self, weights: RoleWeights, shared: SharedClip) -> None:
        super().__init__(weights)
        self.shared = shared

    @property
    def version(self) -> str:
        if self._version is None:
            self._version = f"{self.signature.version}.{self.code_version}+{self.shared.digest()}"
        return self._version

    def build(self, source: Path | str, local_only: bool) -> tuple[Any, Any]:
        from transformers import AutoProcessor, CLIPModel

        config = self.model_config(source, local_only)
        if config.get("model_type") != "clip":
            raise self.wrong_weights(source, f"holds a {config.get('model_type')!r} model, not a CLIP one")
        processor = self.processor_from(AutoProcessor, source, local_only)
        return self.pretrained(CLIPModel, source, local_only), processor

    def load(self, device: str) -> None:
        with self.shared.lock:
            if self.device == device and self.shared.copy_for(self) is not None:
                return
            self._release()
            copy = self.shared.copies.get(device)
            if copy is None:
                super().load(device)
                copy = _Copy(self.model, self.processor, self.dtype)
                self.shared.copies[device] = copy
            self.model, self.processor, self.dtype = copy.model, copy.processor, copy.dtype
            self.device = device
            copy.users.append(self)

    def unload(self) -> None:
        """Stop using the model; its copy is freed when no module on its device uses it."""
        with self.shared.lock:
            self._release()

    def _release(self) -> None:
        copy = self.shared.copy_for(self)
        if copy is not None:
            copy.users.remove(self)
            if not copy.users:
                del self.shared.copies[self.device]
        self.model = self.processor = None

    def _counts(self) -> bool:
        copy = self.shared.copy_for(self)
        return copy is not None and copy.users[0] is self

    def parameter_count(self) -> int:
        return super().parameter_count() if self._counts() else 0

    def memory_bytes(self) -> int:
        return super().memory_bytes() if self._counts() else 0

    # -- run helpers ------------------------------------------------------------------------------------

    def fill(self) -> tuple[int, int, int]:
        """The colour that the processor normalises to zero: outside a mask, the model sees nothing."""
        mean = getattr(getattr(self.processor, "image_processor", None), "image_mean", None)
        if isinstance(mean, (list, tuple)) and len(mean) == 3:
            r, g, b = (round(float(v) * 255) for v in mean)
            return r, g, b
        return 128, 128, 128

    def similarities(self, crops: Sequence[Image.Image], texts: Sequence[str]) -> tuple[Scores, Scores, float]:
        """Unit image and text embeddings (crops × d, texts × d) and CLIP's logit scale."""
        import torch

        copy = self.shared.copy_for(self)
        if copy is None:
            raise ModuleError(f"{self.name}: the CLIP model was unloaded while this step ran; run it again")
        with copy.lock, torch.inference_mode():
            limit = int(self.model.config.text_config.max_position_embeddings)
            tokens = self.processor.tokenizer(list(texts), padding=True, truncation=True, max_length=limit,
                                              return_tensors="pt")
            text = _features(self.model.get_text_features(**self.to_device(tokens)))
            images = []
            for start in range(0, len(crops), MAX_CROPS):
                pixels = self.processor.image_processor(images=list(crops[start:start + MAX_CROPS]),
                                                        return_tensors="pt")
                images.append(_features(self.model.get_image_features(**self.to_device(pixels))))
            image = torch.cat(images) if images else text.new_zeros((0, text.shape[1]))
            scale = float(self.model.logit_scale.exp().float())
        return _unit(image), _unit(text), scale


def _features(out: Any) -> Any:
    # transformers 5 returns an output object whose pooler_output is the projected embedding; 4 a tensor.
    pooled = getattr(out, "pooler_output", None)
    return (out if pooled is None else pooled).float()


def _unit(t: Any) -> Scores:
    v: Scores = t.cpu().numpy().astype(np.float32)
    norms = np.linalg.norm(v, axis=1, keepdims=True)
    out: Scores = v / np.maximum(norms, 1e-12)
    return out


@dataclass
class _Texts:
    """The distinct prompts of a batch, each embedded once."""

    index: dict[str, int] = field(default_factory=dict)

    def add(self, prompts: Sequence[str]) -> list[int]:
        return [self.index.setdefault(p, len(self.index)) for p in prompts]

    @property
    def prompts(self) -> list[str]:
        return list(self.index)


def _with(o: Obj, label: str | None = None, **attributes: Any) -> Obj:
    return Obj(o.box, o.score, o.label if label is None else label, {**o.attributes, **attributes}, o.mask)


def _rounded(row: Scores, names: Sequence[str]) -> dict[str, float]:
    return {n: round(float(p), 4) for n, p in zip(names, row)}


def _pick(chosen: dict[int, Obj], items: Sequence[Obj], index: int, why: str, **attributes: Any) -> None:
    before = chosen.get(index)
    if before is not None:  # chosen for two names: say both
        why = f"{before.attributes['matched']}; {why}"
    chosen[index] = _with(before or items[index], matched=why, **attributes)


# -- SELECT -------------------------------------------------------------------------------------------------


@dataclass
class _Selecting:
    objects: Objects
    candidates: list[int]
    labelled: dict[str, list[int]]  # name → the objects labelled so
    clip_names: list[str]  # the names CLIP decides
    crops: list[Image.Image]
    why_candidates: str
    prompts: list[int] = field(default_factory=list)
    first_crop: int = 0


class Select(_Clip):
    """SELECT: objects by comma-separated names (see the module doc)."""

    def __init__(self, weights: RoleWeights, shared: SharedClip) -> None:
        super().__init__(weights, shared)
        self.signature = SELECT_SIG

    def _read(self, args: dict[str, Any]) -> _Selecting:
        image, pic = pil_of(args, "SELECT")
        objects = objects_arg("SELECT", args, image)
        query = args.get("query")
        parts = [" ".join(p.split()) for p in query.split(",") if p.strip()] if isinstance(query, str) else []
        firsts: dict[str, str] = {}
        for p in parts:
            firsts.setdefault(p.casefold(), p)
        names = list(firsts.values())
        if not names:
            raise ModuleError("SELECT needs a query: a name, or several separated by commas ('red bus', 'cat, dog')")
        category = args.get("category")
        if category is not None and not isinstance(category, str):
            raise ModuleError(f"SELECT: category must be text, got {type(category).__name__}")
        items = objects.items
        everything = list(range(len(items)))
        labelled: dict[str, list[int]] = {}
        why = ""
        if category and category.strip():
            candidates = _labelled(items, everything, category)
            if not candidates:
                # VisProg's fallback: a category no object is labelled with narrows nothing.
                candidates, why = everything, f"; no object is labelled '{category.strip()}', so all were candidates"
        else:
            candidates = everything
            labelled = {n: hits for n in names if (hits := _labelled(items, candidates, n))}
        clip_names = [n for n in names if n not in labelled]
        fill = self.fill()
        crops = [crop_of(pic, items[i], fill, i) for i in candidates] if clip_names else []
        return _Selecting(objects, candidates, labelled, clip_names, crops, why)

    def run(self, batch: Sequence[dict[str, Any]]) -> list[Any]:
        good, reads, out = checked(batch, self._read)
        texts = _Texts()
        crops: list[Image.Image] = []
        for r in reads:
            if r.clip_names and r.crops:
                r.prompts = texts.add([PROMPT.format(n) for n in r.clip_names] + [PROMPT.format(OTHER)])
                r.first_crop = len(crops)
                crops.extend(r.crops)
        if crops:
            image, text, scale = self.similarities(crops, texts.prompts)
        for i, r in zip(good, reads):
            items = r.objects.items
            chosen: dict[int, Obj] = {}
            for name, hits in r.labelled.items():
                for k in hits:
                    _pick(chosen, items, k, f"'{name}': labelled so")
            if r.prompts:
                sims = image[r.first_crop:r.first_crop + len(r.crops)] @ text[r.prompts].T
                logits = (scale * sims).astype(np.float32)
                probs = softmax(logits)
                keys = [*r.clip_names, OTHER_KEY]
                for j, k in choose_per_name(logits):
                    row = probs[k]
                    _pick(chosen, items, r.candidates[k],
                          f"'{r.clip_names[j]}': CLIP's best match among {len(r.candidates)} object(s), "
                          f"{row[j]:.2f} against '{OTHER}' {row[-1]:.2f}{r.why_candidates}",
                          scores=_rounded(row, keys))
            out[i] = r.objects.with_items([chosen[k] for k in sorted(chosen)])
        return out


# -- CLASSIFY ----------------------------------------------------------------------------------------------


@dataclass
class _Classifying:
    objects: Objects
    categories: list[str]
    crops: list[Image.Image]
    prompts: list[int] = field(default_factory=list)
    first_crop: int = 0


class Classify(_Clip):
    """CLASSIFY: each category on the object it fits best (see the module doc)."""

    def __init__(self, weights: RoleWeights, shared: SharedClip) -> None:
        super().__init__(weights, shared)
        self.signature = CLASSIFY_SIG

    def _read(self, args: dict[str, Any]) -> _Classifying:
        image, pic = pil_of(args, "CLASSIFY")
        objects = objects_arg("CLASSIFY", args, image)
        raw = args.get("categories")
        if not isinstance(raw, (list, tuple)) or not raw:
            raise ModuleError("CLASSIFY needs a non-empty list of categories, e.g. ['apple', 'banana', 'orange']")
        categories: dict[str, str] = {}
        for c in raw:
            if not isinstance(c, str) or not c.strip():
                raise ModuleError(f"CLASSIFY: each category must be a non-empty text, got {c!r}")
            text = " ".join(c.split())
            categories.setdefault(text.casefold(), text)
        fill = self.fill()
        crops = [crop_of(pic, o, fill, i) for i, o in enumerate(objects.items)]
        return _Classifying(objects, list(categories.values()), crops)

    def run(self, batch: Sequence[dict[str, Any]]) -> list[Any]:
        good, reads, out = checked(batch, self._read)
        texts = _Texts()
        crops: list[Image.Image] = []
        for r in reads:
            if r.crops:
                # One category alone would win every object: VisProg's 'other' competes with it.
                names = r.categories + ([OTHER] if len(r.categories) == 1 else [])
                r.prompts = texts.add([PROMPT.format(n) for n in names])
                r.first_crop = len(crops)
                crops.extend(r.crops)
        if crops:
            image, text, scale = self.similarities(crops, texts.prompts)
        for i, r in zip(good, reads):
            items = list(r.objects.items)
            if r.prompts:
                sims = image[r.first_crop:r.first_crop + len(r.crops)] @ text[r.prompts].T
                logits = (scale * sims).astype(np.float32)
                probs = softmax(logits)
                keys = r.categories + ([OTHER_KEY] if len(r.categories) == 1 else [])
                given = assign_categories(logits, len(r.categories))
                for k, o in enumerate(r.objects.items):
                    scores = _rounded(probs[k], keys)
                    if k in given:
                        c = r.categories[given[k]]
                        items[k] = _with(o, label=c, category=c, scores=scores)
                    else:
                        items[k] = _with(o, scores=scores)
            out[i] = r.objects.with_items(items)
        return out


def clip_modules(weights: RoleWeights) -> list[Module]:
    """SELECT and CLASSIFY, sharing one CLIP model."""
    shared = SharedClip(weights)
    return [Select(weights, shared), Classify(weights, shared)]
