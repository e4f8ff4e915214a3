"""CLEVR's programs as nsx programs for the shapes pack (``nsx import-clevr FILE``).

CLEVR writes a question's program as a list of nodes ``{function, inputs, value_inputs}`` (older
tools write ``filter_color[red]`` instead of a value list; both are read), each node's ``inputs``
being indices of earlier nodes, the last node the answer. Every function CLEVR's question templates
use has an equivalent here:

=====================================  ============================================================
CLEVR                                   nsx
=====================================  ============================================================
``scene``                               ``LOC(IMAGE, 'object')`` (one step, however often it appears)
``filter_<attribute>[v]``               ``FILTER(x, 'v')``
``unique``                              ``UNIQUE(x)``
``relate[r]``                           ``RELATE(scene, anchor=x, relation=r)``
``same_<attribute>``                    ``SAME(x, attribute=…, scene=scene)``
``union`` / ``intersect``               ``UNION`` / ``INTERSECT``
``count`` / ``exist``                   ``COUNT`` / ``'yes' if EXISTS(x) else 'no'``
``query_<attribute>``                   ``QUERY(x, '<attribute>')``
``equal_<attribute>``                   ``'yes' if a == b else 'no'``
``equal_integer``, ``less_than``,        ``'yes' if a == b else 'no'``, ``<``, ``>``
``greater_than``
=====================================  ============================================================

Words are mapped explicitly, here, to this world's concept words rather than left to the
words → concepts layer: the mapping is then exact, visible in the program, and needs no text model.
The layer itself would also read 'sphere', 'cube', 'rubber' and 'metal' the same way (they are
anchors of circle, square, solid and striped), but CLEVR's *cylinder* has no counterpart in a world
of flat shapes, and the nearest concept by embedding would be a guess that might merge it with
another CLEVR shape. So:

- shapes: sphere → circle, cube → square, cylinder → triangle (a shape CLEVR does not use, so
  CLEVR's three shapes stay three distinct concepts);
- materials: rubber → solid, metal → striped (as ``concepts.py`` reads them);
- colours and sizes: the same eight colours and two sizes (CLEVR's 'big' is a synonym of large);
- relations: left and right as they are; *front* → below and *behind* → above, as a camera looking
  down on the table sees them (the core pack reads CROP_FRONTOF and CROP_BEHIND the same way).

Answers are mapped with the same table ('cube' → 'square', 'rubber' → 'solid'). Functions with no
equivalent here (``equal_object``, anything unknown) and malformed programs are reported per
question, naming its index and the offending node, and the other questions are still converted.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from program_dsl import IMAGE, Catalog, ProgramError, compile_program

from ..vocab import ATTRIBUTES
from .programs import Answer, Call, normalize_answer, phrase, render, scene_call
from .reference import Unanswerable, default_catalog, parse_phrase, reference_answer

VALUE_MAP: dict[str, dict[str, str]] = {
    "shape": {"sphere": "circle", "cube": "square", "cylinder": "triangle"},
    "material": {"rubber": "solid", "metal": "striped"},
    "size": {"big": "large"},
    "color": {"grey": "gray"},
}
RELATION_MAP: dict[str, str] = {"left": "left", "right": "right", "front": "below", "behind": "above"}
CLEVR_ATTRIBUTES: tuple[str, ...] = ("color", "shape", "size", "material")

# Function → (input kinds, output kind). Kinds: objects, number, text, bool (an answer only).
_SIGNATURES: dict[str, tuple[tuple[str, ...], str]] = {
    "scene": ((), "objects"), "unique": (("objects",), "objects"), "relate": (("objects",), "objects"),
    "union": (("objects", "objects"), "objects"), "intersect": (("objects", "objects"), "objects"),
    "count": (("objects",), "number"), "exist": (("objects",), "bool"),
    "equal_integer": (("number", "number"), "bool"), "less_than": (("number", "number"), "bool"),
    "greater_than": (("number", "number"), "bool"),
    **{f"filter_{a}": (("objects",), "objects") for a in CLEVR_ATTRIBUTES},
    **{f"same_{a}": (("objects",), "objects") for a in CLEVR_ATTRIBUTES},
    **{f"query_{a}": (("objects",), "text") for a in CLEVR_ATTRIBUTES},
    **{f"equal_{a}": (("text", "text"), "bool") for a in CLEVR_ATTRIBUTES},
}
SUPPORTED: tuple[str, ...] = tuple(sorted(_SIGNATURES))
_COMPARE = {"equal_integer": "==", "less_than": "<", "greater_than": ">"}
_KIND_TEXT = {"objects": "objects", "number": "a number", "text": "an attribute value", "bool": "a yes/no answer"}


class ClevrError(ValueError):
    """A question that cannot be converted; the message names the question and, where there is one,
    the program node and its function."""

    def __init__(self, index: int | str, message: str, step: int | None = None, function: str | None = None,
                 image: str | None = None) -> None:
        self.index, self.step, self.function, self.image, self.reason = index, step, function, image, message
        where = f"question {index}" + (f" ({image})" if image else "")
        if step is not None:
            where += f", node {step}" + (f" '{function}'" if function else "")
        super().__init__(f"{where}: {message}")


@dataclass(frozen=True)
class Imported:
    """One converted question; ``answer`` is CLEVR's answer in this world's words."""

    index: int | str
    question: str
    image: str | None
    program: str
    answer: str | None
    clevr_answer: str | None
    family: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "question": self.question, "image": self.image, "answer": self.answer,
                "clevr_answer": self.clevr_answer, "family": self.family, "program": self.program}


def map_value(attribute: str, value: str) -> str | None:
    """CLEVR's word for a value of ``attribute`` → this world's, or None when it has none."""
    v = str(value).strip().lower()
    v = VALUE_MAP.get(attribute, {}).get(v, v)
    return v if v in ATTRIBUTES[attribute] else None


def map_answer(answer: Any) -> str:
    """CLEVR's answer in this world's words: 'cube' → 'square', 'rubber' → 'solid', 'yes', '3'."""
    text = normalize_answer(answer)
    for table in VALUE_MAP.values():
        if text in table:
            return table[text]
    return text


def _node_parts(node: Any) -> tuple[str, list[Any], list[Any]]:
    """(function, inputs, values) of a node in either of CLEVR's spellings."""
    if not isinstance(node, Mapping):
        raise TypeError(f"a program node must be an object, got {type(node).__name__}")
    fn = node.get("function", node.get("type"))
    if not isinstance(fn, str) or not fn:
        raise ValueError("a program node needs a 'function'")
    values = list(node.get("value_inputs", node.get("side_inputs", [])) or [])
    m = re.fullmatch(r"([a-z_]+)\[([^\]]*)\]", fn)
    if m:  # filter_color[red]: the value written into the name
        fn = m.group(1)
        values = values or [m.group(2)]
    inputs = node.get("inputs", [])
    if not isinstance(inputs, list):
        raise TypeError("'inputs' must be a list of node indices")
    return fn, inputs, values


def convert_program(nodes: Sequence[Any], index: int | str = 0, image: str | None = None) -> Answer:
    """CLEVR's node list → the answer tree (see :func:`programs.render`); raises ClevrError."""
    if not isinstance(nodes, Sequence) or isinstance(nodes, (str, bytes)) or not nodes:
        raise ClevrError(index, "has no program (CLEVR's test split ships none)", image=image)
    built: list[tuple[Any, str]] = []  # per node: its Call (or Answer for a yes/no), its kind
    for i, node in enumerate(nodes):
        try:
            fn, inputs, values = _node_parts(node)
        except (TypeError, ValueError) as e:
            raise ClevrError(index, str(e), i, image=image) from None

        def fail(message: str, fn: str = fn, i: int = i) -> ClevrError:
            return ClevrError(index, message, i, fn, image)

        if fn not in _SIGNATURES:
            raise fail(f"has no nsx equivalent; supported functions: {', '.join(SUPPORTED)}")
        kinds, out_kind = _SIGNATURES[fn]
        if len(inputs) != len(kinds):
            raise fail(f"takes {len(kinds)} input(s), got {len(inputs)}")
        args: list[Any] = []
        for j, (src, kind) in enumerate(zip(inputs, kinds)):
            if not isinstance(src, int) or isinstance(src, bool) or not 0 <= src < i:
                raise fail(f"input {j} is {src!r}, not the index of an earlier node (0..{i - 1})")
            value, got = built[src]
            if got != kind:
                raise fail(f"needs {_KIND_TEXT[kind]} as input {j}, but node {src} gives {_KIND_TEXT[got]}"
                           + (" (nsx compares only at the end of a program)" if got == "bool" else ""))
            args.append(value)
        needs_value = fn.startswith("filter_") or fn == "relate"
        if needs_value and len(values) != 1:
            raise fail(f"needs one value input, got {len(values)}")
        if fn == "scene":
            built.append((scene_call(), out_kind))
            continue
        if fn.startswith("filter_"):
            attribute = fn[len("filter_"):]
            word = map_value(attribute, str(values[0]))
            if word is None:
                raise fail(f"{attribute} {values[0]!r} is not one of CLEVR's or this world's "
                           f"({', '.join(ATTRIBUTES[attribute])})")
            built.append((_filter(args[0], attribute, word), out_kind))
        elif fn == "unique":
            built.append((Call("UNIQUE", (args[0],)), out_kind))
        elif fn == "relate":
            relation = RELATION_MAP.get(str(values[0]).strip().lower())
            if relation is None:
                raise fail(f"relation {values[0]!r} is not one of {', '.join(RELATION_MAP)}")
            built.append((Call("RELATE", (scene_call(), args[0], relation)), out_kind))
        elif fn.startswith("same_"):
            built.append((Call("SAME", (args[0], fn[len("same_"):], scene_call())), out_kind))
        elif fn in ("union", "intersect"):
            built.append((Call(fn.upper(), (args[0], args[1])), out_kind))
        elif fn == "count":
            built.append((Call("COUNT", (args[0],)), out_kind))
        elif fn == "exist":
            built.append((Answer("yesno", (Call("EXISTS", (args[0],)),)), out_kind))
        elif fn.startswith("query_"):
            built.append((Call("QUERY", (args[0], fn[len("query_"):])), out_kind))
        else:  # equal_<attribute>, equal_integer, less_than, greater_than
            built.append((Answer("compare", (args[0], args[1]), _COMPARE.get(fn, "==")), out_kind))
    last, kind = built[-1]
    if kind == "objects":
        raise ClevrError(index, "ends in a set of objects, not an answer", len(nodes) - 1,
                         _node_parts(nodes[-1])[0], image)
    return last if isinstance(last, Answer) else Answer("value", (last,))


def _filter(base: Call, attribute: str, word: str) -> Call:
    """FILTER, folding CLEVR's chains of one-attribute filters into one phrase ('large red circle'):
    one step instead of four, and the phrase reads like the question. Folded only while each
    attribute is named once, so the set is the same as the chain's."""
    if base.fn == "FILTER":
        desc = parse_phrase(str(base.args[1]))
        if attribute not in desc:
            return Call("FILTER", (base.args[0], phrase({**desc, attribute: word})))
    return Call("FILTER", (base, word))


def _questions(doc: Any) -> list[Any]:
    qs = doc.get("questions") if isinstance(doc, Mapping) else doc
    if not isinstance(qs, list):
        # A ValueError, not a TypeError: the file's content is wrong, not the caller's argument.
        raise ValueError("a CLEVR questions file is an object with a 'questions' list")
    return qs


def import_questions(doc: Any, style: str = "nested", catalog: Catalog | None = None,
                     limit: int | None = None) -> tuple[list[Imported], list[ClevrError]]:
    """Convert every question of a CLEVR questions document; those that cannot be are returned as
    errors beside the others. Each program is type-checked against the catalog (core + shapes by
    default), so a program that is returned compiles."""
    catalog = catalog or default_catalog()
    done: list[Imported] = []
    errors: list[ClevrError] = []
    for pos, q in enumerate(_questions(doc)[:limit]):
        if not isinstance(q, Mapping):
            errors.append(ClevrError(pos, f"is not an object but {type(q).__name__}"))
            continue
        index = q.get("question_index", pos)
        image = q.get("image_filename")
        try:
            program = render(convert_program(q.get("program") or [], index, image), style)
        except ClevrError as e:
            errors.append(e)
            continue
        try:
            compile_program(program, catalog, {"IMAGE": IMAGE})
        except ProgramError as e:
            errors.append(ClevrError(index, f"the converted program does not compile: {e}", image=image))
            continue
        answer = q.get("answer")
        done.append(Imported(index, str(q.get("question", "")), image, program,
                             None if answer is None else map_answer(answer),
                             None if answer is None else str(answer), q.get("question_family_index")))
    return done, errors


def scene_to_truth(scene: Mapping[str, Any]) -> dict[str, Any]:
    """A CLEVR scene annotation (from ``CLEVR_*_scenes.json``) in this world's ground-truth form, so
    :func:`reference.reference_answer` can answer imported programs on it: words mapped as above,
    centres from ``pixel_coords``, and CLEVR's own relationships with front/behind renamed."""
    objects = []
    for i, o in enumerate(scene["objects"]):
        obj: dict[str, Any] = {"id": i}
        for a in CLEVR_ATTRIBUTES:
            v = map_value(a, str(o[a]))
            if v is None:
                raise ValueError(f"object {i}: {a} {o[a]!r} has no counterpart here")
            obj[a] = v
        x, y = o.get("pixel_coords", [0, 0])[:2]
        obj["center"] = [float(x), float(y)]
        objects.append(obj)
    rel = scene.get("relationships", {})
    relationships = {RELATION_MAP[k]: v for k, v in rel.items() if k in RELATION_MAP}
    return {"objects": objects, "relationships": relationships, "image": scene.get("image_filename")}


# ----------------------------------------------------------------------------- command line


def _check_against_scenes(done: Sequence[Imported], path: Path) -> dict[int, str]:
    """Each converted program's answer over CLEVR's scene annotations (by the symbolic reference), keyed
    by ``id(item)``: where it is CLEVR's answer, the conversion kept the question's meaning."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        scenes = doc["scenes"] if isinstance(doc, Mapping) else doc
        by_name = {sc.get("image_filename"): scene_to_truth(sc) for sc in scenes}
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise SystemExit(f"nsx: {path} is not a CLEVR scenes file: {e}") from None
    out: dict[int, str] = {}
    for item in done:
        truth = by_name.get(item.image)
        if truth is None:
            out[id(item)] = f"<no scene {item.image}>"
            continue
        try:
            out[id(item)] = reference_answer(item.program, truth, relations="truth")
        except Unanswerable as e:
            out[id(item)] = f"<no answer: {e}>"
    return out


def _header(item: Imported) -> str:
    lines = [f"# CLEVR question {item.index}" + (f" ({item.image})" if item.image else "") + f": {item.question}"]
    if item.answer is not None:
        lines.append(f"# answer: {item.answer}" + (f" (CLEVR: {item.clevr_answer})"
                                                   if item.clevr_answer != item.answer else ""))
    return "\n".join(lines) + "\n"


def cmd_import_clevr(args: argparse.Namespace) -> int:
    """``nsx import-clevr FILE [--out DIR] [--style S] [--limit N] [--scenes FILE]``."""
    path = Path(args.file)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise SystemExit(f"nsx: cannot read {path}: {e.strerror}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SystemExit(f"nsx: {path} is not CLEVR's JSON: {e}") from None
    try:
        done, errors = import_questions(doc, args.style, limit=args.limit)
    except ValueError as e:
        raise SystemExit(f"nsx: {path}: {e}") from None
    checks: dict[int, str] = {}
    if args.scenes:
        checks = _check_against_scenes(done, Path(args.scenes))
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        index = []
        for item in done:
            name = f"q{item.index:06d}.nsx" if isinstance(item.index, int) else f"q{item.index}.nsx"
            (out / name).write_text(_header(item) + item.program, encoding="utf-8")
            entry = {**item.to_dict(), "file": name}
            if id(item) in checks:
                entry["reference_answer"] = checks[id(item)]
            index.append(entry)
        summary = {"source": str(path), "style": args.style, "imported": len(done), "errors": [
            {"index": err.index, "node": err.step, "function": err.function, "image": err.image, "message": str(err)}
            for err in errors], "questions": index}
        (out / "questions.json").write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    else:
        sys.stdout.write("\n".join(_header(item) + item.program for item in done))
    for err in errors:
        print(f"{path}: {err}", file=sys.stderr)
    if args.scenes:
        agree = sum(1 for item in done if checks.get(id(item)) == item.answer)
        print(f"{agree} of {len(done)} converted program(s), run symbolically over {args.scenes}, "
              f"give CLEVR's answer", file=sys.stderr)
        for item in done:
            if checks.get(id(item)) != item.answer:
                print(f"  question {item.index}: expected {item.answer}, the program gives {checks.get(id(item))}",
                      file=sys.stderr)
    total = len(done) + len(errors)
    print(f"imported {len(done)} of {total} question(s)" + (f" into {args.out}" if args.out else "")
          + (f"; {len(errors)} could not be converted" if errors else ""), file=sys.stderr)
    return 1 if errors else 0
