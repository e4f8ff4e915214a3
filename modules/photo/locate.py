"""LOC on photos: ``LOC(IMAGE, 'face')``, ``'person'``, ``'hand'``, ``'text'`` run the one detector
that finds that kind of thing, and nothing else.

With the shapes pack (or any other pack with a LOC) enabled too, routing (``modules.routing``)
sends a phrase here when this vocabulary knows it: the four categories, their plurals and the
words people use for them (a 'girl' is a person, 'words' are text). This pack cannot tell a man
from a woman or a child from an adult: those words find every person, and the objects say how the
word was read (``attributes["matched"]``), so nobody mistakes the answer for more than it is.

A phrase with words beyond a category ('small face', 'person on the left') is refused: the
detector has no notion of them, and dropping them would answer a different question.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from PIL import Image

from program_dsl import param, signature

from ..base import Module, ModuleError
from ..routing import Vocabulary, words_of
from ..values import ImageValue, Obj, Objects
from . import faces, hands, people, text
from .common import CpuModel, image_of
from .faces import face_files, find_faces
from .hands import find_hands, hands_files
from .people import find_people, people_files
from .text import find_text_regions, text_files

# Its answers are the finders': their code versions are part of its own.
CODE_VERSION = "1." + ".".join(m.CODE_VERSION for m in (faces, people, hands, text))

# Category → the words that mean it here. Only exact words: an embedding would also map 'dog' or
# 'car' near 'person', and this pack must not claim what it cannot see.
WORDS: dict[str, tuple[str, ...]] = {
    "face": ("face", "faces", "head", "heads"),
    "person": ("person", "persons", "people", "human", "humans", "man", "men", "woman", "women", "boy", "boys",
               "girl", "girls", "child", "children", "kid", "kids", "lady", "ladies", "guy", "guys", "adult",
               "adults", "player", "players", "someone", "everyone", "pedestrian", "pedestrians"),
    "hand": ("hand", "hands", "palm", "palms", "fist", "fists"),
    "text": ("text", "texts", "word", "words", "writing", "letters", "lettering", "caption", "captions"),
}
IGNORED = frozenset({"a", "an", "the", "all", "any", "every", "each", "of", "some", "visible"})
FINDERS: dict[str, Callable[[ImageValue], list[Obj]]] = {
    "face": find_faces, "person": find_people, "hand": find_hands, "text": find_text_regions,
}
_CATEGORY = {w: c for c, ws in WORDS.items() for w in ws}

LOC_VOCABULARY = Vocabulary(categories=("face", "person", "hand", "text"), words=frozenset(_CATEGORY),
                            ignored=IGNORED, near=False)
LOC_SIG = signature("LOC", "Objects", param("image", "Image"),
                    param("object", "Text", "object", doc="'face', 'person', 'hand' or 'text' (and their synonyms)"),
                    doc="Find the faces, people, hands or text in a photo.", pack="photo")


def category(phrase: str) -> tuple[str, str]:
    """The category a phrase names, and the word that named it; ModuleError otherwise."""
    words = [w for w in words_of(phrase.lower()) if w not in IGNORED]
    cats = {_CATEGORY[w] for w in words if w in _CATEGORY}
    others = [w for w in words if w not in _CATEGORY]
    if len(cats) == 1 and not others:
        return cats.pop(), next(w for w in words if w in _CATEGORY)
    known = "; ".join(f"{c}: {', '.join(ws[:6])}…" for c, ws in WORDS.items())
    if others:
        why = f"it has no notion of {', '.join(repr(w) for w in others)}"
    elif cats:
        why = "it names more than one kind of thing (find each with its own LOC, then UNION them)"
    else:
        why = "it names nothing"
    raise ModuleError(f"the photo pack's LOC cannot find '{phrase}': {why}; it finds faces, people, hands and "
                      f"text ({known})")


class Loc(CpuModel):
    """The photo pack's LOC over its shared detectors (one load of each model per process)."""

    code_version = CODE_VERSION
    packages = ("mediapipe", "rapidocr", "onnxruntime")
    vocabulary = LOC_VOCABULARY

    def __init__(self) -> None:
        super().__init__()
        self.signature = LOC_SIG

    def model_files(self) -> list[Path]:
        return [*face_files(), *people_files(), *hands_files(), *text_files()]

    def _open(self) -> None:
        return None  # each finder opens on its first call, and SEG's use of it opens it for both

    def warmup(self) -> None:
        blank = ImageValue(Image.new("RGB", (256, 256), (128, 128, 128)), "sha256:warmup")
        for kind in FINDERS:
            self.forward([{"image": blank, "object": kind}])

    def _one(self, args: dict[str, Any]) -> Objects:
        image = image_of(args, "LOC")
        phrase = str(args.get("object", "object"))
        kind, word = category(phrase)
        items = FINDERS[kind](image)
        if word not in (kind, kind + "s", "people"):
            # Say how the word was read: this pack finds people, not men or girls.
            note = f"'{word}' read as {kind}: the photo pack cannot tell more than that"
            items = [replace(o, attributes={**o.attributes, "matched": note}) for o in items]
        return Objects(tuple(items), image.key, (image.width, image.height))


def modules() -> list[Module]:
    return [Loc()]
