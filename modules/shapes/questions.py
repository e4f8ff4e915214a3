"""CLEVR-style questions over shapes scenes: each with its nsx program and its answer.

Answers come from the scene's ground truth alone (``truth['objects']`` and CLEVR-style
``truth['relationships']``), never from running a module, so they can grade the modules. The same
programs can also be run over ground truth by :func:`reference_answer`, a small symbolic executor
written apart from the generator (it reads the compiled program and uses object centres rather than
``relationships``): when the two agree, the program says what the answer assumes.

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
Answers are normalised by :func:`normalize_answer`: ``yes``/``no``, whole numbers, attribute words.

Programs are written in one of two styles, both compiled by the same compiler: ``nested`` (direct
statements, nested calls, real expressions) and ``visprog`` (one call a line, ``EVAL`` and
``RESULT``). Phrases use the world's own concept words only ('large red striped circle'), so no
program needs the text model to map a word.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import Any

import numpy as np

from .world import ATTRIBUTES, RELATIONS

FAMILIES: tuple[str, ...] = ("exist", "count", "query", "compare", "same", "relate_1", "relate_2", "and_or")
STYLES: tuple[str, ...] = ("nested", "visprog")
WORD_ORDER: tuple[str, ...] = ("size", "color", "material", "shape")  # 'large red striped circle'
RELATION_TEXT: dict[str, str] = {"left": "left of", "right": "right of", "above": "above", "below": "below"}

Desc = Mapping[str, str]  # attribute → value: what a phrase asks of an object


# ----------------------------------------------------------------------------- programs as trees


class _Image:
    """The program's input image (``IMAGE``)."""

    def __repr__(self) -> str:
        return "IMAGE"


IMAGE_INPUT = _Image()


@dataclass(frozen=True)
class Call:
    """A module call; ``args`` are in the module's parameter order: calls, texts or ``IMAGE_INPUT``."""

    fn: str
    args: tuple[Any, ...]


@dataclass(frozen=True)
class Answer:
    """How the program's answer comes from its calls: the value of ``operands[0]`` (``value``), 'yes'
    if it is true (``yesno``), or 'yes' if ``operands[0] op operands[1]`` (``compare``)."""

    kind: str
    operands: tuple[Call, ...]
    op: str = ""


Arg = Call | str | _Image

# Parameter names, in order, of the modules questions use (tests check them against the catalog).
PARAMS: dict[str, tuple[str, ...]] = {
    "LOC": ("image", "object"), "FILTER": ("box", "value"), "QUERY": ("box", "attribute"),
    "RELATE": ("box", "anchor", "relation"), "SAME": ("box", "attribute", "scene"), "UNIQUE": ("box",),
    "COUNT": ("box",), "EXISTS": ("box",), "UNION": ("left", "right"), "INTERSECT": ("left", "right"),
    "DIFFERENCE": ("left", "right"),
}
OBJECT_FUNCTIONS = frozenset({"LOC", "FILTER", "RELATE", "SAME", "UNIQUE", "UNION", "INTERSECT", "DIFFERENCE"})
COMPARISONS = frozenset({"==", "!=", "<", ">", "<=", ">="})
_RESERVED = frozenset({"and", "or", "not", "xor", "if", "else", "in", "True", "False", "None",
                       "IMAGE", "LEFT", "RIGHT"})


def scene_call() -> Call:
    """Every object in the image: the set most questions start from."""
    return Call("LOC", (IMAGE_INPUT, "object"))


def _quote(text: str) -> str:
    if "'" in text or "\\" in text or "\n" in text:
        raise ValueError(f"a phrase cannot hold quotes, backslashes or newlines: {text!r}")
    return f"'{text}'"


def render(answer: Answer, style: str = "nested") -> str:
    """The program text for ``answer`` in one of :data:`STYLES`."""
    if answer.kind not in ("value", "yesno", "compare"):
        raise ValueError(f"unknown answer kind {answer.kind!r}")
    if answer.kind == "compare" and answer.op not in COMPARISONS:
        raise ValueError(f"unknown comparison {answer.op!r}")
    if style == "nested":
        return _render_nested(answer)
    if style == "visprog":
        return _render_visprog(answer)
    raise ValueError(f"unknown program style {style!r}; one of {', '.join(STYLES)}")


def _walk(node: Arg, seen: dict[Call, int]) -> None:
    if isinstance(node, Call):
        seen[node] = seen.get(node, 0) + 1
        if seen[node] == 1:
            for a in node.args:
                _walk(a, seen)


def _phrase_of(node: Call) -> str | None:
    """The phrase that picks out the object of UNIQUE(FILTER(_, phrase)), for naming its variable."""
    if node.fn == "UNIQUE" and isinstance(node.args[0], Call) and node.args[0].fn in ("FILTER", "LOC"):
        phrase = node.args[0].args[1]
        return phrase if isinstance(phrase, str) else None
    return None


_NAMED_ARGS = frozenset({"RELATE", "SAME"})


def _render_nested(answer: Answer) -> str:
    uses: dict[Call, int] = {}
    for op in answer.operands:
        _walk(op, uses)
    names: dict[Call, str] = {}
    taken: set[str] = set()
    lines: list[str] = []

    def name_for(node: Call) -> str:
        if node == scene_call():
            base = "scene"
        else:
            phrase = _phrase_of(node)
            words = re.sub(r"[^a-z ]", "", phrase or "").split()
            base = "_".join(w for w in words if w != "object") or "obj"
        name, k = base, 2
        while name in taken or name in _RESERVED:
            name, k = f"{base}{k}", k + 1
        taken.add(name)
        return name

    def expr(node: Arg) -> str:
        if isinstance(node, _Image):
            return "IMAGE"
        if isinstance(node, str):
            return _quote(node)
        if node in names:
            return names[node]
        if node.fn in _NAMED_ARGS:
            # RELATE's and SAME's later arguments are easy to swap by mistake: name them for the reader.
            params = PARAMS[node.fn]
            parts = [expr(node.args[0])] + [f"{p}={expr(a)}" for p, a in zip(params[1:], node.args[1:])]
        else:
            parts = [expr(a) for a in node.args]
        text = f"{node.fn}({', '.join(parts)})"
        # Shared sets and the objects a question singles out get names: the trace then reads like the question.
        if uses.get(node, 0) > 1 or node.fn == "UNIQUE":
            names[node] = name_for(node)
            lines.append(f"{names[node]} = {text}")
            return names[node]
        return text

    ops = [expr(o) for o in answer.operands]
    if answer.kind == "value":
        lines.append(f"answer = {ops[0]}")
    elif answer.kind == "yesno":
        lines.append(f"answer = 'yes' if {ops[0]} else 'no'")
    else:
        lines.append(f"answer = 'yes' if {ops[0]} {answer.op} {ops[1]} else 'no'")
    return "\n".join(lines) + "\n"


def _render_visprog(answer: Answer) -> str:
    names: dict[Call, str] = {}
    counters = {"BOX": 0, "ANSWER": 0}
    lines: list[str] = []

    def var(node: Arg) -> str:
        if isinstance(node, _Image):
            return "IMAGE"
        if isinstance(node, str):
            return _quote(node)
        if node in names:
            return names[node]
        args = ",".join(f"{p}={var(a)}" for p, a in zip(PARAMS[node.fn], node.args))
        prefix = "BOX" if node.fn in OBJECT_FUNCTIONS else "ANSWER"
        name = f"{prefix}{counters[prefix]}"
        counters[prefix] += 1
        names[node] = name
        lines.append(f"{name}={node.fn}({args})")
        return name

    ops = [var(o) for o in answer.operands]
    if answer.kind == "value":
        final = ops[0]
    else:
        cond = f"{{{ops[0]}}}" if answer.kind == "yesno" else f"{{{ops[0]}}} {answer.op} {{{ops[1]}}}"
        final = f"ANSWER{counters['ANSWER']}"
        lines.append(f"{final}=EVAL(expr=\"'yes' if {cond} else 'no'\")")
    lines.append(f"FINAL_RESULT=RESULT(var={final})")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- words


def phrase(desc: Desc) -> str:
    """The program's phrase for a description: 'large red striped circle', 'red object', 'object'."""
    words = [desc[a] for a in WORD_ORDER if a in desc]
    return " ".join(words + ([] if "shape" in desc else ["object"]))


def noun_phrase(desc: Desc, plural: bool = False) -> str:
    """The question's words for a description ('large red circles', 'striped objects')."""
    text = phrase(desc)
    return text + "s" if plural else text


def _a(text: str) -> str:
    return ("an " if text[:1] in "aeiou" else "a ") + text


def normalize_answer(value: Any) -> str:
    """One spelling per answer: booleans as yes/no, whole numbers without a decimal point, words in
    lower case. ``None`` (no answer) stays distinct from every real answer."""
    if value is None:
        return "<none>"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return str(int(value)) if float(value).is_integer() else f"{float(value):g}"
    text = str(value).strip().lower()
    if text in ("true", "false"):
        return "yes" if text == "true" else "no"
    try:
        number = float(text)
    except ValueError:
        return text
    return str(int(number)) if number.is_integer() else text


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


class SceneTruth:
    """A scene's ground truth, read the way CLEVR's question engine reads its scenes."""

    def __init__(self, truth: Mapping[str, Any]) -> None:
        self.objects: list[Mapping[str, Any]] = list(truth["objects"])
        self.n = len(self.objects)
        self.all = tuple(range(self.n))
        self.rel: Mapping[str, list[list[int]]] = truth["relationships"]

    def select(self, ids: Iterable[int], desc: Desc) -> tuple[int, ...]:
        return tuple(i for i in ids if all(self.objects[i][a] == v for a, v in desc.items()))

    def related(self, anchor: int, relation: str) -> tuple[int, ...]:
        return tuple(sorted(self.rel[relation][anchor]))

    def value(self, i: int, attribute: str) -> str:
        return str(self.objects[i][attribute])


def _subsets(attrs: Sequence[str]) -> list[tuple[str, ...]]:
    return [c for k in range(len(attrs) + 1) for c in itertools.combinations(attrs, k)]


def unique_description(truth: SceneTruth, target: int, among: Sequence[int], rng: np.random.Generator,
                       exclude: Iterable[str] = (), allow_empty: bool = False) -> dict[str, str] | None:
    """A description of ``target`` that fits no other object of ``among``, or None when none does
    (two objects alike in every attribute that may be named). Shorter descriptions are likelier, as
    people use them, but longer ones appear too so every attribute word is exercised."""
    attrs = [a for a in WORD_ORDER if a not in set(exclude)]
    fits = []
    for subset in _subsets(attrs):
        if not subset and not allow_empty:
            continue
        desc = {a: truth.value(target, a) for a in subset}
        if truth.select(among, desc) == (target,):
            fits.append(desc)
    if not fits:
        return None
    shortest = min(len(d) for d in fits)
    weights = np.array([1.0 / (1 + len(d) - shortest) ** 2 for d in fits])
    return fits[int(rng.choice(len(fits), p=weights / weights.sum()))]


def random_description(truth: SceneTruth, rng: np.random.Generator, among: Sequence[int] | None = None,
                       allow_empty: bool = False) -> dict[str, str]:
    """A description for a filter: usually some attributes of an object that is there (so sets are
    seldom empty), sometimes values drawn at random (so some are)."""
    among = truth.all if among is None else among
    if allow_empty and rng.uniform() < 0.15:
        return {}
    k = int(rng.choice([1, 2, 3], p=[0.45, 0.4, 0.15]))
    attrs = sorted(rng.choice(len(WORD_ORDER), size=k, replace=False))
    names = [WORD_ORDER[i] for i in attrs]
    if among and rng.uniform() < 0.75:
        o = int(rng.choice(among))
        return {a: truth.value(o, a) for a in names}
    return {a: str(ATTRIBUTES[a][int(rng.integers(len(ATTRIBUTES[a])))]) for a in names}


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
                      t.value(target, attribute), objects + (target,))
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
    return Call("RELATE", (_filtered(desc),) + box.args[1:])


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
    made = {f: 0 for f in families}
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


# ----------------------------------------------------------------------------- reference executor


class ReferenceError(ValueError):
    """A program has no answer over this ground truth (e.g. UNIQUE of two objects), or uses a module
    or a word the reference does not know."""


_PLURALS = {v + "s": (a, v) for a, vs in ATTRIBUTES.items() for v in vs if a == "shape"}
_VOCAB = {v: (a, v) for a, vs in ATTRIBUTES.items() for v in vs} | _PLURALS
_NEUTRAL = frozenset({"object", "objects", "thing", "things", "the", "a", "an"})


def parse_phrase(text: str) -> dict[str, str]:
    """A phrase of the world's own words → what it asks for. Written apart from the concepts layer on
    purpose: the reference must not share the modules' code. Synonyms are refused, not guessed."""
    out: dict[str, str] = {}
    for w in re.split(r"[^a-z]+", text.lower()):
        if not w or w in _NEUTRAL:
            continue
        if w not in _VOCAB:
            raise ReferenceError(f"the reference knows only the world's own words, not {w!r}")
        a, v = _VOCAB[w]
        if out.get(a, v) != v:
            raise ReferenceError(f"phrase {text!r} names two values of {a}")
        out[a] = v
    return out


# Relation → (axis, sign): 'left of the anchor' is a smaller x, 'below' a larger y (image rows grow downwards).
_SIDE: dict[str, tuple[int, int]] = {"left": (0, -1), "right": (0, 1), "above": (1, -1), "below": (1, 1)}


def _centre(o: Mapping[str, Any]) -> tuple[float, float]:
    if "center" in o:
        return float(o["center"][0]), float(o["center"][1])
    x1, y1, x2, y2 = o["box"]
    return (x1 + x2) / 2, (y1 + y2) / 2


@lru_cache(maxsize=1)
def default_catalog() -> Any:
    """The core and shapes packs' catalog (signatures only: nothing is loaded)."""
    from ..packs import build_catalog, load_packs

    return build_catalog(load_packs(["core", "shapes"]))


def reference_answer(program: str | Any, truth: Mapping[str, Any], catalog: Any = None,
                     relations: str = "centres") -> str:
    """Run a compiled program (or its text) over a scene's ground truth, symbolically: LOC and FILTER
    select by exact attributes, RELATE compares object centres (or, with ``relations='truth'``, reads
    ``truth['relationships']``, as for CLEVR's scenes, whose relations come from 3-D positions), and
    so on; EVAL runs in the language's own evaluator. Returns the normalised answer; raises
    ReferenceError where the program has none."""
    from program_dsl import IMAGE, Const, EvalError, Input, Plan, Ref, compile_program, evaluate_text

    plan: Plan = program if isinstance(program, Plan) else compile_program(
        program, catalog or default_catalog(), {"IMAGE": IMAGE})
    if relations not in ("centres", "truth"):
        raise ValueError(f"relations is 'centres' or 'truth', not {relations!r}")
    objects = list(truth["objects"])
    centres = [_centre(o) for o in objects]
    everything = tuple(range(len(objects)))
    values: dict[str, Any] = {}

    def arg(src: Any) -> Any:
        if isinstance(src, Const):
            return src.value
        if isinstance(src, Ref):
            return values[src.step]
        if isinstance(src, Input):
            return IMAGE_INPUT
        raise ReferenceError(f"unknown argument {src!r}")

    def pick(ids: tuple[int, ...], text: str) -> tuple[int, ...]:
        want = parse_phrase(text)
        return tuple(i for i in ids if all(objects[i][a] == v for a, v in want.items()))

    def one(ids: Any, module: str) -> int:
        if not isinstance(ids, tuple) or len(ids) != 1:
            got = len(ids) if isinstance(ids, tuple) else repr(ids)
            raise ReferenceError(f"{module} needs exactly one object, got {got}")
        return int(ids[0])

    for step in plan.steps:
        a = {k: arg(v) for k, v in step.args.items()}
        m = step.module
        if m == "LOC":
            out: Any = pick(everything, str(a.get("object", "object")))
        elif m == "FILTER":
            out = pick(a["box"], a["value"])
        elif m == "UNIQUE":
            one(a["box"], "UNIQUE")
            out = a["box"]
        elif m == "QUERY":
            out = str(objects[one(a["box"], "QUERY")][a["attribute"]])
        elif m == "RELATE" and relations == "truth":
            k = one(a["anchor"], "RELATE")
            related = set(truth["relationships"][a["relation"]][k])
            out = tuple(i for i in a["box"] if i != k and i in related)
        elif m == "RELATE":
            k = one(a["anchor"], "RELATE")
            axis, sign = _SIDE[a["relation"]]
            out = tuple(i for i in a["box"] if i != k and sign * (centres[i][axis] - centres[k][axis]) > 0)
        elif m == "SAME":
            k = one(a["box"], "SAME")
            attr = a["attribute"]
            out = tuple(i for i in a["scene"] if i != k and objects[i][attr] == objects[k][attr])
        elif m == "COUNT":
            out = len(a["box"])
        elif m == "EXISTS":
            out = len(a["box"]) > 0
        elif m == "UNION":
            out = tuple(sorted(set(a["left"]) | set(a["right"])))
        elif m == "INTERSECT":
            out = tuple(i for i in a["left"] if i in set(a["right"]))
        elif m == "DIFFERENCE":
            out = tuple(i for i in a["left"] if i not in set(a["right"]))
        elif m == "EVAL":
            env = {k: v for k, v in a.items() if k != "expr"}
            if any(isinstance(v, tuple) for v in env.values()):
                raise ReferenceError("the reference evaluates expressions over numbers, texts and booleans only")
            try:
                out = evaluate_text(a["expr"], env)
            except EvalError as e:
                raise ReferenceError(f"EVAL failed: {e}") from e
        elif m == "RESULT":
            out = a["var"]
        else:
            raise ReferenceError(f"the reference has no rule for {m}")
        values[step.id] = out
    result = arg(plan.result)
    if isinstance(result, tuple):
        raise ReferenceError("the program's answer is a set of objects, not a value")
    return normalize_answer(result)
