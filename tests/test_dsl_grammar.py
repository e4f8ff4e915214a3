"""The grammar names every terminal, and the Python around it uses only those names: Lark's own
names for unnamed terminals (``__ANON_0``) follow their order in the grammar and change with it."""

from __future__ import annotations

import ast
from pathlib import Path

import program_dsl
from program_dsl.lalr import lark_parser
from program_dsl.syntax_errors import TERMINALS_USED

PACKAGE = Path(program_dsl.__file__).parent


def test_no_terminal_has_a_generated_name() -> None:
    parser = lark_parser()
    names = [t.name for t in parser.terminals]
    assert names, "the parser has terminals"
    assert [n for n in names if n.startswith("__")] == []
    assert all(not n.startswith("__") for n in parser.ignore_tokens)


def test_every_terminal_the_code_names_is_in_the_grammar() -> None:
    names = {t.name for t in lark_parser().terminals}
    assert sorted(TERMINALS_USED - names) == []


def test_the_code_spells_no_generated_terminal_name() -> None:
    for path in sorted(PACKAGE.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                assert "__ANON" not in node.value and "__IGNORE" not in node.value, f"{path.name}:{node.lineno}"


def test_operators_and_keywords_are_named_terminals() -> None:
    by_text = {t.pattern.value: t.name for t in lark_parser().terminals if t.pattern.type == "str"}
    assert {k: by_text[k] for k in ("==", "!=", "<", "<=", ">", ">=", "**", "=")} == {
        "==": "EQ", "!=": "NE", "<": "LT", "<=": "LE", ">": "GT", ">=": "GE", "**": "POW", "=": "ASSIGN",
    }
    assert {by_text[k] for k in ("if", "else", "and", "or", "xor", "not", "in", "True", "False", "None")} == {
        "IF", "ELSE", "AND", "OR", "XOR", "NOT", "IN", "TRUE", "FALSE", "NONE",
    }


def test_the_basic_lexer_reads_a_name_that_starts_with_a_keyword_as_a_name() -> None:
    tokens = [(t.type, str(t)) for t in lark_parser().lex("iffy in inside notable if")]
    assert tokens == [("NAME", "iffy"), ("IN", "in"), ("NAME", "inside"), ("NAME", "notable"), ("IF", "if")]
