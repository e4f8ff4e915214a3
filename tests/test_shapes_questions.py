"""CLEVR-style questions: seeded, balanced, well-posed, type-checked, and answered right by ground truth.

Two computations of each answer meet here: the generator's (straight from the scene's objects and
relationships) and the reference executor's (running the program text over the same objects, with
relations from centres). On hand-built scenes a third, written by hand in the tests, checks both.
"""

from __future__ import annotations

from collections import Counter
from functools import lru_cache
from typing import Any

import numpy as np
import pytest

from modules.packs import build_catalog, load_packs
from modules.shapes.tools.descriptions import SceneTruth, unique_description
from modules.shapes.tools.programs import PARAMS, STYLES, Answer, Call, normalize_answer, phrase, render, scene_call
from modules.shapes.tools.questions import FAMILIES, family_counts, generate_questions, question_for
from modules.shapes.tools.reference import Unanswerable, default_catalog, parse_phrase, reference_answer
from modules.shapes.tools.world import ObjectSpec, compose, render_scene
from modules.shapes.vocab import ATTRIBUTES
from program_dsl import IMAGE, compile_program


@lru_cache(maxsize=1)
def catalog() -> Any:
    return build_catalog(load_packs(["core", "shapes"]))


@lru_cache(maxsize=4)
def scenes(seed: int, n: int) -> tuple[tuple[int, dict[str, Any]], ...]:
    return tuple((i, render_scene(seed, i).truth) for i in range(n))


# Laid out (256 px) as:  0 large red solid circle (50, 50)      1 small blue striped square (130, 60)
#                                       4 small red solid circle (140, 140)
#                        3 small green solid star (60, 190)      2 large red striped triangle (210, 200)
HAND = [
    ObjectSpec("circle", "red", "large", "solid", 50, 50),
    ObjectSpec("square", "blue", "small", "striped", 130, 60),
    ObjectSpec("triangle", "red", "large", "striped", 210, 200),
    ObjectSpec("star", "green", "small", "solid", 60, 190),
    ObjectSpec("circle", "red", "small", "solid", 140, 140),
]


@pytest.fixture(scope="module")
def hand() -> dict[str, Any]:
    return compose(HAND, seed=3).truth


HAND_ANSWERS = [
    ("COUNT(FILTER(LOC(IMAGE, 'object'), 'red'))", "3"),
    ("COUNT(LOC(IMAGE, 'red circle'))", "2"),
    ("'yes' if EXISTS(LOC(IMAGE, 'large blue object')) else 'no'", "no"),
    ("QUERY(UNIQUE(FILTER(LOC(IMAGE, 'object'), 'triangle')), 'color')", "red"),
    ("QUERY(UNIQUE(LOC(IMAGE, 'small red object')), 'shape')", "circle"),
    ("s = LOC(IMAGE, 'object')\nCOUNT(RELATE(s, UNIQUE(FILTER(s, 'star')), 'right'))", "3"),
    ("s = LOC(IMAGE, 'object')\nCOUNT(RELATE(s, UNIQUE(FILTER(s, 'star')), 'above'))", "3"),
    ("s = LOC(IMAGE, 'object')\nCOUNT(RELATE(FILTER(s, 'circle'), UNIQUE(FILTER(s, 'square')), 'below'))", "1"),
    # Two hops: the circle below the square is the small red one; left of it: the large circle, the square, the star.
    (("s = LOC(IMAGE, 'object')\n"
      "m = UNIQUE(RELATE(FILTER(s, 'circle'), UNIQUE(FILTER(s, 'square')), 'below'))\n"
      "COUNT(RELATE(s, m, 'left'))"), "3"),
    ("s = LOC(IMAGE, 'object')\nCOUNT(SAME(UNIQUE(FILTER(s, 'blue')), 'material', s))", "1"),
    ("s = LOC(IMAGE, 'object')\nCOUNT(SAME(UNIQUE(FILTER(s, 'triangle')), 'color', s))", "2"),
    ("s = LOC(IMAGE, 'object')\n'yes' if COUNT(FILTER(s, 'circle')) > COUNT(FILTER(s, 'large')) else 'no'", "no"),
    ("s = LOC(IMAGE, 'object')\n'yes' if COUNT(FILTER(s, 'circle')) == COUNT(FILTER(s, 'large')) else 'no'", "yes"),
    ("s = LOC(IMAGE, 'object')\nCOUNT(UNION(FILTER(s, 'circle'), FILTER(s, 'striped')))", "4"),
    ("s = LOC(IMAGE, 'object')\nCOUNT(INTERSECT(FILTER(s, 'red'), FILTER(s, 'small')))", "1"),
    (("s = LOC(IMAGE, 'object')\n"
      "'yes' if QUERY(UNIQUE(FILTER(s, 'star')), 'size') == QUERY(UNIQUE(FILTER(s, 'square')), 'size') else 'no'"),
     "yes"),
    (("BOX0=LOC(image=IMAGE,object='object')\nBOX1=FILTER(box=BOX0,value='striped')\nANSWER0=COUNT(box=BOX1)\n"
      "ANSWER1=EVAL(expr=\"'yes' if {ANSWER0} > 1 else 'no'\")\nFINAL_RESULT=RESULT(var=ANSWER1)"), "yes"),
]


@pytest.mark.parametrize(("program", "expected"), HAND_ANSWERS)
def test_reference_executor_on_a_hand_built_scene(hand: dict[str, Any], program: str, expected: str) -> None:
    assert reference_answer(program, hand) == expected
    assert reference_answer(program, hand, relations="truth") == expected


def test_reference_refuses_ill_posed_programs(hand: dict[str, Any]) -> None:
    with pytest.raises(Unanswerable, match="exactly one object, got 3"):
        reference_answer("QUERY(UNIQUE(LOC(IMAGE, 'red')), 'shape')", hand)
    with pytest.raises(Unanswerable, match="not 'crimson'"):
        reference_answer("COUNT(LOC(IMAGE, 'crimson'))", hand)


def test_generated_answers_agree_with_a_hand_count(hand: dict[str, Any]) -> None:
    """Every question the generator asks about the hand-built scene, answered a third way: by rules
    written here over the scene as laid out above."""
    objs = [{"shape": o.shape, "color": o.color, "size": o.size, "material": o.material, "x": o.x, "y": o.y}
            for o in HAND]
    qs = generate_questions([(0, hand)] * 40, 120, seed=5, per_scene=3)
    checked = 0
    for q in qs:
        if q.family == "count" and q.form == "count":
            want = parse_phrase(q.question.removeprefix("How many ").removesuffix(" are there?"))
            assert q.answer == str(sum(all(o[a] == v for a, v in want.items()) for o in objs)), q
            checked += 1
        assert reference_answer(q.program, hand) == q.answer, q
    assert checked >= 5


def test_every_family_in_equal_numbers() -> None:
    qs = generate_questions(scenes(21, 80), 203, seed=1)
    counts = family_counts(qs)
    assert set(counts) == set(FAMILIES)
    assert max(counts.values()) - min(counts.values()) <= 1
    assert sum(counts.values()) == 203
    forms = Counter((q.family, q.form) for q in qs)
    for family, form in [("compare", "more"), ("compare", "fewer"), ("compare", "equal"), ("same", "count_same"),
                         ("same", "exist_same"), ("same", "equal_attribute"), ("relate_1", "query"),
                         ("relate_2", "count"), ("and_or", "union_count"), ("and_or", "intersect_exist")]:
        assert forms[(family, form)] > 0, (family, form)
    assert {q.style for q in qs} == set(STYLES)


def test_same_seed_same_questions_other_seed_others() -> None:
    a = generate_questions(scenes(21, 80), 120, seed=4)
    b = generate_questions(scenes(21, 80), 120, seed=4)
    c = generate_questions(scenes(21, 80), 120, seed=5)
    assert a == b
    assert [q.program for q in a] != [q.program for q in c]


def test_answers_are_ground_truth_and_programs_type_check() -> None:
    """Generator and reference agree on every question: each program computes the answer it was
    asked with, every UNIQUE it uses holds exactly one object in ground truth (the reference raises
    otherwise), and every program compiles against the catalog."""
    data = dict(scenes(33, 80))
    qs = generate_questions(scenes(33, 80), 400, seed=2)
    for q in qs:
        plan = compile_program(q.program, catalog(), {"IMAGE": IMAGE})
        assert str(plan.result_type) in ("Text", "Number"), q.program
        assert reference_answer(plan, data[q.scene]) == q.answer, q


def test_answers_are_normalised_and_balanced() -> None:
    qs = generate_questions(scenes(33, 80), 400, seed=2)
    yes_no = Counter(q.answer for q in qs if q.answer in ("yes", "no"))
    assert 0.3 < yes_no["yes"] / sum(yes_no.values()) < 0.7
    counts = [int(q.answer) for q in qs if q.answer.isdigit()]
    assert counts and sum(c == 0 for c in counts) / len(counts) < 0.35
    words = {v for vs in ATTRIBUTES.values() for v in vs}
    for q in qs:
        assert q.answer in ("yes", "no") or q.answer.isdigit() or q.answer in words, q.answer


def test_query_subjects_are_unique_and_not_named_by_their_answer() -> None:
    data = dict(scenes(33, 40))
    qs = [q for q in generate_questions(scenes(33, 40), 200, seed=8) if q.family == "query"]
    assert qs
    for q in qs:
        t = SceneTruth(data[q.scene])
        (target,) = q.objects
        assert t.value(target, next(a for a in ("shape", "color", "size", "material")
                                     if f"'{a}'" in q.program)) == q.answer
        assert q.answer not in q.question.split("?")[0].split()[3:]  # 'What color is the red …' never asked


def test_unique_description_singles_out_or_gives_up() -> None:
    rng = np.random.default_rng(0)
    twins = {"objects": [{"shape": "circle", "color": "red", "size": "large", "material": "solid"}] * 2
             + [{"shape": "star", "color": "red", "size": "large", "material": "solid"}],
             "relationships": {r: [[], [], []] for r in ("left", "right", "above", "below")}}
    t = SceneTruth(twins)
    assert unique_description(t, 0, t.all, rng) is None
    for _ in range(20):
        d = unique_description(t, 2, t.all, rng)
        assert d is not None and d.get("shape") == "star"
    # The twins can never be asked about; the star always can.
    for _ in range(10):
        q = question_for(twins, "query", rng)
        assert q is not None and q.objects == (2,)


def test_params_match_the_catalog() -> None:
    for name, params in PARAMS.items():
        assert tuple(p.name for p in catalog()[name].params)[:len(params)] == params, name
        # The reference's own catalog (built from the packs, not found through entry points) agrees.
        assert default_catalog()[name].params == catalog()[name].params, name


def test_render_styles_compute_the_same(hand: dict[str, Any]) -> None:
    scene = scene_call()
    anchor = Call("UNIQUE", (Call("FILTER", (scene, "star")),))
    answer = Answer("compare", (Call("COUNT", (Call("RELATE", (scene, anchor, "right")),)),
                                Call("COUNT", (Call("FILTER", (scene, "red")),))), ">")
    nested, visprog = render(answer, "nested"), render(answer, "visprog")
    assert "EVAL" in visprog and "RESULT" in visprog and "EVAL" not in nested
    assert reference_answer(nested, hand) == reference_answer(visprog, hand) == "no"  # 3 > 3
    with pytest.raises(ValueError, match="unknown program style"):
        render(answer, "lisp")


def test_phrases_and_normalisation() -> None:
    assert phrase({"shape": "circle", "color": "red", "size": "large"}) == "large red circle"
    assert phrase({"material": "striped"}) == "striped object"
    assert phrase({}) == "object"
    assert parse_phrase("the large red circles") == {"size": "large", "color": "red", "shape": "circle"}
    assert [normalize_answer(v) for v in (True, False, 3, 3.0, np.int64(2), " Red ", "4", "true", None)] == [
        "yes", "no", "3", "3", "2", "red", "4", "yes", "<none>"]
