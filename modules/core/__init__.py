"""The core pack: symbolic modules (counting, cropping, set operations, drawing, EVAL).

They need no model, so every deployment has them and the service is useful before any neural pack.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from PIL import Image, ImageDraw

from program_dsl import EVAL, EvalError, Signature, evaluate_text, param, signature

from ..base import FunctionModule, FunctionSet, Module, ModuleError, Pack
from ..routing import Vocabulary
from ..values import ImageValue, Obj, Objects, pixel_box

_module = FunctionSet()

@_module(signature("COUNT", "Number", param("box", "Objects", doc="the objects to count"), doc="Number of objects."))
def count(box: Objects) -> int:
    return len(box)


@_module(signature("EXISTS", "Bool", param("box", "Objects"), doc="Whether there is at least one object."))
def exists(box: Objects) -> bool:
    return len(box) > 0


# Version 2: a crop is a new pixel grid, except the whole frame, which keeps the image's grid.
@_module(signature("CROP", "Image", param("image", "Image"), param("box", "Objects"), version="2",
                   doc="Crop the image to the union of the boxes, slightly enlarged."))
def crop(image: ImageValue, box: Objects) -> Image.Image | ImageValue:
    """The union of the boxes, enlarged by a quarter of its size each way (VisProg's context margin)."""
    if len(box) == 0:
        return image.edited(image.image)
    x1 = min(o.box[0] for o in box)
    y1 = min(o.box[1] for o in box)
    x2 = max(o.box[2] for o in box)
    y2 = max(o.box[3] for o in box)
    mw, mh = (x2 - x1) / 4, (y2 - y1) / 4
    window = pixel_box((x1 - mw, y1 - mh, x2 + mw, y2 + mh), image.width, image.height)
    if window == (0, 0, image.width, image.height):
        return image.edited(image.image)  # nothing cut: boxes found on the image still fit it
    return image.image.crop(window)


# VisProg's spatial crops: the part of the image on one side of the best box's centre. 'In front of'
# is taken as below and 'behind'/'ahead' as above, as a camera looking down sees them.
_DIRECTIONS: dict[str, tuple[str, str]] = {  # module → (its words in the docs, the half it keeps)
    "CROP_LEFTOF": ("left of", "left"), "CROP_RIGHTOF": ("right of", "right"),
    "CROP_ABOVE": ("above", "above"), "CROP_BELOW": ("below", "below"),
    "CROP_FRONTOF": ("in front of", "below"), "CROP_INFRONT": ("in front of", "below"),
    "CROP_INFRONTOF": ("in front of", "below"), "CROP_BEHIND": ("behind", "above"), "CROP_AHEAD": ("ahead of", "above"),
}


def _directional(half: str) -> Callable[[ImageValue, Objects], Image.Image]:
    def fn(image: ImageValue, box: Objects) -> Image.Image:
        if len(box) == 0:
            return image.image
        best = max(box, key=lambda o: o.score)
        x1, y1, x2, y2 = best.box
        cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
        w, h = image.width, image.height
        region = {
            "left": (0, 0, cx, h), "right": (cx, 0, w, h),
            "above": (0, 0, w, cy), "below": (0, cy, w, h),
        }[half]
        return image.image.crop(pixel_box(region, w, h))

    return fn


for _name, (_words, _half) in _DIRECTIONS.items():
    _module(signature(_name, "Image", param("image", "Image"), param("box", "Objects"),
                      doc=f"Crop the part of the image {_words} the box (the whole image if there is no box)."))(
        _directional(_half))


def _same_image(op: str, left: Objects, right: Objects) -> None:
    # The same grid, not the same key: objects found on a photo and on its edit share pixel coordinates.
    if left.grid != right.grid:
        raise ModuleError(f"{op} needs objects found in the same image (or in edits of it that keep its pixels)")


@_module(signature("UNION", "Objects", param("left", "Objects"), param("right", "Objects"),
                   doc="Objects in either set (same image), duplicates dropped."))
def union(left: Objects, right: Objects) -> Objects:
    _same_image("UNION", left, right)
    items = list(left.items) + [o for o in right if not any(o.same(x) for x in left)]
    return left.with_items(items)


@_module(signature("INTERSECT", "Objects", param("left", "Objects"), param("right", "Objects"),
                   doc="Objects present in both sets."))
def intersect(left: Objects, right: Objects) -> Objects:
    _same_image("INTERSECT", left, right)
    return left.with_items([o for o in left if any(o.same(x) for x in right)])


@_module(signature("DIFFERENCE", "Objects", param("left", "Objects"), param("right", "Objects"),
                   doc="Objects of the first set not in the second."))
def difference(left: Objects, right: Objects) -> Objects:
    _same_image("DIFFERENCE", left, right)
    return left.with_items([o for o in left if not any(o.same(x) for x in right)])


@_module(signature("SORT", "Objects", param("box", "Objects"),
                   param("by", "Text", "x", choices=("x", "y", "area", "score"), doc="what to order by"),
                   param("descending", "Bool", False), doc="Objects ordered by position, area or score."))
def sort(box: Objects, by: str, descending: bool) -> Objects:
    keys: dict[str, Callable[[Obj], float]] = {
        "x": lambda o: (o.box[0] + o.box[2]) / 2,
        "y": lambda o: (o.box[1] + o.box[3]) / 2,
        "area": lambda o: o.area,
        "score": lambda o: o.score,
    }
    if by not in keys:
        raise ModuleError(f"SORT cannot order by {by!r}; use one of {', '.join(keys)}")
    return box.with_items(sorted(box, key=keys[by], reverse=bool(descending)))


@_module(signature("PICK", "Objects", param("box", "Objects"), param("index", "Number", 0),
                   doc="The object at a position of the list (negative counts from the end)."))
def pick(box: Objects, index: int | float) -> Objects:
    if isinstance(index, float) and not index.is_integer():
        raise ModuleError(f"PICK needs a whole index, got {index}")
    i = int(index)
    if not -len(box) <= i < len(box):
        raise ModuleError(f"PICK index {i} is out of range for {len(box)} object(s)")
    return box.with_items([box.items[i]])


@_module(signature("REGION", "Objects", param("image", "Image"),
                   param("box", "List[Number]", doc="x1, y1, x2, y2 in pixels"), param("label", "Text", "region"),
                   doc="A region given by its box: lets a program point at a known place without a detector."))
def region(image: ImageValue, box: list[float], label: str) -> Objects:
    if len(box) != 4:
        raise ModuleError(f"REGION's box needs 4 numbers (x1, y1, x2, y2), got {len(box)}")
    x1, y1, x2, y2 = pixel_box((box[0], box[1], box[2], box[3]), image.width, image.height)
    return Objects((Obj((float(x1), float(y1), float(x2), float(y2)), 1.0, label),), image.key,
                   (image.width, image.height))


# VisProg's LOC takes these four words as the image's halves, with no model.
HALVES = ("TOP", "BOTTOM", "LEFT", "RIGHT")


class GeometryLoc(FunctionModule):
    """LOC over the image's geometry: routed to by the four phrases it knows."""

    vocabulary = Vocabulary(categories=HALVES, phrases=frozenset(h.lower() for h in HALVES))


@_module(signature("LOC", "Objects", param("image", "Image"),
                   param("object", "Text", "object", doc="'TOP', 'BOTTOM', 'LEFT' or 'RIGHT'"),
                   doc="The image's top, bottom, left or right half (VisProg's LOC geometry).", version="2"),
         GeometryLoc)
def loc(image: ImageValue, object: str) -> Objects:  # noqa: A002 - VisProg's argument name
    w, h = image.width, image.height
    halves = {"TOP": (0, 0, w, h // 2), "BOTTOM": (0, h // 2, w, h),
              "LEFT": (0, 0, w // 2, h), "RIGHT": (w // 2, 0, w, h)}
    box = halves.get(object.strip().upper())
    if box is None:
        raise ModuleError(f"the core pack's LOC finds only the image's halves ({', '.join(HALVES)}), not "
                          f"'{object}': enable a pack whose LOC finds objects")
    x1, y1, x2, y2 = box
    return Objects((Obj((float(x1), float(y1), float(x2), float(y2)), 1.0, object.strip().upper()),), image.key,
                   (w, h))


_PALETTE = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#bfef45"]


# Version 2: the drawing keeps the image's pixel grid, so later edits may use the same objects.
@_module(signature("TAG", "Image", param("image", "Image"), param("object", "Objects"), version="2",
                   doc="Draw the objects' boxes and labels."))
def tag(image: ImageValue, object: Objects) -> ImageValue:  # noqa: A002 - VisProg's argument name
    out = image.image.copy()
    draw = ImageDraw.Draw(out)
    for i, o in enumerate(object):
        colour = _PALETTE[i % len(_PALETTE)]
        x1, y1, x2, y2 = pixel_box(o.box, out.width, out.height)
        draw.rectangle((x1, y1, x2 - 1, y2 - 1), outline=colour, width=2)
        if o.label:
            draw.text((x1 + 3, max(0, y1 - 12)), o.label, fill=colour)
    return image.edited(out)


class EvalModule(Module):
    """EVAL: the program's own expressions, run by the language's safe evaluator."""

    signature = EVAL
    cheap = True

    def forward(self, batch: Any) -> list[Any]:
        out: list[Any] = []
        for args in batch:
            env = {k: v for k, v in args.items() if k != "expr"}
            try:
                out.append(evaluate_text(args["expr"], env))
            except EvalError as e:
                out.append(ModuleError(str(e)))
        return out


SIGNATURES: tuple[Signature, ...] = _module.signatures


def pack() -> Pack:
    modules: list[Module] = [EvalModule(), *_module.modules()]
    for m in modules:
        m.bounded = True  # this pack's own functions, each linear in its inputs (EVAL within the DSL's limits)
    return Pack("core", modules, doc="Symbolic modules: counting, cropping, set operations, drawing, EVAL.")
