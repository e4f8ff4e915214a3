"""CLEVR-style questions over shapes scenes: each with its nsx program and its answer.

Answers come from the scene's ground truth alone (``truth['objects']`` and CLEVR-style
``truth['relationships']``), never from running a module, so they can grade the modules. The same
programs can also be run over ground truth by ``reference.reference_answer``, a small symbolic
executor written apart from the generator: when the two agree, the program says what the answer
assumes. Programs are built as trees and rendered by ``programs.render``.

Families, kept in equal numbers (within one) by :func:`generate_questions`:

- ``exist``: Is there a large red circle?
- ``count``: How many striped objects are there?
- ``query``: What color is the small square?  (the object described is unique in the scene)
- ``compare``: Are there more red objects than circles?  (more / fewer / the same number)
- ``same``: How many other objects have the same color as the star?  Is there another …?
  Does the red circle have the same size as the blue square?
- ``relate_1``: How many circles are left of the red star?  (count, exist or query)
- ``relate_2``: What color is the object above the circle that is left of the red star?
- ``and_or``: How many objects are either red objects or squares?  Is there a … that is also a …?

Only well-posed questions are made: every anchor, every object a question asks about, and the
middle object of a two-hop chain is the only one in the scene its description fits. Yes/no answers
are balanced by drawing the wanted answer first; counts of zero are drawn less often than others.
Answers are normalised by ``programs.normalize_answer``: ``yes``/``no``, whole numbers, attribute
words.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ..vocab import RELATIONS, WORD_ORDER
from .descriptions import SceneTruth, random_description, unique_description
from .programs import IMAGE_INPUT, STYLES, Answer, Call, Desc, normalize_answer, phrase, render, scene_call

FAMILIES: tuple[str, ...] = ("exist", "count", "query", "compare", "same", "relate_1", "relate_2", "and_or")
RELATION_TEXT: dict[str, str] = {"left": "left of", "right": "right of", "above": "above", "below": "below"}


# ----------------------------------------------------------------------------- words


def noun_phrase(desc: Desc, plural: bool = False) -> str:
    """The question's words for a description ('large red circles', 'striped objects')."""
    text = phrase(desc)
    return text + "s" if plural else text


def _a(text: str) -> str:
    return ("an " if text[:1] in "aeiou" else "a ") + text


# ----------------------------------------------------------------------------- questions


@dataclass(frozen=True)
class Question:
    """One question about one scene. ``objects`` are the indices (in the scene's truth) of the objects
    the question singles out (anchors, the object asked about): where a diagnosis should look first."""

    id: str
    scene: int
    family: str
    form: str  # count | exist | query | more | fewer | equal | count_same | exist_same | equal_attribute …
    question: str
    program: str
    answer: str
    style: str
    objects: tuple[int, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["objects"] = list(self.objects)
        return d


@dataclass(frozen=True)
class _Draft:
    family: str
    form: str
    text: str
    answer: Answer
    value: Any
    objects: tuple[int, ...] = ()


def _filtered(desc: Desc, base: Call | None = None) -> Call:
    base = base or scene_call()
    return base if not desc else Call("FILTER", (base, phrase(desc)))


def _located(desc: Desc, rng: np.random.Generator) -> Call:
    """The objects a description fits: FILTER over the whole scene, or, now and then, LOC with the
    phrase (the same set by the modules' contract; both forms should be graded)."""
    if desc and rng.uniform() < 0.3:
        return Call("LOC", (IMAGE_INPUT, phrase(desc)))
    return _filtered(desc)


def _the(desc: Desc) -> str:
    return "the " + noun_phrase(desc)


def _want_yes(rng: np.random.Generator) -> bool:
    return bool(rng.uniform() < 0.5)


def _count_ok(n: int, rng: np.random.Generator) -> bool:
    """Zero is the answer random descriptions give most; keep about one zero for every few others."""
    return n > 0 or rng.uniform() < 0.35


_TRIES = 24


def _q_exist(t: SceneTruth, rng: np.random.Generator) -> _Draft | None:
    want = _want_yes(rng)
    for _ in range(_TRIES):
        desc = random_description(t, rng)
        found = t.select(t.all, desc)
        if bool(found) == want:
            text = rng.choice([f"Is there {_a(noun_phrase(desc))}?", f"Are there any {noun_phrase(desc, True)}?"])
            return _Draft("exist", "exist", str(text), Answer("yesno", (Call("EXISTS", (_located(desc, rng),)),)),
                          bool(found))
    return None


def _q_count(t: SceneTruth, rng: np.random.Generator) -> _Draft | None:
    for _ in range(_TRIES):
        desc = random_description(t, rng, allow_empty=True)
        n = len(t.select(t.all, desc))
        if _count_ok(n, rng):
            text = f"How many {noun_phrase(desc, True)} are there?"
            return _Draft("count", "count", text, Answer("value", (Call("COUNT", (_located(desc, rng),)),)), n)
    return None


def _query_text(attribute: str, subject: str) -> str:
    if attribute == "material":
        return f"What material is {subject}?"
    if attribute == "size":
        return f"What size is {subject}?"
    return f"What {attribute} is {subject}?"


def _q_query(t: SceneTruth, rng: np.random.Generator) -> _Draft | None:
    for _ in range(_TRIES):
        target = int(rng.integers(t.n))
        attribute = WORD_ORDER[int(rng.integers(4))]
        desc = unique_description(t, target, t.all, rng, exclude=[attribute])
        if desc is None:
            continue
        obj = Call("UNIQUE", (_located(desc, rng),))
        return _Draft("query", "query", _query_text(attribute, _the(desc)),
                      Answer("value", (Call("QUERY", (obj, attribute)),)), t.value(target, attribute), (target,))
    return None


def _q_compare(t: SceneTruth, rng: np.random.Generator) -> _Draft | None:
    form = str(rng.choice(["more", "fewer", "equal"]))
    want = _want_yes(rng)
    for _ in range(_TRIES * 2):
        a, b = random_description(t, rng), random_description(t, rng)
        if phrase(a) == phrase(b):
            continue
        na, nb = len(t.select(t.all, a)), len(t.select(t.all, b))
        if na == nb == 0:
            continue  # 'more red circles than stars' in a scene with neither says little
        value = {"more": na > nb, "fewer": na < nb, "equal": na == nb}[form]
        if value != want:
            continue
        pa, pb = noun_phrase(a, True), noun_phrase(b, True)
        text = {"more": f"Are there more {pa} than {pb}?", "fewer": f"Are there fewer {pa} than {pb}?",
                "equal": f"Are there the same number of {pa} and {pb}?"}[form]
        op = {"more": ">", "fewer": "<", "equal": "=="}[form]
        counts = (Call("COUNT", (_filtered(a),)), Call("COUNT", (_filtered(b),)))
        return _Draft("compare", form, text, Answer("compare", counts, op), value)
    return None


def _same_text(attribute: str) -> str:
    return {"size": "the same size as", "color": "the same color as", "shape": "the same shape as",
            "material": "the same material as"}[attribute]


def _q_same(t: SceneTruth, rng: np.random.Generator) -> _Draft | None:
    form = str(rng.choice(["count_same", "exist_same", "equal_attribute"], p=[0.4, 0.3, 0.3]))
    want = _want_yes(rng)
    for _ in range(_TRIES):
        attribute = WORD_ORDER[int(rng.integers(4))]
        target = int(rng.integers(t.n))
        # Naming the attribute in the description would give the answer away (CLEVR's rule too).
        desc = unique_description(t, target, t.all, rng, exclude=[attribute])
        if desc is None:
            continue
        obj = Call("UNIQUE", (_filtered(desc),))
        same = tuple(i for i in t.all if i != target and t.value(i, attribute) == t.value(target, attribute))
        if form == "count_same":
            if not _count_ok(len(same), rng):
                continue
            text = f"How many other objects are {_same_text(attribute)} {_the(desc)}?"
            call = Call("COUNT", (Call("SAME", (obj, attribute, scene_call())),))
            return _Draft("same", form, text, Answer("value", (call,)), len(same), (target,))
        if form == "exist_same":
            if bool(same) != want:
                continue
            text = f"Is there another object that is {_same_text(attribute)} {_the(desc)}?"
            call = Call("EXISTS", (Call("SAME", (obj, attribute, scene_call())),))
            return _Draft("same", form, text, Answer("yesno", (call,)), bool(same), (target,))
        if t.n < 2:
            return None
        other = int(rng.choice([i for i in t.all if i != target]))
        desc2 = unique_description(t, other, t.all, rng, exclude=[attribute])
        if desc2 is None or phrase(desc2) == phrase(desc):
            continue
        value = t.value(target, attribute) == t.value(other, attribute)
        if value != want:
            continue
        noun = {"size": "size", "color": "color", "shape": "shape", "material": "material"}[attribute]
        text = f"Does {_the(desc)} have the same {noun} as {_the(desc2)}?"
        obj2 = Call("UNIQUE", (_filtered(desc2),))
        ops = (Call("QUERY", (obj, attribute)), Call("QUERY", (obj2, attribute)))
        return _Draft("same", form, text, Answer("compare", ops, "=="), value, (target, other))
    return None


def _about(t: SceneTruth, rng: np.random.Generator, family: str, candidates: tuple[int, ...], box: Call,
           where: str, objects: tuple[int, ...]) -> _Draft | None:
    """The last part of a relate question: count, exist or query over ``candidates`` (the objects
    ``where`` says, before any description): ``box`` builds the program's set from a base set."""
    form = str(rng.choice(["count", "exist", "query"], p=[0.35, 0.3, 0.35]))
    if form == "query":
        if not candidates:
            return None
        target = int(rng.choice(candidates))
        attribute = WORD_ORDER[int(rng.integers(4))]
        desc = unique_description(t, target, candidates, rng, exclude=[attribute], allow_empty=True)
        if desc is None:
            return None
        call = Call("QUERY", (Call("UNIQUE", (_relate_from(box, desc),)), attribute))
        subject = f"the {noun_phrase(desc)} {where}"
        return _Draft(family, form, _query_text(attribute, subject), Answer("value", (call,)),
                      t.value(target, attribute), (*objects, target))
    want = _want_yes(rng)
    for _ in range(8):
        desc = random_description(t, rng, among=candidates or None, allow_empty=True)
        found = t.select(candidates, desc)
        if form == "count" or bool(found) == want:
            break
    else:
        return None
    if form == "count":
        if not _count_ok(len(found), rng):
            return None
        text = f"How many {noun_phrase(desc, True)} are {where}?"
        return _Draft(family, form, text, Answer("value", (Call("COUNT", (_relate_from(box, desc),)),)), len(found),
                      objects)
    text = f"Is there {_a(noun_phrase(desc))} {where}?"
    return _Draft(family, form, text, Answer("yesno", (Call("EXISTS", (_relate_from(box, desc),)),)), bool(found),
                  objects)


def _relate_from(box: Call, desc: Desc) -> Call:
    """``box`` is RELATE over the whole scene; a description filters its candidates first."""
    assert box.fn == "RELATE"
    return Call("RELATE", (_filtered(desc), *box.args[1:]))


def _q_relate_1(t: SceneTruth, rng: np.random.Generator) -> _Draft | None:
    for _ in range(_TRIES):
        anchor = int(rng.integers(t.n))
        relation = RELATIONS[int(rng.integers(4))]
        desc = unique_description(t, anchor, t.all, rng)
        if desc is None:
            continue
        box = Call("RELATE", (scene_call(), Call("UNIQUE", (_filtered(desc),)), relation))
        where = f"{RELATION_TEXT[relation]} {_the(desc)}"
        draft = _about(t, rng, "relate_1", t.related(anchor, relation), box, where, (anchor,))
        if draft is not None:
            return draft
    return None


def _q_relate_2(t: SceneTruth, rng: np.random.Generator) -> _Draft | None:
    for _ in range(_TRIES):
        anchor = int(rng.integers(t.n))
        r1, r2 = RELATIONS[int(rng.integers(4))], RELATIONS[int(rng.integers(4))]
        adesc = unique_description(t, anchor, t.all, rng)
        if adesc is None:
            continue
        first = t.related(anchor, r1)
        if not first:
            continue
        middle = int(rng.choice(first))
        # The middle object is named among the objects the first hop finds (CLEVR's chain), so it may
        # be 'the circle left of the red star' even with other circles elsewhere.
        mdesc = unique_description(t, middle, first, rng, allow_empty=True)
        if mdesc is None:
            continue
        hop1 = Call("RELATE", (_filtered(mdesc), Call("UNIQUE", (_filtered(adesc),)), r1))
        box = Call("RELATE", (scene_call(), Call("UNIQUE", (hop1,)), r2))
        where = f"{RELATION_TEXT[r2]} the {noun_phrase(mdesc)} that is {RELATION_TEXT[r1]} {_the(adesc)}"
        draft = _about(t, rng, "relate_2", t.related(middle, r2), box, where, (anchor, middle))
        if draft is not None:
            return draft
    return None


def _q_and_or(t: SceneTruth, rng: np.random.Generator) -> _Draft | None:
    op = str(rng.choice(["union", "intersect"]))
    form = str(rng.choice(["count", "exist"]))
    want = _want_yes(rng)
    for _ in range(_TRIES * 2):
        a = random_description(t, rng)
        if op == "intersect" and rng.uniform() < 0.6:
            # Two descriptions of one object: an intersection that is often, not always, empty.
            o = int(rng.integers(t.n))
            attrs = [x for x in WORD_ORDER if x not in a]
            if not attrs:
                continue
            b = {x: t.value(o, x) for x in attrs[:1 + int(rng.integers(min(2, len(attrs))))]}
        else:
            b = random_description(t, rng)
        if phrase(a) == phrase(b):
            continue
        sa, sb = set(t.select(t.all, a)), set(t.select(t.all, b))
        found = sa | sb if op == "union" else sa & sb
        if form == "exist" and bool(found) != want:
            continue
        if form == "count" and not _count_ok(len(found), rng):
            continue
        fn = "UNION" if op == "union" else "INTERSECT"
        both = Call(fn, (_filtered(a), _filtered(b)))
        pa, pb = noun_phrase(a, True), noun_phrase(b, True)
        if form == "count":
            text = (f"How many objects are either {pa} or {pb}?" if op == "union"
                    else f"How many {pa} are also {pb}?")
            return _Draft("and_or", f"{op}_count", text, Answer("value", (Call("COUNT", (both,)),)), len(found))
        text = (f"Are there any objects that are either {pa} or {pb}?" if op == "union"
                else f"Is there {_a(noun_phrase(a))} that is also {_a(noun_phrase(b))}?")
        return _Draft("and_or", f"{op}_exist", text, Answer("yesno", (Call("EXISTS", (both,)),)), bool(found))
    return None


_MAKERS = {
    "exist": _q_exist, "count": _q_count, "query": _q_query, "compare": _q_compare, "same": _q_same,
    "relate_1": _q_relate_1, "relate_2": _q_relate_2, "and_or": _q_and_or,
}


def question_for(truth: Mapping[str, Any], family: str, rng: np.random.Generator, style: str = "nested",
                 scene: int = 0, qid: str = "") -> Question | None:
    """One question of ``family`` about a scene, or None when the scene has none to offer
    (a query needs an object some description singles out, a two-hop chain a middle object …)."""
    if family not in _MAKERS:
        raise ValueError(f"unknown question family {family!r}; one of {', '.join(FAMILIES)}")
    t = SceneTruth(truth)
    if t.n == 0:
        return None
    draft = _MAKERS[family](t, rng)
    if draft is None:
        return None
    return Question(qid, scene, draft.family, draft.form, draft.text, render(draft.answer, style),
                    normalize_answer(draft.value), style, draft.objects)


def generate_questions(scenes: Iterable[tuple[int, Mapping[str, Any]]], n: int, seed: int,
                       per_scene: int = 5, families: Sequence[str] = FAMILIES,
                       styles: Sequence[str] = STYLES) -> list[Question]:
    """``n`` questions over ``(scene id, truth)`` pairs, taken in order and as many as needed, at most
    ``per_scene`` from each. Families take turns, the one furthest behind first, so their counts end
    within one of each other; a family a scene cannot serve passes to the next one. The same seed and
    scenes give the same questions."""
    if n < 0 or per_scene < 1:
        raise ValueError("need n >= 0 and per_scene >= 1")
    families = list(families)
    for f in families:
        if f not in _MAKERS:
            raise ValueError(f"unknown question family {f!r}; one of {', '.join(FAMILIES)}")
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x51]))
    made = dict.fromkeys(families, 0)
    out: list[Question] = []
    it: Iterator[tuple[int, Mapping[str, Any]]] = iter(scenes)
    barren = 0
    while len(out) < n:
        try:
            scene_id, truth = next(it)
        except StopIteration:
            raise ValueError(f"ran out of scenes after {len(out)} of {n} questions") from None
        asked: set[str] = set()
        used: set[str] = set()
        before = len(out)
        for _ in range(per_scene):
            if len(out) >= n:
                break
            # Behind-most first; a random key settles ties, so no family is always served first.
            order = sorted(families, key=lambda f: (made[f], f in used, float(rng.uniform())))
            for family in order:
                style = str(styles[int(rng.integers(len(styles)))])
                q = question_for(truth, family, rng, style, scene_id, f"{seed}-{len(out)}")
                if q is None or q.program in asked:
                    continue
                asked.add(q.program)
                used.add(family)
                made[family] += 1
                out.append(q)
                break
        barren = barren + 1 if len(out) == before else 0
        if barren > 1000:
            raise ValueError("a thousand scenes in a row gave no question; are they empty?")
    return out


def family_counts(questions: Iterable[Question]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for q in questions:
        counts[q.family] = counts.get(q.family, 0) + 1
    return counts
