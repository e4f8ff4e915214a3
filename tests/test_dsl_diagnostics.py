"""Every diagnostic the language gives: its exact words, its place, its hint and its code.

The invalid corpus pins the full rendered text (``file:line:col: error: …``, the line, the caret);
the tests below pin each kind of diagnostic on its own. To accept new renderings after a deliberate
change of wording, run with ``NSX_UPDATE_EXPECTED=1`` and review the diff of ``*.expected``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest

from modules.catalog import declared_catalog
from modules.core import SIGNATURES as CORE
from program_dsl import IMAGE, Diagnostic, Limits, ProgramError, check, compile_program, format_program, parse

CATALOG = declared_catalog(*CORE)
INVALID = Path(__file__).parent / "corpus" / "invalid"
BROKEN = sorted(INVALID.glob("*.nsx"))


@dataclass(frozen=True)
class Seen:
    """The parts of a diagnostic a test pins, compared as one value so a failure shows them all."""

    message: str
    line: int
    column: int
    end_column: int
    hint: str | None
    code: str


def errors(text: str, **kwargs: object) -> list[Diagnostic]:
    with pytest.raises(ProgramError) as info:
        compile_program(text, CATALOG, **kwargs)  # type: ignore[arg-type]
    assert info.value.diagnostics, "a ProgramError must carry at least one diagnostic"
    return info.value.diagnostics


def seen(d: Diagnostic) -> Seen:
    assert d.end_line == d.line, "every diagnostic here spans one line"
    return Seen(d.message, d.line, d.column, d.end_column, d.hint, d.code)


def only(text: str, **kwargs: object) -> Seen:
    (d,) = errors(text, **kwargs)
    assert d.severity == "error"
    return seen(d)


# -- the invalid corpus, rendered ------------------------------------------------------------------


def test_invalid_corpus_is_large_enough() -> None:
    assert len(BROKEN) >= 20


@pytest.mark.parametrize("path", BROKEN, ids=lambda p: p.name)
def test_invalid_corpus_renders_as_expected(path: Path) -> None:
    text = path.read_bytes().decode("utf-8")
    with pytest.raises(ProgramError) as info:
        compile_program(text, CATALOG)
    rendered = info.value.render(path.name) + "\n"
    expected_path = path.with_suffix(".expected")
    if os.environ.get("NSX_UPDATE_EXPECTED"):
        expected_path.write_bytes(rendered.encode("utf-8"))
    assert rendered == expected_path.read_bytes().decode("utf-8")


@pytest.mark.parametrize("path", BROKEN, ids=lambda p: p.name)
def test_check_returns_the_same_diagnostics_without_raising(path: Path) -> None:
    text = path.read_bytes().decode("utf-8")
    with pytest.raises(ProgramError) as info:
        compile_program(text, CATALOG)
    assert check(text, CATALOG) == info.value.diagnostics


# -- syntax ----------------------------------------------------------------------------------------


def test_unexpected_token() -> None:
    assert only("BOX0=LOC(image=IMAGE,object='muffin')\nANSWER0=COUNT(box=BOX0))\n") == Seen(
        "unexpected ')'", 2, 24, 25, "expected ';', a new line, the end of the program or an operator", "syntax"
    )


def test_unexpected_name_says_what_would_fit_there_only() -> None:
    # Inside a call a new line or ';' cannot come next, so the hint must not offer them.
    assert only("BOX0=LOC(image=IMAGE object='muffin')") == Seen(
        "unexpected name 'object'", 1, 22, 28, "expected '(', ')', ',' or an operator", "syntax"
    )


def test_unexpected_number_and_string() -> None:
    assert only("x = [1 2]") == Seen("unexpected number 2", 1, 8, 9, "expected ',', ']' or an operator", "syntax")
    assert only("x = VQA(IMAGE 'q')").message == "unexpected string 'q'"


def test_unexpected_keyword_or_operator() -> None:
    assert only("x = ==") == Seen("unexpected '=='", 1, 5, 7, "expected an expression", "syntax")
    assert only("= 1").message == "unexpected '='"


def test_unterminated_string() -> None:
    assert only("BOX0=LOC(image=IMAGE,object='muffin)\n") == Seen(
        "unterminated string", 1, 29, 30, "close it with ' on the same line", "syntax"
    )
    assert only('q = "what is it?\n').hint == 'close it with " on the same line'


def test_a_string_cannot_span_lines() -> None:
    assert only("q = 'what\nis it?'\n") == Seen(
        "unterminated string", 1, 5, 6, "close it with ' on the same line", "syntax"
    )


def test_unexpected_character() -> None:
    assert only("n = COUNT(box=BOX0) $ 2") == Seen(
        "unexpected character '$'", 1, 21, 22,
        "expected ';', a new line, the end of the program or an operator", "syntax",
    )
    assert only("x = 1 +\\\n 2") == Seen("unexpected character '\\\\'", 1, 8, 9, "expected an expression", "syntax")


def test_unexpected_end_points_after_the_last_thing_written() -> None:
    assert only("BOX0=LOC(image=IMAGE,object='muffin')\nANSWER0=COUNT(box=BOX0\n\n") == Seen(
        "unexpected end of program", 2, 23, 24, "expected ')', ',' or an operator", "syntax"
    )
    assert only("x = 1 +") == Seen("unexpected end of program", 1, 8, 9, "expected an expression", "syntax")


def test_unexpected_end_of_line() -> None:
    assert only("x = \ny = 2") == Seen("unexpected end of line", 1, 5, 6, "expected an expression", "syntax")


def test_syntax_errors_inside_eval_point_into_the_string() -> None:
    text = "ANSWER0=VQA(image=IMAGE,question='How many?')\nANSWER1=EVAL(expr=\"'yes' if {ANSWER0} > 2 'no'\")\n"
    assert only(text) == Seen("unexpected string 'no'", 2, 43, 47, "expected 'else' or an operator", "syntax")
    assert only("x = EVAL(expr='1 +')") == Seen(
        "unexpected end of program", 1, 19, 20, "expected an expression", "syntax"
    )


def test_a_keyword_at_the_start_of_a_name_is_part_of_the_name() -> None:
    # 'iffy' is one name, never 'if' + 'fy' (which, with fy defined, would compile to something else).
    assert only("fy = True\nx = 1 iffy else 2") == Seen(
        "unexpected name 'iffy'", 2, 7, 11, "expected ';', a new line, the end of the program or an operator", "syntax"
    )
    assert only("x = 1 inside [1]").message == "unexpected name 'inside'"
    assert only("a = True\nb = a xoracle").message == "unexpected name 'xoracle'"


@pytest.mark.parametrize("keyword", ["if", "else", "and", "or", "xor", "not", "in", "True", "False", "None"])
def test_keywords_are_reserved(keyword: str) -> None:
    # 'not', True, False and None may start an expression, so the error is the '=' after them.
    wrong = "'='" if keyword in ("not", "True", "False", "None") else f"'{keyword}'"
    assert only(f"{keyword} = 1").message == f"unexpected {wrong}"
    assert only(f"x = LOC(IMAGE, {keyword}=1)").code == "syntax"


def test_names_that_only_contain_keywords_are_fine() -> None:
    plan = compile_program("iffy = 1\ninside = 2\nnotable = iffy + inside\nNone_left = notable", CATALOG)
    assert plan.result.value == 3  # type: ignore[union-attr]


def test_a_syntax_error_does_not_hide_the_next_statements() -> None:
    # Parsing starts again at the next statement: each broken statement gets its own error, and only
    # its own (the '(' is closed on line 2, so lines 1-2 are one statement with one mistake).
    assert [seen(d) for d in errors("x = (\ny = )\nz = ]")] == [
        Seen("unexpected '='", 2, 3, 4, "expected '(', ')' or an operator", "syntax"),
        Seen("unexpected ']'", 3, 5, 6, "expected an expression", "syntax"),
    ]


NEXT_STATEMENT = "expected ';', a new line, the end of the program or an operator"


def test_every_statement_with_a_syntax_error_is_reported_in_source_order() -> None:
    text = "a = 1 2\nb = (3\nc = LOC(IMAGE, 'x')\nd = 4 5\ne = COUNT(box=)\n"
    assert [seen(d) for d in errors(text)] == [
        Seen("unexpected number 2", 1, 7, 8, NEXT_STATEMENT, "syntax"),
        Seen("'(' at 2:5 is never closed", 2, 5, 6, "close it with ')'", "syntax"),
        Seen("unexpected number 5", 4, 7, 8, NEXT_STATEMENT, "syntax"),
        Seen("unexpected ')'", 5, 15, 16, "expected an expression", "syntax"),
    ]


def test_a_statement_over_several_lines_is_one_statement_when_resuming() -> None:
    # The call's lines 2-4 belong to it: no errors for them, and the error after it is found.
    text = "x = 1 2\nBOX0 = LOC(\n    image=IMAGE,\n    object='muffin',\n)\ny = 3 4\n"
    assert [(d.line, d.column) for d in errors(text)] == [(1, 7), (6, 7)]
    # A missing comma inside a call closed on a later line is reported where it is, not as unclosed.
    text = "x = LOC(\n    image=IMAGE\n    object='a')\ny = $\n"
    assert [seen(d) for d in errors(text)] == [
        Seen("unexpected name 'object'", 3, 5, 11, "expected '(', ')', ',' or an operator", "syntax"),
        Seen("unexpected character '$'", 4, 5, 6, "expected an expression", "syntax"),
    ]


def test_the_next_line_of_a_string_left_open_is_not_a_second_error() -> None:
    # The string goes on to the next line's quote, as meant; the statement after it is checked.
    text = "q = 'what\nis it?'\nx = 1 2\n"
    assert [(d.message, d.line, d.column) for d in errors(text)] == [
        ("unterminated string", 1, 5), ("unexpected number 2", 3, 7),
    ]
    # VisProg's missing quote: the next line is a statement of its own.
    text = "BOX0=LOC(image=IMAGE,object='muffin)\nANSWER0=COUNT(box=BOX0) 3\n"
    assert [(d.message, d.line, d.column) for d in errors(text)] == [
        ("unterminated string", 1, 29), ("unexpected number 3", 2, 25),
    ]


def test_limit_and_literal_errors_do_not_hide_syntax_errors_either() -> None:
    text = "y = 1e999\nx = 1 2\nz = [[[[[1]]]]]\n"
    assert [(d.code, d.line, d.column) for d in errors(text, limits=SMALL)] == [
        ("number", 1, 5), ("syntax", 2, 7), ("limit", 3, 5),
    ]


def test_syntax_errors_hide_compile_errors() -> None:
    # Compiling around a broken statement would guess what it meant: fix the syntax first.
    assert [d.code for d in errors("x = FOO()\ny = 1 2")] == ["syntax"]


def test_the_number_of_syntax_errors_is_bounded() -> None:
    assert len(errors("x = 1 2\n" * 10, limits=Limits(max_statements=4))) == 4
    assert len(errors("=\n" * 30000)) == 1000


# -- brackets never closed -------------------------------------------------------------------------


def test_an_unclosed_bracket_is_reported_where_it_was_opened() -> None:
    # VisProg's dropped ')': without it, the parser would complain about the next line's 'ANSWER0'.
    text = "BOX0=LOC(image=IMAGE,object='muffin'\nANSWER0=COUNT(box=BOX0)\nFINAL_RESULT=RESULT(var=ANSWER0)\n"
    assert only(text) == Seen("'(' at 1:9 is never closed", 1, 9, 10, "close it with ')'", "syntax")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("x = [1, 2,\ny = 3", Seen("'[' at 1:5 is never closed", 1, 5, 6, "close it with ']'", "syntax")),
        ("x = {A\ny = 3", Seen("'{' at 1:5 is never closed", 1, 5, 6, "close it with '}'", "syntax")),
        ("x = (1 +\n\ny = 2\n", Seen("'(' at 1:5 is never closed", 1, 5, 6, "close it with ')'", "syntax")),
        # At the end of the program too, when the program goes on past the bracket's line.
        ("x = COUNT(\n  LOC(IMAGE, 'a')\n", Seen("'(' at 1:10 is never closed", 1, 10, 11, "close it with ')'",
                                                "syntax")),
        # A ']' closes the '[' (not the '(' opened after it), so the '(' is the one never closed.
        ("x = [1, (2\n]\n", Seen("'(' at 1:9 is never closed", 1, 9, 10, "close it with ')'", "syntax")),
    ],
)
def test_unclosed_brackets_of_every_kind(text: str, expected: Seen) -> None:
    assert only(text) == expected


def test_every_bracket_left_open_on_the_line_is_reported() -> None:
    assert [seen(d) for d in errors("x = COUNT(LOC(IMAGE, 'a'\ny = 2")] == [
        Seen("'(' at 1:10 is never closed", 1, 10, 11, "close it with ')'", "syntax"),
        Seen("'(' at 1:14 is never closed", 1, 14, 15, "close it with ')'", "syntax"),
    ]


def test_an_unclosed_bracket_does_not_hide_errors_on_its_later_lines() -> None:
    # The '(' ends its statement with its line; line 2 is then read on its own and has an error too.
    assert [seen(d) for d in errors("x = COUNT(\n  LOC(IMAGE, 'a') 5\ny = 2")] == [
        Seen("'(' at 1:10 is never closed", 1, 10, 11, "close it with ')'", "syntax"),
        Seen("unexpected number 5", 2, 19, 20, NEXT_STATEMENT, "syntax"),
    ]


def test_a_stray_closer_further_down_does_not_close_a_bracket_left_open() -> None:
    # One statement a line, as VisProg writes: line 3 starts a statement, so the '(' on line 2 is
    # never closed, whatever the extra ')' on line 5 would pair with; and lines 3-5 are checked.
    text = (
        "BOX0=LOC(image=LEFT,object='dog')\nANSWER0=COUNT(box=BOX0\nBOX1=LOC(image=RIGHT,object='dog')\n"
        "ANSWER1=COUNT(box=BOX1) 2\nFINAL_ANSWER=RESULT(var=ANSWER1))\n"
    )
    assert [seen(d) for d in errors(text)] == [
        Seen("'(' at 2:14 is never closed", 2, 14, 15, "close it with ')'", "syntax"),
        Seen("unexpected number 2", 4, 25, 26, NEXT_STATEMENT, "syntax"),
        Seen("unexpected ')'", 5, 33, 34, NEXT_STATEMENT, "syntax"),
    ]


def test_arguments_on_lines_of_their_own_are_not_statements() -> None:
    # 'image=' and 'object=' start lines, but the lines before them go on (',' and '('), and the
    # last one closes the call: one statement, whose missing comma is reported where it is.
    assert only("x = LOC(\nimage=IMAGE,\nobject='a')\ny = 1 2") == Seen(
        "unexpected number 2", 4, 7, 8, NEXT_STATEMENT, "syntax"
    )
    assert only("x = LOC(\nimage=IMAGE\nobject='a')\n") == Seen(
        "unexpected name 'object'", 3, 1, 7, "expected '(', ')', ',' or an operator", "syntax"
    )


def test_an_unclosed_bracket_noticed_on_its_own_line_keeps_the_parsers_words() -> None:
    # Here the parser's place is the place: where the ')' is missing, saying so.
    assert only("x = COUNT(box=LOC(IMAGE, 'a') 2\ny = 1") == Seen(
        "unexpected number 2", 1, 31, 32, "expected ')', ',' or an operator", "syntax"
    )


# -- modules and arguments -------------------------------------------------------------------------


def test_unknown_module_with_did_you_mean() -> None:
    assert only("BOX0=LCO(image=IMAGE,object='muffin')") == Seen(
        "unknown module 'LCO'", 1, 6, 9, "did you mean 'LOC'?", "unknown-module"
    )
    assert only("x = count(LOC(IMAGE, 'a'))").hint == "did you mean 'COUNT'?"


def test_unknown_module_without_a_close_name_has_no_hint() -> None:
    assert only("x = FROBNICATE(IMAGE)") == Seen("unknown module 'FROBNICATE'", 1, 5, 15, None, "unknown-module")


def test_unknown_module_is_reported_once_and_does_not_cascade() -> None:
    # The bad value is poisoned (typed Any): COUNT does not complain about it again.
    assert only("BOX0=LCO(image=IMAGE)\nn=COUNT(box=BOX0)\nm = n + 1").code == "unknown-module"


def test_errors_inside_arguments_of_an_unknown_module_are_still_found() -> None:
    assert [d.code for d in errors("x = FOO(image=IMAGS)")] == ["unknown-module", "undefined-variable"]


def test_unknown_argument_with_did_you_mean() -> None:
    # The misspelt argument is the missing one: no second error saying 'box' is missing.
    assert only("BOX0=LOC(image=IMAGE,object='x')\nn = COUNT(boxes=BOX0)") == Seen(
        "COUNT has no argument 'boxes'", 2, 11, 16, "did you mean 'box'?", "unknown-argument"
    )


def test_unknown_argument_without_a_close_name_lists_the_arguments() -> None:
    assert only("x = LOC(image=IMAGE, object='a', threshold=0.5)") == Seen(
        "LOC has no argument 'threshold'", 1, 34, 43, "LOC takes image, object", "unknown-argument"
    )


def test_missing_argument() -> None:
    assert only("OBJ0=SEG(image=IMAGE)\nOBJ1=SELECT(image=IMAGE,object=OBJ0)") == Seen(
        "SELECT is missing argument 'query' (Text)", 2, 6, 12, "add query=…", "missing-argument"
    )


def test_duplicate_argument() -> None:
    assert only("BOX0=LOC(image=IMAGE,object='cat',object='dog')") == Seen(
        "argument 'object' is given twice", 1, 35, 41, None, "duplicate-argument"
    )


def test_keyword_repeating_a_positional_argument_is_a_duplicate() -> None:
    assert only("BOX0=LOC(IMAGE, 'cat', image=LEFT)") == Seen(
        "argument 'image' is given twice", 1, 24, 29, None, "duplicate-argument"
    )


def test_too_many_positional_arguments() -> None:
    assert only("BOX0 = LOC(IMAGE, 'cat', 0.5)") == Seen(
        "LOC takes 2 arguments, got 3", 1, 26, 29, "LOC(image, object)", "argument"
    )
    assert only("n = COUNT(LOC(IMAGE, 'a'), 2)").message == "COUNT takes 1 argument, got 2"


def test_positional_after_keyword() -> None:
    # Only this error: the stray argument must not also bind to 'image' and be called a duplicate.
    assert only("BOX0 = LOC(image=IMAGE, 'cat')") == Seen(
        "positional argument after a keyword argument", 1, 25, 30, "name it, e.g. object=…", "argument"
    )


def test_wrong_argument_type() -> None:
    assert only("n = COUNT(box=IMAGE)") == Seen("COUNT expects Objects for 'box', got Image", 1, 15, 20, None, "type")
    assert only("x = CLASSIFY(IMAGE, SEG(IMAGE), 'cat')").message == (
        "CLASSIFY expects List[Text] for 'categories', got Text"
    )
    assert only("x = CLASSIFY(IMAGE, SEG(IMAGE), [1, 2])").message == (
        "CLASSIFY expects List[Text] for 'categories', got List[Number]"
    )


def test_wrong_type_of_a_module_result() -> None:
    text = "IMAGE0=CROP(image=IMAGE,box=LOC(image=IMAGE,object='a'))\nANSWER0=COUNT(box=IMAGE0)"
    assert only(text) == Seen("COUNT expects Objects for 'box', got Image", 2, 19, 25, None, "type")


def test_none_where_a_value_is_required() -> None:
    assert only("BOX0=LOC(image=IMAGE,object=None)") == Seen(
        "LOC's 'object' cannot be None", 1, 29, 33, "give a Text", "type"
    )


def test_value_outside_its_allowed_set() -> None:
    assert only("x = SORT(box=LOC(IMAGE, 'ball'), by='are')") == Seen(
        "SORT's 'by' must be one of 'x', 'y', 'area', 'score'; got 'are'", 1, 37, 42, "did you mean 'area'?", "choice"
    )
    assert only("x = SORT(LOC(IMAGE, 'ball'), 'size')").hint is None


def test_a_computed_constant_is_checked_against_the_allowed_set_too() -> None:
    assert only("x = SORT(LOC(IMAGE, 'ball'), 'ar' + 'ee')").code == "choice"


# -- variables -------------------------------------------------------------------------------------


def test_use_before_definition() -> None:
    assert only("ANSWER0=COUNT(box=BOX0)\nBOX0=LOC(image=IMAGE,object='muffin')") == Seen(
        "'BOX0' is used before it is defined", 1, 19, 23, "it is assigned on line 2", "use-before-definition"
    )


def test_a_variable_cannot_use_itself() -> None:
    assert only("x = x + 1").code == "use-before-definition"


def test_undefined_variable_did_you_mean() -> None:
    assert only("BOX0=LOC(image=IMAGE,object='muffin')\nANSWER0=COUNT(box=BOX)") == Seen(
        "undefined variable 'BOX'", 2, 19, 22, "did you mean 'BOX0'?", "undefined-variable"
    )


def test_undefined_variable_lists_the_inputs_when_nothing_is_close() -> None:
    assert only("x = COUNT(box=ZEBRA)").hint == "inputs of this program: IMAGE, LEFT, RIGHT"
    assert only("x = LOC(PHOTO, 'a')", inputs={}).hint is None
    assert only("x = LOC(PHOTOS, 'a')", inputs={"PHOTO": IMAGE}).hint == "did you mean 'PHOTO'?"


# -- EVAL ------------------------------------------------------------------------------------------


def test_eval_placeholder_naming_an_undefined_variable_points_inside_the_string() -> None:
    text = "ANSWER0=VQA(image=LEFT,question='q')\nANSWER2=EVAL(expr='{ANSWER0} + {ANSWER3} == 3')"
    assert only(text) == Seen(
        "undefined variable 'ANSWER3'", 2, 32, 41, "did you mean 'ANSWER0'?", "undefined-variable"
    )


def test_eval_placeholder_column_counts_escapes_in_the_source() -> None:
    # Each \' is two characters of source but one of the string: the caret must follow the source.
    text = "A=VQA(image=IMAGE,question='q')\nB=EVAL(expr='\\'{A}\\' == \\'x\\' or \\'{AA}\\' == \\'y\\'')"
    line = text.splitlines()[1]
    d = only(text)
    assert d == Seen("undefined variable 'AA'", 2, line.index("{AA}") + 1, line.index("{AA}") + 5, "did you mean 'A'?",
                     "undefined-variable")


def test_eval_placeholder_column_after_unicode_and_hex_escapes() -> None:
    text = "A=VQA(image=IMAGE,question='q')\nB=EVAL(expr=\"'caf\\u00e9\\x21' + '{Z}'\")"
    line = text.splitlines()[1]
    assert only(text).column == line.index("{Z}") + 1


def test_eval_placeholder_on_a_later_line_of_a_multiline_call() -> None:
    text = "A = VQA(IMAGE, 'q')\nB = EVAL(\n    expr='{A} + {B2}',\n)"
    column = text.splitlines()[2].index("{B2}") + 1
    assert only(text) == Seen("undefined variable 'B2'", 3, column, column + 4,
                              "inputs of this program: IMAGE, LEFT, RIGHT", "undefined-variable")


def test_eval_with_a_non_literal_expression() -> None:
    assert only("EXPR0='1 + 1'\nANSWER0=EVAL(expr=EXPR0)") == Seen(
        "EVAL's 'expr' must be a string literal", 2, 19, 24,
        "write the expression itself, without EVAL, to compute it from variables", "eval",
    )
    assert only("x = EVAL(expr=3)").code == "eval"


def test_eval_cannot_call_modules() -> None:
    assert only("ANSWER0=EVAL(expr=\"COUNT(box=LOC(image=IMAGE,object='cat')) > 1\")") == Seen(
        "an EVAL string cannot call modules", 1, 20, 60, "call the module in its own statement and use {VAR}", "eval"
    )


def test_text_placeholder_of_a_value_without_text() -> None:
    text = "BOX0=LOC(image=IMAGE,object='cat')\nA=EVAL(expr=\"'{BOX0}' + ' cats'\")"
    column = text.splitlines()[1].index("{BOX0}") + 1
    assert only(text) == Seen("'{BOX0}' is Objects, which has no text form", 2, column, column + 6, None, "type")


def test_placeholder_outside_eval() -> None:
    assert only("BOX0=LOC(image=IMAGE,object='muffin')\nANSWER0=COUNT(box={BOX0})") == Seen(
        "'{BOX0}' is only meaningful inside an EVAL string", 2, 19, 25, "write BOX0", "placeholder"
    )


TEMPLATE = "it looks like a prompt-template placeholder, which must be filled in before the program is sent: "


def test_a_prompt_template_placeholder_says_it_must_be_filled_in() -> None:
    # VisProg's prompt has '{list_max}' for the caller to fill in; sent as is, it names no variable.
    assert only("LIST0=LIST(query='members of the Beatles',max={list_max})") == Seen(
        "'{list_max}' is only meaningful inside an EVAL string", 1, 47, 57,
        TEMPLATE + "replace {list_max} with a value, e.g. max=5", "placeholder",
    )


@pytest.mark.parametrize(
    ("text", "column", "hint"),
    [
        ("x = LOC(IMAGE, object={object})", 23, "replace {object} with a value, e.g. object='…'"),
        ("x = SORT(LOC(IMAGE, 'a'), descending={desc})", 38, "replace {desc} with a value, e.g. descending=True"),
        ("x = CROP(image={image}, box=LOC(IMAGE, 'a'))", 16, "replace {image} with a value"),
        ("x = {n} + 1", 5, "replace {n} with a value"),
        ("x = RESULT(var={answer})", 16, "replace {answer} with a value"),
        ("x = EVAL(expr={expression})", 15, "replace {expression} with a value"),
    ],
)
def test_template_placeholder_hints(text: str, column: int, hint: str) -> None:
    d = only(text)
    assert (d.message.split("'")[1], d.column, d.hint, d.code) == (
        text[column - 1 : d.end_column - 1], column, TEMPLATE + hint, "placeholder"
    )


def test_a_placeholder_naming_a_known_variable_or_input_says_write_it() -> None:
    assert only("n = COUNT(LOC(IMAGE, 'a'))\nx = {n} + 1").hint == "write n"
    assert only("x = LOC({IMAGE}, 'a')") == Seen(
        "'{IMAGE}' is only meaningful inside an EVAL string", 1, 9, 16, "write IMAGE", "placeholder"
    )
    assert only("x = LOC({PHOTO}, 'a')", inputs={"PHOTO": IMAGE}).hint == "write PHOTO"
    # Assigned later is still the program's variable (writing it then says it is used too early).
    assert only("x = COUNT(box={B})\nB = LOC(IMAGE, 'a')").hint == "write B"


def test_a_placeholder_is_a_compile_error_among_the_others() -> None:
    assert [(d.code, d.line) for d in errors("x = VQA(IMAGE, {question})\ny = FOO()")] == [
        ("placeholder", 1), ("unknown-module", 2),
    ]


def test_braces_in_an_ordinary_string_are_just_text() -> None:
    compile_program("q = VQA(IMAGE, 'what is {X}?')", CATALOG)


# -- expressions -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "message", "column", "end_column"),
    [
        ("a = n + name", "'+' needs two Numbers or two Texts, got Number and Text", 5, 13),
        ("a = name * 2", "'*' needs Numbers, got Text and Number", 5, 13),
        ("a = -name", "'-' needs a Number, got Text", 5, 10),
        ("a = name < 3", "cannot compare Text < Number", 5, 13),
        ("a = 1 < n < name", "cannot compare Number < Text", 5, 17),
        ("a = n in 5", "'in' needs a Text or a List on its right, got Number", 10, 11),
        ("a = SEG(IMAGE) + 1", "'+' needs two Numbers or two Texts, got Objects and Number", 5, 19),
        ("a = IMAGE > 1", "cannot compare Image > Number", 5, 14),
    ],
)
def test_type_errors_in_expressions(line: str, message: str, column: int, end_column: int) -> None:
    text = f"n = COUNT(LOC(IMAGE, 'dog'))\nname = VQA(IMAGE, 'name?')\n{line}"
    assert only(text) == Seen(message, 3, column, end_column, None, "type")


def test_type_errors_inside_eval_strings() -> None:
    text = "n = COUNT(LOC(IMAGE, 'dog'))\nx = EVAL(expr=\"{n} + 'a'\")"
    assert only(text) == Seen("'+' needs two Numbers or two Texts, got Number and Text", 2, 16, 25, None, "type")


def test_constant_expression_failures_are_compile_errors() -> None:
    # The span ends at the inner expression: parentheses are not nodes of the tree.
    assert only("ratio = 1 / (2 - 2)") == Seen("division by zero", 1, 9, 19, None, "eval")
    assert only("x = 10 ** 400").message == "'**' overflowed"
    assert only("x = EVAL(expr='1 % 0')").message == "division by zero"


def test_number_out_of_range() -> None:
    assert only("x = 1e999") == Seen("number 1e999 is out of range", 1, 5, 10, None, "number")


# -- limits ----------------------------------------------------------------------------------------

SMALL = Limits(max_bytes=200, max_statements=3, max_depth=4, max_list=3, max_number_digits=5)


def test_program_size_limit() -> None:
    assert only("x = 1\n" * 40, limits=SMALL) == Seen("program is 240 bytes; the limit is 200", 1, 1, 2, None, "limit")


def test_program_size_counts_bytes_not_characters() -> None:
    # 'é' is one character and two bytes of UTF-8; the limit is about memory, so bytes count.
    assert only("x = '" + "é" * 98 + "'", limits=SMALL).message == "program is 202 bytes; the limit is 200"


def test_statement_limit_points_at_the_first_statement_over() -> None:
    assert only("a = 1\nb = 2\nc = 3\nd = 4\ne = 5", limits=SMALL) == Seen(
        "program has 5 statements; the limit is 3", 4, 1, 6, None, "limit"
    )


def test_nesting_limit() -> None:
    assert only("x = [[[[[1]]]]]", limits=SMALL) == Seen(
        "expression is nested too deeply (more than 4 levels)", 1, 5, 16, "split it into several statements", "limit"
    )
    assert only("x = 1 + 2 + 3 + 4 + 5 + 6", limits=SMALL).code == "limit"
    assert only("x = not not not not not True", limits=SMALL).code == "limit"
    assert only("x = COUNT(PICK(PICK(PICK(PICK(LOC(IMAGE, 'a'))))))", limits=SMALL).code == "limit"


def test_nesting_limit_applies_inside_eval() -> None:
    assert only("x = EVAL(expr='1 + 2 + 3 + 4 + 5 + 6')", limits=SMALL) == Seen(
        "expression is nested too deeply (more than 4 levels)", 1, 16, 37, "split it into several statements", "limit"
    )


def test_default_nesting_limit_stops_hostile_input() -> None:
    assert only("x = " + "[" * 500 + "]" * 500).code == "limit"
    assert only("x = " + "not " * 500 + "True").code == "limit"
    assert only("x = " + " + ".join(["1"] * 500)).code == "limit"


def test_parentheses_and_signs_alone_do_not_nest() -> None:
    # They build no node (a sign folds into its number), so they cost no depth and no recursion.
    assert compile_program("x = " + "(" * 5000 + "1" + ")" * 5000, CATALOG).result.value == 1  # type: ignore[union-attr]
    assert compile_program("x = " + "-(" * 500 + "1" + ")" * 500, CATALOG).result.value == 1  # type: ignore[union-attr]


def test_list_length_limit() -> None:
    assert only("x = CLASSIFY(IMAGE, SEG(IMAGE), ['a', 'b', 'c', 'd'])", limits=SMALL) == Seen(
        "list has 4 items; the limit is 3", 1, 33, 53, None, "limit"
    )


def test_long_number_literal_limit() -> None:
    assert only("x = PICK(LOC(IMAGE, 'a'), 123456)", limits=SMALL) == Seen(
        "number literal is too long (more than 5 characters)", 1, 27, 33, None, "limit"
    )
    assert only("x = " + "9" * 65).message == "number literal is too long (more than 64 characters)"


def test_limits_apply_to_parse_and_format_too() -> None:
    for call in (lambda: parse("x = 1\n" * 40, SMALL), lambda: format_program("x = 1\n" * 40, SMALL)):
        with pytest.raises(ProgramError) as info:
            call()
        assert info.value.diagnostics[0].code == "limit"


# -- whole programs --------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["", "\n\n", "   ", "# only a comment\n", ";;\n;", "\r\n# c\r\n"])
def test_empty_program(text: str) -> None:
    assert only(text) == Seen(
        "program is empty", 1, 1, 2,
        "write at least one statement, e.g. ANSWER = COUNT(box=LOC(image=IMAGE, object='dog'))", "empty",
    )


def test_several_diagnostics_in_one_pass_in_source_order() -> None:
    text = (
        "OBJ0=FACEDET(image=IMAGE)\n"
        "LIST0=LIST(query='members of the Beatles',max='four')\n"
        "OBJ1=CLASIFY(image=IMAGE,object=OBJ0,categories=LIST0)\n"
        "IMAGE0=TAG(image=IMAGE,objects=OBJ1)\n"
        "FINAL_RESULT=RESULT(var=IMAGE1)\n"
    )
    assert [seen(d) for d in errors(text)] == [
        Seen("LIST expects Number for 'max', got Text", 2, 47, 53, None, "type"),
        Seen("unknown module 'CLASIFY'", 3, 6, 13, "did you mean 'CLASSIFY'?", "unknown-module"),
        Seen("TAG has no argument 'objects'", 4, 24, 31, "did you mean 'object'?", "unknown-argument"),
        Seen("undefined variable 'IMAGE1'", 5, 25, 31, "did you mean 'IMAGE'?", "undefined-variable"),
    ]


def test_several_errors_on_one_line_are_ordered_by_column() -> None:
    diagnostics = errors("x = LOC(IMAGE, objekt='a', image=IMAGE, q=1)")
    assert [(d.column, d.code) for d in diagnostics] == [
        (16, "unknown-argument"), (28, "duplicate-argument"), (41, "unknown-argument"),
    ]


def test_unused_variable_warning() -> None:
    text = "BOX0=LOC(image=IMAGE,object='cat')\nBOX1=LOC(image=IMAGE,object='dog')\nANSWER0=COUNT(box=BOX0)\n"
    (w,) = check(text, CATALOG)
    assert (w.message, w.line, w.column, w.end_column, w.code, w.severity) == (
        "'BOX1' is assigned but never used", 2, 1, 5, "unused", "warning"
    )
    # A warning never stops compilation; the plan carries it.
    assert compile_program(text, CATALOG).warnings == (w,)
    assert w.render(text, "p.nsx") == (
        "p.nsx:2:1: warning: 'BOX1' is assigned but never used\n"
        "    BOX1=LOC(image=IMAGE,object='dog')\n"
        "    ^^^^"
    )


def test_the_result_and_variables_it_names_are_not_unused() -> None:
    assert check("A = COUNT(LOC(IMAGE, 'a'))\nFINAL = RESULT(var=A)\nB = 2", CATALOG) == [
        Diagnostic("'B' is assigned but never used", 3, 1, 3, 2, None, "unused", "warning")
    ]
    assert check("A = COUNT(LOC(IMAGE, 'a'))", CATALOG) == []


def test_warnings_accompany_errors_only_as_errors_in_check() -> None:
    # check() on a broken program gives the errors (what must be fixed first), not the warnings.
    assert [d.severity for d in check("A = 1\nB = FOO()", CATALOG)] == ["error"]


# -- rendering -------------------------------------------------------------------------------------


def test_render_shows_file_place_message_hint_line_and_caret() -> None:
    with pytest.raises(ProgramError) as info:
        compile_program("BOX0 = LOC(image=IMAGE, object='x')\nn = COUNT(boxes=BOX0)\n", CATALOG)
    assert info.value.render("prog.nsx") == (
        "prog.nsx:2:11: error: COUNT has no argument 'boxes'; did you mean 'box'?\n"
        "    n = COUNT(boxes=BOX0)\n"
        "              ^^^^^"
    )
    assert str(info.value) == info.value.render()
    assert info.value.render().startswith("<program>:2:11: error: ")


def test_render_of_a_long_line_shows_a_window_around_the_place() -> None:
    text = "x = VQA(IMAGE, '" + "a" * 150 + "') + 1"
    rendered = errors(text)[0].render(text)
    source_line, caret = rendered.splitlines()[1:]
    assert len(source_line) == 4 + 100 + 1 and source_line.endswith("…")
    # The caret starts under the expression and stops at the edge of the window.
    assert caret.index("^") == source_line.index("VQA")
    assert len(caret) == len(source_line) - 1


def test_render_replaces_tabs_so_the_caret_lines_up() -> None:
    text = "x = 1\n\ty = COUNT(box=IMAGE)"
    rendered = errors(text)[0].render(text).splitlines()
    assert rendered[1] == "     y = COUNT(box=IMAGE)"
    assert rendered[2].index("^") == rendered[1].index("IMAGE")


def test_diagnostics_serialize_for_the_api() -> None:
    d = errors("n = COUNT(box=IMAGE)")[0]
    assert d.to_dict() == {
        "message": "COUNT expects Objects for 'box', got Image", "line": 1, "column": 15, "end_line": 1,
        "end_column": 20, "hint": None, "code": "type", "severity": "error",
    }


def test_only_strings_are_programs() -> None:
    # A caller's bug (not the user's): a plain TypeError, not a diagnostic.
    with pytest.raises(TypeError):
        parse(b"x = 1")  # type: ignore[arg-type]
