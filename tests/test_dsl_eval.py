"""The safe evaluator: what EVAL strings and expression statements compute, how VisProg's ``{X}``
substitution behaves, how failures surface, and that nothing reaches Python's own eval."""

from __future__ import annotations

import ast
import builtins
import json
import time
import tracemalloc
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

import program_dsl
from modules.catalog import declared_catalog
from modules.core import SIGNATURES as CORE
from program_dsl import Const, EvalError, Plan, ProgramError, Step, compile_program, evaluate, parse_expression
from program_dsl.evaluate import MAX_VALUE_DEPTH, MAX_VALUE_SIZE, as_number, evaluate_text

# A runaway computation (9 ** 9 ** 9 evaluated, 2**40 leaves walked) takes minutes: these bounds
# catch one without being a speed test, which a busy machine would fail.
RUNAWAY_S = 5.0

CATALOG = declared_catalog(*CORE)


def ev(text: str, **env: Any) -> Any:
    return evaluate_text(text, env)


def folded(text: str) -> Any:
    """The constant a program folds to at compile time (it must need no step at all)."""
    plan = compile_program(text, CATALOG)
    assert plan.steps == (), plan.steps
    assert isinstance(plan.result, Const)
    return plan.result.value


def run_eval_step(step: Step, values: Mapping[str, Any]) -> Any:
    """What the executor does with an EVAL step: its inputs, by alias, into the evaluator."""
    assert step.module == "EVAL"
    expr = step.args["expr"]
    assert isinstance(expr, Const)
    return evaluate_text(expr.value, {k: values[k] for k in step.args if k != "expr"})


def eval_step(plan: Plan) -> Step:
    (step,) = [s for s in plan.steps if s.module == "EVAL"]
    return step


# -- arithmetic ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("1 + 2 * 3", 7),
        ("(1 + 2) * 3", 9),
        ("7 / 2", 3.5),
        ("7 // 2", 3),
        ("-7 // 2", -4),
        ("7 % 3", 1),
        ("-7 % 3", 2),
        ("2 ** 3 ** 2", 512),
        ("-2 ** 2", -4),
        ("(-2) ** 2", 4),
        ("2 ** -1", 0.5),
        ("--3", 3),
        ("+-3", -3),
        ("1.5e2 + .5", 150.5),
        ("10 - 2 - 3", 5),
        ("100 / 10 / 5", 2.0),
        ("'ab' + 'cd'", "abcd"),
    ],
)
def test_arithmetic(text: str, value: Any) -> None:
    result = ev(text)
    assert result == value and type(result) is type(value)


@pytest.mark.parametrize("text", ["1 / 0", "1 // 0", "1 % 0", "1.5 / 0.0", "0 ** -1", "x / (y - y)"])
def test_division_by_zero_is_an_eval_error(text: str) -> None:
    with pytest.raises(EvalError, match="^division by zero$"):
        ev(text, x=1, y=2)


@pytest.mark.parametrize(
    "text",
    ["10 ** 100000", "9 ** 9 ** 9", "2 ** 1024", "2.0 ** 5000", "(10 ** 64) ** 64 ** 2", "1e300 * 1e300",
     "x * x * x * x * x"],
)
def test_huge_numbers_are_bounded(text: str) -> None:
    start = time.perf_counter()
    with pytest.raises(EvalError, match="overflowed|out of range"):
        ev(text, x=10**100)
    assert time.perf_counter() - start < RUNAWAY_S


def test_large_but_reasonable_powers_still_work() -> None:
    assert ev("2 ** 64") == 18446744073709551616
    assert ev("10 ** 300") == 10**300
    assert ev("(-1) ** (10 ** 60)") == 1
    assert ev("2 ** -2000") == 0.0


def test_a_negative_number_to_a_fractional_power_is_an_error_not_a_complex_number() -> None:
    with pytest.raises(EvalError, match="not a real number"):
        ev("(-8) ** 0.5")


def test_arithmetic_needs_numbers() -> None:
    with pytest.raises(EvalError, match="^'-' needs numbers, got Text 'a'$"):
        ev("'a' - 1")
    with pytest.raises(EvalError, match="^'\\+' needs numbers, got Bool$"):
        ev("True + 1")
    with pytest.raises(EvalError, match="^'\\*' needs numbers, got None 'None'$"):
        ev("x * 2", x=None)
    with pytest.raises(EvalError, match="^'-' needs numbers, got List$"):
        ev("-x", x=[1])


# -- comparisons and logic -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("1 < 2 < 3", True),
        ("1 < 3 < 2", False),
        ("3 > 2 >= 2 == 2 != 1", True),
        ("1 == 1.0", True),
        ("'a' < 'b' <= 'b'", True),
        ("'2' == 2", False),
        ("[1, 2] == [1, 2]", True),
        ("None == None", True),
    ],
)
def test_comparisons(text: str, value: bool) -> None:
    assert ev(text) is value


def test_chained_comparison_stops_at_the_first_false() -> None:
    # Like Python: 1 > 2 is already False, so the missing value is never looked at.
    assert ev("1 > 2 < missing") is False
    with pytest.raises(EvalError, match="no value for 'missing'"):
        ev("1 < 2 < missing")


def test_ordering_needs_two_numbers_or_two_texts() -> None:
    with pytest.raises(EvalError, match="^cannot compare Text < Number$"):
        ev("'a' < 1")
    with pytest.raises(EvalError, match="^cannot compare Bool > Number$"):
        ev("True > 0")


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("True and False", False),
        ("True or False", True),
        ("not True", False),
        ("not 0", True),
        ("True xor True", False),
        ("True xor False", True),
        ("False xor False", False),
        ("1 and 'x'", True),
        ("0 or ''", False),
        ("not 1 == 2", True),
        ("True or False and False", True),
        ("True xor True or True", True),
        ("False and True xor True", True),
    ],
)
def test_boolean_operators_give_bools(text: str, value: bool) -> None:
    # Unlike Python, 'and'/'or' give True/False, never one of their operands: a Bool is a Bool.
    assert ev(text) is value


def test_and_or_short_circuit() -> None:
    assert ev("False and 1 / 0") is False
    assert ev("True or 1 / 0") is True


def test_conditional_expression_evaluates_only_the_branch_taken() -> None:
    assert ev("'yes' if n > 2 else 'no'", n=3) == "yes"
    assert ev("'yes' if n > 2 else 'no'", n=2) == "no"
    assert ev("1 if True else 1 / 0") == 1
    assert ev("'a' if n == 1 else 'b' if n == 2 else 'c'", n=2) == "b"


def test_in() -> None:
    assert ev("'cat' in 'a cat sat'") is True
    assert ev("'dog' in ['cat', 'dog']") is True
    assert ev("3 in [1, 2]") is False
    assert ev("x in y", x="b", y=["a", "b"]) is True
    with pytest.raises(EvalError, match="^'in' a text needs a text on its left, got Number$"):
        ev("3 in 'a3'")
    with pytest.raises(EvalError, match="^'in' needs a text or a list on its right, got Number$"):
        ev("'a' in 3")


def test_evaluate_takes_a_parsed_expression_and_an_environment() -> None:
    # What evaluate_text does in two steps; the executor keeps the parsed form per EVAL text.
    expr = parse_expression("'yes' if {x0} > 2 else 'no'")
    assert [evaluate(expr, {"x0": n}) for n in (1, "3")] == ["no", "yes"]


def test_lists() -> None:
    assert ev("[1, x, 'a', [True]]", x=2) == [1, 2, "a", [True]]
    assert ev("[]") == []


# -- VisProg's {X} substitution --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "value"),
    [("3", 3), (" 3 ", 3), ("3.5", 3.5), ("-2", -2), ("1e3", 1000.0), ("3.0", 3.0), (".5", 0.5)],
)
def test_placeholder_reads_text_that_looks_like_a_number_as_that_number(text: str, value: Any) -> None:
    result = ev("{x}", x=text)
    assert result == value and type(result) is type(value)
    assert ev("{x} + 1", x=text) == value + 1


@pytest.mark.parametrize("text", ["three", "3 dogs", "", "1_000", "0x10", "nan", "inf", "3" * 65])
def test_placeholder_keeps_other_text_as_text(text: str) -> None:
    assert ev("{x}", x=text) == text


def test_placeholder_coercion_is_visprogs_numeric_answers() -> None:
    # VQA answers 'how many' questions with text; VisProg compares them as numbers.
    assert ev("{x0} + {x1} == 3", x0="2", x1="1") is True
    assert ev("{x0} > {x1}", x0="10", x1="9") is True  # as text, '10' > '9' would be False
    with pytest.raises(EvalError, match="^'\\+' needs numbers, got Text 'two'$"):
        ev("{x0} + 1", x0="two")


def test_a_bare_name_is_not_coerced() -> None:
    # Only VisProg's {X} reads text as a number; a variable keeps its type.
    assert ev("x == '3'", x="3") is True
    with pytest.raises(EvalError):
        ev("x + 1", x="3")


def test_placeholder_leaves_non_text_values_alone() -> None:
    assert ev("{x}", x=True) is True
    assert ev("{x}", x=[1, 2]) == [1, 2]
    assert as_number(4) == 4


@pytest.mark.parametrize(
    ("value", "text"),
    [("yes", "yes"), (3, "3"), (2.5, "2.5"), (True, "True"), (None, "None"), (["a", "b"], "a, b")],
)
def test_quoted_placeholder_substitutes_the_text_of_the_value(value: Any, text: str) -> None:
    assert ev("'<{x}>'", x=value) == f"<{text}>"


def test_quoted_placeholder_in_a_comparison() -> None:
    assert ev("'{x0}' == 'yes' xor '{x1}' == 'yes'", x0="yes", x1="no") is True
    assert ev("'{x0}' == 'yes' xor '{x1}' == 'yes'", x0="yes", x1="yes") is False
    assert ev("'{x0}s' in ['cats', 'dogs']", x0="dog") is True


def test_a_missing_value_is_an_eval_error() -> None:
    with pytest.raises(EvalError, match="^no value for 'x'$"):
        ev("x + 1")
    with pytest.raises(EvalError, match="^no value for 'x'$"):
        ev("{x} + 1")


# -- compiled programs: folding at compile time, evaluation at run time ---------------------------


def test_constants_fold_at_compile_time() -> None:
    assert folded("x = 2 * 3 + 1") == 7
    assert folded("x = 'yes' if 3 > 2 else 'no'") == "yes"
    assert folded("ANSWER0=EVAL(expr='1 + 2')") == 3
    assert folded("a = 2\nb = EVAL(expr='{a} * 3')") == 6
    assert folded("a = '3'\nb = EVAL(expr='{a} + 1')") == 4
    assert folded("a = 'cat'\nb = EVAL(expr=\"'{a}s'\")") == "cats"
    assert folded("a = [1, 2]\nb = 2 in a and not 3 in a") is True
    assert folded("a = 4.0 / 2") == 2  # an integral float is the same constant as the int


def test_folding_failures_are_compile_errors_not_crashes() -> None:
    for text in ["x = 1 / 0", "x = 2 ** 5000", "x = (-1) ** 0.5", "x = EVAL(expr='1 // 0')"]:
        with pytest.raises(ProgramError) as info:
            compile_program(text, CATALOG)
        assert [d.code for d in info.value.diagnostics] == ["eval"], text


def test_repeated_squaring_across_statements_is_bounded() -> None:
    text = "a = 10 ** 60\n" + "".join(f"{b} = {a} * {a}\n" for a, b in zip("abcdefgh", "bcdefghi"))
    start = time.perf_counter()
    with pytest.raises(ProgramError, match="out of range"):
        compile_program(text, CATALOG)
    assert time.perf_counter() - start < RUNAWAY_S


def chain(first: str, step: str, n: int) -> str:
    """``v0 = first`` then n statements, each ``step`` applied to the one before (``{a}`` in step)."""
    return f"v0 = {first}\n" + "".join(f"v{i + 1} = {step.format(a=f'v{i}')}\n" for i in range(n))


@pytest.mark.parametrize(
    ("program", "message"),
    [
        (chain("'xxxxxxxx'", "{a} + {a}", 40), "the value is too large"),
        (chain("'x'", "[{a}, {a}]", 40), "the value is too large"),
        (chain("1", "[{a}]", 200), "the value is nested too deeply"),
        (chain("VQA(IMAGE, 'q')", "[{a}]", 200), "the value is nested too deeply"),
    ],
    ids=["text-doubling", "list-doubling", "const-nesting", "step-nesting"],
)
def test_values_cannot_grow_without_bound_across_statements(program: str, message: str) -> None:
    # Each statement is small, but constants (and types) carry over: unchecked, these take
    # gigabytes, or break Python's recursion limit when the plan is printed or serialized.
    # Refused before the value is built: the peak is measured in memory, not in time (a timed
    # assertion fails on a busy machine without saying anything about the code).
    tracemalloc.start()
    try:
        with pytest.raises(ProgramError) as info:
            compile_program(program, CATALOG)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert info.value.diagnostics[0].message.startswith(message)
    assert info.value.diagnostics[0].code == "eval"
    assert peak < 64 * 2**20


def test_values_built_at_run_time_are_bounded_too() -> None:
    big = "x" * (MAX_VALUE_SIZE // 2 + 1)
    with pytest.raises(EvalError, match="too large"):
        ev("x0 + x0", x0=big)
    nested: list[Any] = []
    for _ in range(MAX_VALUE_DEPTH):
        nested = [nested]
    with pytest.raises(EvalError, match="nested too deeply"):
        ev("[x0]", x0=nested)
    shared: list[Any] = ["x"]
    for _ in range(40):
        shared = [shared, shared]  # 2**40 leaves, but only 41 distinct lists: must fail fast
    start = time.perf_counter()
    with pytest.raises(EvalError, match="too large"):
        ev("x0", x0=shared)
    assert time.perf_counter() - start < RUNAWAY_S


def test_a_large_but_bounded_plan_serializes() -> None:
    plan = compile_program(chain("'xxxxxxxx'", "{a} + {a}", 12), CATALOG)
    assert len(plan.result.value) == 8 * 2**12  # type: ignore[union-attr]
    json.dumps(plan.to_dict())


def test_a_visprog_eval_step_runs_on_its_inputs() -> None:
    plan = compile_program(
        "BOX0=LOC(image=IMAGE,object='muffin')\nANSWER0=COUNT(box=BOX0)\n"
        "ANSWER1=EVAL(expr=\"'yes' if {ANSWER0} > 2 else 'no'\")\n",
        CATALOG,
    )
    step = eval_step(plan)
    assert run_eval_step(step, {"x0": 3}) == "yes"
    assert run_eval_step(step, {"x0": 2}) == "no"


def test_an_nlvr_eval_step_reads_vqa_text_as_numbers() -> None:
    plan = compile_program(
        "ANSWER0=VQA(image=LEFT,question='How many dogs?')\nANSWER1=VQA(image=RIGHT,question='How many dogs?')\n"
        "ANSWER2=EVAL(expr='{ANSWER0} + {ANSWER1} == 3')\n",
        CATALOG,
    )
    step = eval_step(plan)
    assert run_eval_step(step, {"x0": "2", "x1": "1"}) is True
    assert run_eval_step(step, {"x0": "2", "x1": "2"}) is False


def test_a_direct_expression_step_runs_like_its_eval_twin() -> None:
    plan = compile_program("n = COUNT(LOC(IMAGE, 'muffin'))\nanswer = 'yes' if n > 2 else 'no'", CATALOG)
    step = eval_step(plan)
    assert step.args["expr"] == Const("'yes' if x0 > 2 else 'no'")
    assert run_eval_step(step, {"x0": 5}) == "yes"


def test_the_same_variable_twice_is_one_input_of_the_step() -> None:
    plan = compile_program("n = COUNT(LOC(IMAGE, 'a'))\nn * n + n", CATALOG)
    step = eval_step(plan)
    assert sorted(step.args) == ["expr", "x0"]
    assert run_eval_step(step, {"x0": 3}) == 12


def test_constants_are_inlined_into_eval_steps() -> None:
    plan = compile_program("limit = 2 + 1\nn = COUNT(LOC(IMAGE, 'a'))\nn > limit", CATALOG)
    assert eval_step(plan).args["expr"] == Const("x0 > 3")


# -- no Python eval, exec or imports ---------------------------------------------------------------


def test_python_builtins_are_not_reachable() -> None:
    for text in ["x = __import__('os')", "x = eval('1')", "x = exec('import os')", "x = open('/etc/passwd')"]:
        with pytest.raises(ProgramError) as info:
            compile_program(text, CATALOG)
        assert info.value.diagnostics[0].code == "unknown-module", text


def test_attribute_access_does_not_parse(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    attacks = [
        f"x = EVAL(expr=\"__import__('os').system('touch {marker}')\")",
        "x = ().__class__.__bases__[0].__subclasses__()",
        "x = IMAGE.__class__",
        "x = EVAL(expr=\"{IMAGE}.__class__\")",
    ]
    for text in attacks:
        with pytest.raises(ProgramError):
            compile_program(text, CATALOG)
    assert not marker.exists()


def test_dunder_names_are_just_undefined_variables() -> None:
    for text in ["x = __builtins__", "x = EVAL(expr='{__builtins__}')"]:
        with pytest.raises(ProgramError) as info:
            compile_program(text, CATALOG)
        assert info.value.diagnostics[0].code == "undefined-variable"


def test_evaluation_never_calls_eval_or_exec(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("Python's eval/exec must never run a program")

    monkeypatch.setattr(builtins, "eval", refuse)
    monkeypatch.setattr(builtins, "exec", refuse)
    assert ev("'yes' if {x} > 2 and '{y}' in ['a', 'b'] else 'no'", x="3", y="a") == "yes"
    assert folded("x = [1, 2 ** 3, 'a' + 'b'] == [1, 8, 'ab']") is True


def test_the_language_package_has_no_eval_exec_or_pickle() -> None:
    banned_calls = {"eval", "exec", "compile", "__import__"}
    for path in Path(program_dsl.__file__).parent.glob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
                assert node.func.id not in banned_calls, f"{path.name}:{node.lineno} calls {node.func.id}"
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
                assert not {"pickle", "marshal", "subprocess", "os"} & set(names), f"{path.name}:{node.lineno}"
