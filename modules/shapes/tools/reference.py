"""A reference executor: nsx programs run symbolically over a scene's ground truth.

Written apart from the question generator and from the modules (it reads the compiled program, and
uses object centres rather than ``truth['relationships']``), so when the generator's answer, the
reference's and the modules' agree, each checks the others: the generator's answers are what the
programs compute, and a miss of the modules is theirs (or perception's), not the question's.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

from program_dsl import IMAGE, Catalog, Const, EvalError, Input, Plan, Ref, compile_program, evaluate_text

from ..vocab import ATTRIBUTES
from .programs import IMAGE_INPUT, normalize_answer


class Unanswerable(ValueError):
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
            raise Unanswerable(f"the reference knows only the world's own words, not {w!r}")
        a, v = _VOCAB[w]
        if out.get(a, v) != v:
            raise Unanswerable(f"phrase {text!r} names two values of {a}")
        out[a] = v
    return out


# Relation → (axis, sign): 'left of the anchor' is a smaller x, 'below' a larger y (image rows grow down).
_SIDE: dict[str, tuple[int, int]] = {"left": (0, -1), "right": (0, 1), "above": (1, -1), "below": (1, 1)}


def _centre(o: Mapping[str, Any]) -> tuple[float, float]:
    if "center" in o:
        return float(o["center"][0]), float(o["center"][1])
    x1, y1, x2, y2 = o["box"]
    return (x1 + x2) / 2, (y1 + y2) / 2


@lru_cache(maxsize=1)
def default_catalog() -> Catalog:
    """The catalog of the core pack and this one, which shapes programs are written against
    (signatures only: no network is loaded)."""
    from modules.core import pack as core_pack
    from modules.packs import build_catalog

    from .. import pack as shapes_pack

    return build_catalog([core_pack(), shapes_pack()])


def reference_answer(program: str | Plan, truth: Mapping[str, Any], catalog: Catalog | None = None,
                     relations: str = "centres") -> str:
    """Run a compiled program (or its text, compiled against ``catalog``, by default
    :func:`default_catalog`) over a scene's ground truth, symbolically: LOC and FILTER select by exact
    attributes, RELATE compares object centres (or, with ``relations='truth'``, reads
    ``truth['relationships']``, as for CLEVR's scenes, whose relations come from 3-D positions), and
    so on; EVAL runs in the language's own evaluator. Returns the normalised answer; raises
    Unanswerable where the program has none."""
    plan = program if isinstance(program, Plan) else compile_program(
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
        raise Unanswerable(f"unknown argument {src!r}")

    def pick(ids: tuple[int, ...], text: str) -> tuple[int, ...]:
        want = parse_phrase(text)
        return tuple(i for i in ids if all(objects[i][a] == v for a, v in want.items()))

    def one(ids: Any, module: str) -> int:
        if not isinstance(ids, tuple) or len(ids) != 1:
            got = len(ids) if isinstance(ids, tuple) else repr(ids)
            raise Unanswerable(f"{module} needs exactly one object, got {got}")
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
                raise Unanswerable("the reference evaluates expressions over numbers, texts and booleans only")
            try:
                out = evaluate_text(a["expr"], env)
            except EvalError as e:
                raise Unanswerable(f"EVAL failed: {e}") from e
        elif m == "RESULT":
            out = a["var"]
        else:
            raise Unanswerable(f"the reference has no rule for {m}")
        values[step.id] = out
    result = arg(plan.result)
    if isinstance(result, tuple):
        raise Unanswerable("the program's answer is a set of objects, not a value")
    return normalize_answer(result)
