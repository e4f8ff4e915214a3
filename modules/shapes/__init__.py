"""The shapes pack: a detector and attribute classifier trained on the shapes world, and the
symbolic modules that CLEVR-style programs need on top of them.

``LOC`` is the only neural module: it finds every object, classifies its attributes (a probability
per value, kept in the trace) and keeps those the phrase describes. Everything after it works on
those attributes, so it runs the same on a fresh result and on one rebuilt from the cache:

- ``FILTER(box, value)``: the objects a phrase describes ('red', 'large ball').
- ``QUERY(box, attribute)``: the value of one attribute of the one object in ``box``.
- ``RELATE(box, anchor, relation)``: the objects of ``box`` left/right/above/below the one ``anchor``
  (by box centre; the anchor itself excluded).
- ``SAME(box, attribute, scene)``: the objects of ``scene`` (usually ``LOC(IMAGE, 'object')``) that
  share the attribute with the one object in ``box``, that object excluded. The scene is an argument,
  not the image, so SAME reuses the detection already made (and cached) instead of detecting again.
- ``UNIQUE(box)``: ``box`` itself when it holds exactly one object, an error otherwise.

A CLEVR question then reads, for example:

    scene = LOC(IMAGE, 'object')
    ball = UNIQUE(FILTER(scene, 'large red ball'))
    n = COUNT(SAME(ball, 'color', scene))

Every object's ``attributes`` are ``{attribute: {value: probability}}``, plus ``matched``: the words
of the step's phrase and the concept each was taken to mean, with its similarity.

``LOC`` answers only for images that look like shapes-world scenes (``domain``): on a photo it fails
the step, says what it measured and which pack to enable instead.

What the service loads is this file, the networks (``nets``), the shapes-world check (``domain``),
the words → concepts layer (``concepts``), the vocabulary (``vocab``) and the weights (``files``).
The pack's tooling (world generator, training, questions, CLEVR import, benchmark, CLI commands) is
in ``tools``, which nothing here imports.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from program_dsl import Signature, param, signature

from ..base import FunctionModule, Module, ModuleError, Pack, files_digest
from ..routing import Vocabulary
from ..values import ImageValue, Obj, Objects
from . import concepts as concepts_mod
from . import domain
from .files import ATTRIBUTES_FILE, DETECTOR_FILE, WEIGHTS, weight_files
from .vocab import ATTRIBUTE_NAMES, ATTRIBUTES, RELATIONS, SHAPES, label

if TYPE_CHECKING:
    from . import nets as nets_mod
    from .nets import AttributeNet, Detector

__all__ = [
    "ATTRIBUTES", "ATTRIBUTES_FILE", "ATTRIBUTE_NAMES", "DETECTOR_FILE", "LOC_SIG", "LOC_VERSION", "LOC_VOCABULARY",
    "RELATIONS", "WEIGHTS", "Loc", "filter_", "most_likely", "pack", "query", "relate", "same", "select", "unique",
    "values_of",
]

CODE_VERSION = "1"
# LOC checks that an image is a shapes-world scene before it answers (``domain``): its answers changed.
LOC_VERSION = f"2.{domain.VERSION}"
SYMBOLIC_VERSION = f"{CODE_VERSION}-{concepts_mod.VERSION}"

_OBJECT_DOC = "what to find: a phrase of attribute words ('large red circle', 'ball') or 'object' for all"

LOC_SIG = signature(
    "LOC", "Objects", param("image", "Image"), param("object", "Text", "object", doc=_OBJECT_DOC),
    doc="Find the objects a phrase describes, with a probability for every attribute value.", pack="shapes")
# What routing (``modules.routing``) sends here: phrases made of the world's words, their anchors
# ('ball', 'cube') and generic words ('object', 'things').
LOC_VOCABULARY = Vocabulary(
    categories=("object", *SHAPES),
    words=frozenset([*concepts_mod.EXACT, *(w for ws in concepts_mod.ANCHORS.values() for w in ws),
                     *concepts_mod.GENERIC]),
    ignored=concepts_mod.STOPWORDS)
FILTER_SIG = signature(
    "FILTER", "Objects", param("box", "Objects"),
    param("value", "Text", doc="attribute words the objects must have ('red', 'large striped')"),
    doc="The objects a phrase describes.", pack="shapes")
QUERY_SIG = signature(
    "QUERY", "Text", param("box", "Objects", doc="exactly one object"),
    param("attribute", "Text", choices=ATTRIBUTE_NAMES), doc="One attribute's value of the one object.",
    pack="shapes")
RELATE_SIG = signature(
    "RELATE", "Objects", param("box", "Objects", doc="the candidates"),
    param("anchor", "Objects", doc="exactly one object"), param("relation", "Text", choices=RELATIONS),
    doc="The candidates left of / right of / above / below the anchor (by box centre).", pack="shapes")
SAME_SIG = signature(
    "SAME", "Objects", param("box", "Objects", doc="exactly one object"),
    param("attribute", "Text", choices=ATTRIBUTE_NAMES),
    param("scene", "Objects", doc="the objects to choose from, e.g. LOC(IMAGE, 'object')"),
    doc="The scene's other objects with the same value of the attribute.", pack="shapes")
UNIQUE_SIG = signature(
    "UNIQUE", "Objects", param("box", "Objects"),
    doc="The one object in the set; an error unless there is exactly one.", pack="shapes")


def _sig(sig: Signature, version: str) -> Signature:
    return replace(sig, version=version)


# ----------------------------------------------------------------------------- attribute helpers


def most_likely(attributes: Mapping[str, Any]) -> dict[str, str]:
    """The most likely value of each attribute in an object's ``attributes`` (``{attribute: {value:
    probability}}``, as LOC reports them, in process or in a trace's JSON)."""
    out: dict[str, str] = {}
    for a in ATTRIBUTE_NAMES:
        probs = attributes.get(a)
        if isinstance(probs, Mapping) and probs:
            out[a] = max(probs, key=lambda v: float(probs[v]))
    return out


def values_of(o: Obj) -> dict[str, str]:
    """The most likely value of each attribute of an object LOC found."""
    return most_likely(o.attributes)


def _value(o: Obj, attribute: str, module: str) -> str:
    v = values_of(o).get(attribute)
    if v is None:
        raise ModuleError(f"{module} needs objects with a {attribute} (objects found by LOC); "
                          f"object {o.label or o.box!r} has none")
    return v


def _one(box: Objects, module: str, what: str = "box") -> Obj:
    if len(box) != 1:
        labels = ", ".join(o.label for o in box.items[:5]) + (" …" if len(box) > 5 else "")
        raise ModuleError(f"{module} needs exactly one object in '{what}', got {len(box)}"
                          + (f" ({labels})" if len(box) else ""))
    return box.items[0]


def _with_matched(o: Obj, query: concepts_mod.Query) -> Obj:
    attrs = {k: v for k, v in o.attributes.items() if k != "matched"}
    if query.matches:
        attrs["matched"] = query.to_json()
    return replace(o, attributes=attrs)


def select(box: Objects, phrase: str, module: str = "FILTER",
           mapper: concepts_mod.Concepts | None = None) -> Objects:
    """The objects of ``box`` that ``phrase`` describes, each noting how the phrase was read."""
    query = (mapper or concepts_mod.shared()).phrase(phrase)
    if query.matches:
        for o in box:
            for a in query.wants():
                _value(o, a, module)
    return box.with_items([_with_matched(o, query) for o in box if query.accepts(values_of(o))])


# ----------------------------------------------------------------------------- symbolic modules


def filter_(box: Objects, value: str) -> Objects:
    return select(box, value, "FILTER")


def query(box: Objects, attribute: str) -> str:
    if attribute not in ATTRIBUTES:
        raise ModuleError(f"QUERY cannot ask for {attribute!r}; use one of {', '.join(ATTRIBUTE_NAMES)}")
    return _value(_one(box, "QUERY"), attribute, "QUERY")


def _centre(o: Obj) -> tuple[float, float]:
    x1, y1, x2, y2 = o.box
    return (x1 + x2) / 2, (y1 + y2) / 2


_SIDES: dict[str, Callable[[tuple[float, float], tuple[float, float]], bool]] = {
    "left": lambda c, a: c[0] < a[0], "right": lambda c, a: c[0] > a[0],
    "above": lambda c, a: c[1] < a[1], "below": lambda c, a: c[1] > a[1],
}


def relate(box: Objects, anchor: Objects, relation: str) -> Objects:
    side = _SIDES.get(relation)
    if side is None:
        raise ModuleError(f"RELATE knows no relation {relation!r}; use one of {', '.join(RELATIONS)}")
    if box.image_key != anchor.image_key:
        raise ModuleError("RELATE needs the box and the anchor from the same image")
    a = _one(anchor, "RELATE", "anchor")
    ac = _centre(a)
    return box.with_items([o for o in box if not o.same(a) and side(_centre(o), ac)])


def same(box: Objects, attribute: str, scene: Objects) -> Objects:
    if attribute not in ATTRIBUTES:
        raise ModuleError(f"SAME cannot compare {attribute!r}; use one of {', '.join(ATTRIBUTE_NAMES)}")
    if box.image_key != scene.image_key:
        raise ModuleError("SAME needs the box and the scene from the same image")
    ref = _one(box, "SAME")
    v = _value(ref, attribute, "SAME")
    return scene.with_items([o for o in scene if not o.same(ref) and _value(o, attribute, "SAME") == v])


def unique(box: Objects) -> Objects:
    _one(box, "UNIQUE")
    return box


class _Worded(FunctionModule):
    """A symbolic module that may need the text model for an unseen word: it runs on a worker thread,
    never on the event loop, and warms the shared model with the pack."""

    cheap = False

    def inline(self, args: Mapping[str, Any]) -> bool:
        # Known words need no model: the call is a filter over attributes, done in microseconds.
        return concepts_mod.shared().exact(str(args.get("value", "")))

    def warmup(self) -> None:
        # The mapper is made, not warmed: its text model loads on first need or in the background
        # once the service is ready (``modules.words.warm_all``), never during start-up.
        concepts_mod.shared()


# ----------------------------------------------------------------------------- LOC


class Loc(Module):
    """The detector and the attribute classifier, run as one step over a batch of images."""

    batchable = True
    max_batch_size = 16
    vocabulary = LOC_VOCABULARY

    def __init__(self, weights: Path = WEIGHTS, mapper: concepts_mod.Concepts | None = None,
                 limits: domain.Limits | None = domain.LIMITS) -> None:
        """``limits``: what a shapes-world scene may look like (``domain``), measured for the
        committed weights; ``None`` answers for any image (a training run's smoke test, say)."""
        self.weights = weights
        self.mapper = mapper
        self.limits = limits
        self.detector: Detector | None = None
        self.attrnet: AttributeNet | None = None
        self._version: str | None = None
        self.signature = LOC_SIG

    @property
    def files(self) -> list[Path]:
        return list(weight_files(self.weights))

    @property
    def version(self) -> str:
        if self._version is None:
            try:
                digest = files_digest(self.files)
            except OSError:
                return f"{self._code_version}-noweights"
            self._version = f"{self._code_version}-{digest}-{concepts_mod.VERSION}"
        return self._version

    @property
    def _code_version(self) -> str:
        if self.limits == domain.LIMITS:
            return LOC_VERSION
        if self.limits is None:
            return "2.unchecked"
        return f"2.{hashlib.sha256(repr(self.limits).encode()).hexdigest()[:8]}"

    def load(self, device: str) -> None:
        from . import nets

        missing = [str(p) for p in self.files if not p.is_file()]
        if missing:
            raise FileNotFoundError(f"shapes weights are missing ({', '.join(missing)}); run `nsx shapes train`")
        self.detector = nets.load_detector(self.files[0], device)
        self.attrnet = nets.load_attribute_net(self.files[1], device)
        self.device = device
        self._version = None

    def _nets(self) -> tuple[Detector, AttributeNet]:
        if self.detector is None or self.attrnet is None:
            self.load(self.device)
        if self.detector is None or self.attrnet is None:  # load() sets both or raises
            raise ModuleError("LOC's networks are not loaded")
        return self.detector, self.attrnet

    def general_call(self, consts: Mapping[str, Any]) -> dict[str, Any] | None:
        # Every phrase is a filter over the image's one detection: LOC(IMAGE, 'red circle') after
        # LOC(IMAGE, 'object') runs no network. Only phrases of known words, so ``refine`` never
        # needs the text model (it runs on the event loop); the rest run LOC as they are.
        phrase = str(consts.get("object", "object"))
        if phrase == "object" or not (self.mapper or concepts_mod.shared()).exact(phrase):
            return None
        return {**consts, "object": "object"}

    def refine(self, general: Any, args: Mapping[str, Any]) -> Any:
        if not isinstance(general, Objects):
            raise ModuleError(f"LOC's detection is a {type(general).__name__}, not objects")
        q = (self.mapper or concepts_mod.shared()).phrase(str(args.get("object", "object")))
        return general.with_items([_with_matched(o, q) for o in general if q.accepts(values_of(o))])

    def warmup(self) -> None:
        import torch

        detector, attrnet = self._nets()
        side = detector.cfg.input_size
        blank = Image.new("RGB", (side, side), (180, 180, 180))
        # A blank image is no shapes scene, so LOC refuses it before the attribute classifier runs:
        # that one is warmed on its own.
        self.forward([{"image": ImageValue(blank, "sha256:warmup"), "object": "object"}])
        c = attrnet.cfg.crop
        with torch.inference_mode():
            attrnet(torch.zeros((1, 4, c, c), device=self.device), torch.zeros((1, 3), device=self.device))
        concepts_mod.shared()  # made, not warmed: as in _Worded.warmup

    def _tensor(self, images: Sequence[Image.Image]) -> Any:
        """The detector's input for ``images``: B×3×S×S in [0, 1], on the CPU."""
        import torch

        S = self._nets()[0].cfg.input_size
        arrays = []
        for image in images:
            # An RGB image is used as it is: converting would copy it, one more GIL round trip.
            im = image if image.mode == "RGB" else image.convert("RGB")
            if im.size != (S, S):
                im = im.resize((S, S), Image.Resampling.BILINEAR)
            arrays.append(np.asarray(im))
        return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float().div_(255)

    def _detect(self, x: Any) -> tuple[list[list[nets_mod.Detection]], list[domain.Verdict]]:
        from . import nets

        detector, attrnet = self._nets()
        dets, maps = nets.detect(detector, x.to(self.device), attrnet.cfg.mask_stride)
        if self.limits is None:
            return dets, [domain.Verdict(None, ()) for _ in dets]
        return dets, [domain.judge(e, self.limits) for e in domain.measure(x, dets, maps, self.limits)]

    def examine(self, images: Sequence[Image.Image]) -> list[domain.Verdict]:
        """Whether each image is a shapes-world scene, and the evidence: what LOC decides before it
        answers (tools and tests read it here)."""
        return self._detect(self._tensor(images))[1]

    def forward(self, batch: Sequence[dict[str, Any]]) -> list[Any]:
        import torch

        from . import nets

        detector, attrnet = self._nets()
        S = detector.cfg.input_size
        mapper = self.mapper or concepts_mod.shared()
        out: list[Any] = [None] * len(batch)
        todo: list[tuple[int, ImageValue, concepts_mod.Query]] = []
        for i, args in enumerate(batch):
            image = args.get("image")
            if not isinstance(image, ImageValue):
                out[i] = ModuleError(f"LOC needs an image, got {type(image).__name__}")
                continue
            try:
                q = mapper.phrase(str(args.get("object", "object")))
            except ModuleError as e:
                out[i] = e
                continue
            todo.append((i, image, q))
        if not todo:
            return out
        x = self._tensor([image.image for _, image, _ in todo])
        dets, verdicts = self._detect(x)
        # An image the networks were not trained on gets an error, never objects: the attribute
        # classifier does not even run on it.
        kept = [k for k, v in enumerate(verdicts) if v.ok]
        for (i, _, _), v in zip(todo, verdicts):
            if not v.ok:
                out[i] = ModuleError(domain.message(v))
        if not kept:
            return out
        preds = nets.classify(attrnet, x[kept].to(self.device), [dets[k] for k in kept])
        for k, objs in zip(kept, preds):
            i, image, q = todo[k]
            W, H = image.width, image.height
            sx, sy = W / S, H / S
            items = []
            # All of an image's masks at once, scaled to the image by PIL's own nearest-neighbour
            # tables: the same pixels as resizing each mask with PIL, in one gather.
            masks = torch.stack([p.mask for p in objs]).cpu().numpy() if objs else np.zeros((0, S, S), bool)
            if (W, H) != (S, S):
                rows, cols = nets.nearest_tables(S, W, H)
                masks = masks[:, rows[:, None], cols[None, :]]
            for p, mask in zip(objs, masks):
                x1, y1, x2, y2 = p.box
                attrs: dict[str, Any] = {a: {v: round(pr, 4) for v, pr in p.probs[a].items()} for a in ATTRIBUTE_NAMES}
                items.append(Obj((x1 * sx, y1 * sy, x2 * sx, y2 * sy), round(p.score, 4), label(p.attributes), attrs,
                                 mask))
            # Left to right, then top to bottom: the order a person reads the trace in.
            items.sort(key=lambda o: (o.box[0] + o.box[2], o.box[1] + o.box[3]))
            found = Objects(tuple(items), image.key, (W, H))
            out[i] = found.with_items([_with_matched(o, q) for o in found if q.accepts(values_of(o))])
        return out


def pack() -> Pack:
    mods: list[Module] = [
        Loc(),
        _Worded(_sig(FILTER_SIG, SYMBOLIC_VERSION), filter_),
        FunctionModule(_sig(QUERY_SIG, CODE_VERSION), query),
        FunctionModule(_sig(RELATE_SIG, CODE_VERSION), relate),
        FunctionModule(_sig(SAME_SIG, CODE_VERSION), same),
        FunctionModule(_sig(UNIQUE_SIG, CODE_VERSION), unique),
    ]
    for m in mods[1:]:
        m.bounded = True  # CLEVR's functions over a scene's objects: linear in them
    return Pack("shapes", mods, doc="The shapes world: trained detector and attribute classifier, CLEVR's functions.")
