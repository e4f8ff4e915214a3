"""nsx programs as trees, and their text: what questions and CLEVR's imported programs are made of.

A program is an :class:`Answer` over :class:`Call` trees (``Call('COUNT', (Call('FILTER', (scene,
'red')),))``), rendered by :func:`render` in one of two styles, both compiled by the same
compiler: ``nested`` (direct statements, nested calls, real expressions) and ``visprog`` (one call
a line, ``EVAL`` and ``RESULT``). Phrases are written in the world's own concept words ('large red
striped circle', :func:`phrase`), so no program needs the text model to map a word; answers are
spelled one way (:func:`normalize_answer`) so a program's and the ground truth's can be compared.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..vocab import WORD_ORDER

STYLES: tuple[str, ...] = ("nested", "visprog")

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


def _leaf(node: Arg, names: dict[Call, str]) -> str | None:
    """How a renderer writes the image, a phrase, or a call it has already named; None for a new call."""
    if isinstance(node, _Image):
        return "IMAGE"
    if isinstance(node, str):
        return _quote(node)
    return names.get(node)


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
        leaf = _leaf(node, names)
        if leaf is not None:
            return leaf
        assert isinstance(node, Call)
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
        leaf = _leaf(node, names)
        if leaf is not None:
            return leaf
        assert isinstance(node, Call)
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
