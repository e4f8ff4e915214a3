"""The valid corpus: VisProg's four task families and every syntactic form parse, type-check,
format stably, and keep their plan through formatting; and the plans say what they should."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from modules.catalog import declared_catalog
from modules.core import SIGNATURES as CORE
from program_dsl import (
    IMAGE,
    NUMBER,
    TEXT,
    Const,
    Input,
    List,
    Plan,
    ProgramError,
    Ref,
    check,
    compile_cached,
    compile_program,
    format_program,
    parse,
    step_key,
)

CATALOG = declared_catalog(*CORE)
VALID = Path(__file__).parent / "corpus" / "valid"
PROGRAMS = sorted(VALID.glob("*.nsx"))
# Programs that leave a variable unused on purpose (it is what the `unused` warning is for).
WARNS = {"form_constants.nsx": ["flags"], "form_result_middle.nsx": ["ANSWER1"], "form_strings.nsx": ["shout"]}


def read(path: Path) -> str:
    # Bytes, not read_text(): universal newlines would hide the CRLF the corpus means to test.
    return path.read_bytes().decode("utf-8")


def plan_of(text: str, **kwargs: object) -> Plan:
    return compile_program(text, CATALOG, **kwargs)  # type: ignore[arg-type]


def fingerprint(text: str) -> str:
    return plan_of(text).fingerprint()


def step_by_module(plan: Plan, module: str) -> list[str]:
    return [s.id for s in plan.steps if s.module == module]


# -- the corpus as a whole ---------------------------------------------------------------------


def test_corpus_is_large_and_covers_every_family() -> None:
    names = [p.name for p in PROGRAMS]
    assert len(names) >= 44
    for family, least in {"gqa_": 8, "nlvr_": 8, "edit_": 8, "tag_": 5, "form_": 10}.items():
        assert sum(n.startswith(family) for n in names) >= least, family


def test_corpus_uses_every_visprog_module() -> None:
    # Named here rather than read from the catalog: modules nsx adds of its own are tested elsewhere.
    visprog = {
        "LOC", "COUNT", "CROP", "CROP_LEFTOF", "CROP_RIGHTOF", "CROP_ABOVE", "CROP_BELOW", "CROP_FRONTOF",
        "CROP_BEHIND", "VQA", "EVAL", "SEG", "SELECT", "COLORPOP", "BGBLUR", "REPLACE", "EMOJI", "FACEDET",
        "LIST", "CLASSIFY", "TAG",
    }
    assert visprog - {"EVAL"} <= set(CATALOG)
    # RESULT never becomes a step: it only marks which value the program returns.
    used = {s.module for p in PROGRAMS for s in plan_of(read(p)).steps}
    assert visprog <= used, sorted(visprog - used)


@pytest.mark.parametrize("path", PROGRAMS, ids=lambda p: p.name)
def test_parses_and_type_checks(path: Path) -> None:
    text = read(path)
    program = parse(text)
    assert program.statements
    plan = plan_of(text)
    assert plan.steps or isinstance(plan.result, Const)
    assert plan.result_type.name != "None"
    assert [w.message.split("'")[1] for w in plan.warnings] == WARNS.get(path.name, [])
    assert all(w.severity == "warning" and w.code == "unused" for w in plan.warnings)


@pytest.mark.parametrize("path", PROGRAMS, ids=lambda p: p.name)
def test_format_is_stable_and_keeps_the_plan(path: Path) -> None:
    text = read(path)
    once = format_program(text)
    assert format_program(once) == once
    assert plan_of(once).fingerprint() == plan_of(text).fingerprint()
    assert once.endswith("\n") and "\r" not in once
    # Comments survive formatting, each exactly once.
    comments = [c.text.rstrip() for c in parse(text).comments]
    assert [c.text for c in parse(once).comments] == comments


@pytest.mark.parametrize("path", PROGRAMS, ids=lambda p: p.name)
def test_line_endings_do_not_matter(path: Path) -> None:
    text = read(path).replace("\r\n", "\n")
    crlf = text.replace("\n", "\r\n")
    assert fingerprint(crlf) == fingerprint(text)
    assert format_program(crlf) == format_program(text)


@pytest.mark.parametrize("path", PROGRAMS, ids=lambda p: p.name)
def test_steps_are_in_dependency_order(path: Path) -> None:
    plan = plan_of(read(path))
    seen: set[str] = set()
    for step in plan.steps:
        assert set(step.refs()) <= seen, step
        seen.add(step.id)
    assert len({s.fingerprint for s in plan.steps}) == len(plan.steps), "duplicate steps were not merged"
    json.dumps(plan.to_dict())  # the plan is what the API returns: it must be plain JSON


def test_crlf_program_really_has_crlf() -> None:
    # If a checkout rewrites line ends (see corpus/.gitattributes), the CRLF case silently stops being one.
    assert b"\r\n" in (VALID / "form_crlf.nsx").read_bytes()


# -- specific plans ----------------------------------------------------------------------------


def test_identical_calls_merge_into_one_step_with_both_names() -> None:
    plan = plan_of(
        "BOX0=LOC(image=IMAGE,object='cat')\n"
        "BOX1=LOC(image=IMAGE,object='cat')\n"
        "ANSWER0=COUNT(box=UNION(left=BOX0,right=BOX1))\n"
    )
    assert [s.module for s in plan.steps] == ["LOC", "UNION", "COUNT"]
    loc = plan.steps[0]
    assert loc.vars == ("BOX0", "BOX1")
    assert {s.line for s in loc.spans} == {1, 2}
    assert plan.steps[1].args == {"left": Ref(loc.id), "right": Ref(loc.id)}


def test_the_same_detection_written_three_ways_is_one_step() -> None:
    plan = plan_of(read(VALID / "form_cse.nsx"))
    assert step_by_module(plan, "LOC") == ["s1"]
    assert plan.step("s1").vars == ("A", "B")
    # C's COUNT is a different step from D's: D counts a UNION.
    assert len(step_by_module(plan, "COUNT")) == 2


def test_variable_names_do_not_change_the_fingerprint() -> None:
    a = "BOX0=LOC(image=IMAGE,object='muffin')\nANSWER0=COUNT(box=BOX0)\nFINAL_RESULT=RESULT(var=ANSWER0)\n"
    b = "muffins = LOC(image=IMAGE, object='muffin')\nhow_many = COUNT(box=muffins)\nout = RESULT(var=how_many)\n"
    assert plan_of(a).steps[0].vars == ("BOX0",)
    assert fingerprint(a) == fingerprint(b)


def test_expression_steps_are_named_by_position_not_by_variable() -> None:
    a = "x = COUNT(LOC(IMAGE, 'a'))\ny = COUNT(LOC(IMAGE, 'b'))\nx * 2 + y\n"
    b = "p = COUNT(LOC(IMAGE, 'a'))\nq = COUNT(LOC(IMAGE, 'b'))\np * 2 + q\n"
    plan = plan_of(a)
    (ev,) = [s for s in plan.steps if s.module == "EVAL"]
    assert ev.args["expr"] == Const("x0 * 2 + x1")
    assert fingerprint(a) == fingerprint(b)


def test_nested_flat_positional_and_keyword_forms_are_the_same_plan() -> None:
    flat = "BOX0=LOC(image=IMAGE,object='muffin')\nANSWER0=COUNT(box=BOX0)\n"
    nested = "COUNT(box=LOC(image=IMAGE, object='muffin'))"
    positional = "COUNT(LOC(IMAGE, 'muffin'))"
    reordered = "n = COUNT(box=LOC(object='muffin', image=IMAGE))"
    assert fingerprint(flat) == fingerprint(nested) == fingerprint(positional) == fingerprint(reordered)


def test_spacing_comments_semicolons_and_crlf_do_not_change_the_fingerprint() -> None:
    base = "a=LOC(image=IMAGE,object='x')\nb=COUNT(box=a)\n"
    variants = [
        "a = LOC( image = IMAGE , object = 'x' )\n\n\nb = COUNT( box = a )",
        "# leading\na=LOC(image=IMAGE,object='x')  # why\nb=COUNT(box=a)\n# trailing\n",
        "a=LOC(image=IMAGE,object='x'); b=COUNT(box=a);",
        "a=LOC(image=IMAGE,object='x')\r\nb=COUNT(box=a)\r\n",
        'a=LOC(image=IMAGE,object="x")\nb=COUNT(box=a)\n',
        "a=LOC(\n  image=IMAGE,\n  object='x',\n)\nb=COUNT(box=a)\n",
    ]
    for variant in variants:
        assert fingerprint(variant) == fingerprint(base), variant


def test_what_is_computed_does_change_the_fingerprint() -> None:
    base = "COUNT(LOC(IMAGE, 'dog'))"
    others = ["COUNT(LOC(IMAGE, 'dogs'))", "COUNT(LOC(LEFT, 'dog'))", "EXISTS(LOC(IMAGE, 'dog'))", "LOC(IMAGE, 'dog')"]
    for other in others:
        assert fingerprint(other) != fingerprint(base), other


def test_defaults_are_filled_in_so_explicit_defaults_are_the_same_step() -> None:
    implicit = plan_of("SORT(LOC(IMAGE, 'x'))")
    explicit = plan_of("SORT(LOC(IMAGE, 'x'), by='x', descending=False)")
    assert implicit.fingerprint() == explicit.fingerprint()
    assert implicit.steps[-1].args["by"] == Const("x")
    assert implicit.steps[-1].args["descending"] == Const(False)


def test_integral_floats_are_the_same_constant_as_ints() -> None:
    assert fingerprint("PICK(LOC(IMAGE, 'x'), 1)") == fingerprint("PICK(LOC(IMAGE, 'x'), 1.0)")
    assert fingerprint("PICK(LOC(IMAGE, 'x'), 1)") != fingerprint("PICK(LOC(IMAGE, 'x'), 1.5)")


def test_visprog_eval_becomes_an_eval_step_over_its_inputs() -> None:
    plan = plan_of(read(VALID / "gqa_muffins.nsx"))
    loc, count, ev = plan.steps
    assert (loc.module, count.module, ev.module) == ("LOC", "COUNT", "EVAL")
    assert loc.args == {"image": Input("IMAGE"), "object": Const("muffin")}
    assert ev.args == {"expr": Const("'yes' if {x0} > 2 else 'no'"), "x0": Ref(count.id)}
    # RESULT is no step: it names the value, and FINAL_RESULT becomes another name of that step.
    assert plan.result == Ref(ev.id)
    assert ev.vars == ("ANSWER1", "FINAL_RESULT")
    assert plan.result_type == TEXT


def test_result_may_come_before_the_last_statement() -> None:
    plan = plan_of(read(VALID / "form_result_middle.nsx"))
    result = plan.step(plan.result.step)  # type: ignore[union-attr]
    assert result.module == "COUNT" and result.vars == ("ANSWER0", "FINAL_RESULT")


def test_without_result_the_last_statement_is_the_result() -> None:
    plan = plan_of(read(VALID / "form_expression_statement.nsx"))
    assert plan.step(plan.result.step).module == "EVAL"  # type: ignore[union-attr]
    assert plan.result_type.name == "Bool"


def test_constant_expressions_fold_into_the_plan() -> None:
    plan = plan_of("x = 2 ** 10 - 24\ny = 'a' + 'b' if x == 1000 else 'c'\n")
    assert plan.steps == ()
    assert plan.result == Const("ab")
    assert plan.result_type == TEXT


def test_types_flow_through_the_plan() -> None:
    plan = plan_of(read(VALID / "tag_big_bang.nsx"))
    assert [(s.module, str(s.type)) for s in plan.steps] == [
        ("FACEDET", "Objects"), ("LIST", "List[Text]"), ("CLASSIFY", "Objects"), ("TAG", "Image"),
    ]
    assert plan.result_type == IMAGE
    assert plan_of("[COUNT(LOC(IMAGE, 'a')), 2]").result_type == List(NUMBER)


def test_inputs_list_only_the_images_used() -> None:
    assert plan_of(read(VALID / "nlvr_dogs_total.nsx")).inputs == ("LEFT", "RIGHT")
    assert plan_of(read(VALID / "gqa_muffins.nsx")).inputs == ("IMAGE",)


def test_callers_can_name_their_own_inputs() -> None:
    plan = plan_of("COUNT(LOC(PHOTO, 'dog'))", inputs={"PHOTO": IMAGE})
    assert plan.inputs == ("PHOTO",)
    with pytest.raises(ProgramError):
        plan_of("COUNT(LOC(IMAGE, 'dog'))", inputs={"PHOTO": IMAGE})


def test_steps_keep_module_metadata_for_the_executor() -> None:
    plan = plan_of("VQA(CROP(IMAGE, SEG(IMAGE)), 'what does it say?')")
    by_module = {s.module: s for s in plan.steps}
    assert by_module["SEG"].pack == "photo"
    assert by_module["VQA"].pack == "hf"
    assert all(s.version for s in plan.steps)


def test_step_key_is_the_run_time_cache_key() -> None:
    def expected(module: str, version: str, consts: dict[str, object], inputs: dict[str, str]) -> str:
        blob = json.dumps({"m": module, "v": version, "a": consts, "i": inputs}, sort_keys=True,
                          ensure_ascii=False, separators=(",", ":"))
        return hashlib.sha256(blob.encode("utf-8", "surrogatepass")).hexdigest()

    assert step_key("core.COUNT", "1", {}, {"box": "ab12"}) == expected("core.COUNT", "1", {}, {"box": "ab12"})
    # Text of any kind, a lone surrogate included, keys the same way.
    consts: dict[str, object] = {"object": "café \ud800", "n": [1, 2.5, None, True]}
    assert step_key("shapes.LOC", "2", consts, {"image": "sha256:00"}) == expected("shapes.LOC", "2", consts,
                                                                                  {"image": "sha256:00"})
    assert step_key("m", "1", {"a": 1}, {}) != step_key("m", "1", {}, {"a": "1"})


def test_step_fingerprints_are_step_keys_over_input_names_and_parent_fingerprints() -> None:
    loc, count = plan_of("COUNT(LOC(IMAGE, 'muffin'))").steps
    assert loc.fingerprint == step_key(f"{loc.pack}.LOC", loc.version, {"object": "muffin"}, {"image": "input:IMAGE"})
    assert count.fingerprint == step_key(f"{count.pack}.COUNT", count.version, {}, {"box": f"step:{loc.fingerprint}"})


def test_compile_cached_returns_the_same_plan_object() -> None:
    text = read(VALID / "gqa_largest.nsx")
    assert compile_cached(text, CATALOG) is compile_cached(text, CATALOG)
    assert compile_cached(text, CATALOG).fingerprint() == plan_of(text).fingerprint()


def test_check_reports_warnings_without_raising() -> None:
    diagnostics = check(read(VALID / "form_strings.nsx"), CATALOG)
    assert [(d.code, d.severity, d.line, d.column) for d in diagnostics] == [("unused", "warning", 3, 1)]
    assert check(read(VALID / "gqa_muffins.nsx"), CATALOG) == []
