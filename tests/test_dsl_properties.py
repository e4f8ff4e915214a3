"""Properties over generated programs: well-typed programs always compile and keep their plan
through formatting and renaming; any text at all fails only with ProgramError, within bounds.

The generator reads module signatures from the catalog, so new modules are covered as they come,
as long as their parameters use types it can build (see ``Gen.expr``).
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modules.catalog import declared_catalog
from modules.core import SIGNATURES as CORE
from program_dsl import (
    EvalError,
    Limits,
    ProgramError,
    Signature,
    compile_program,
    decode_string,
    evaluate,
    format_program,
    parse,
    parse_expression,
    quote_string,
)
from program_dsl.syntax import Literal

CATALOG = declared_catalog(*CORE)
CORPUS = sorted((Path(__file__).parent / "corpus").glob("*/*.nsx"))
CORPUS_TEXTS = [p.read_bytes().decode("utf-8") for p in CORPUS]

# Shared by every test here; the whole file should stay well under a minute on two cores.
SETTINGS = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
# A program of a few statements compiles in about a millisecond; anything near this is a hang.
SLOW = 2.0

SCALARS = ("Number", "Bool", "Text")
WORDS = st.text(alphabet="abcdefghij klmnop", min_size=0, max_size=10)


# -- a generator of well-typed programs ------------------------------------------------------------


@dataclass
class Gen:
    """Draws one well-typed program, statement by statement, tracking each variable's type.

    Compound sub-expressions are always parenthesised, so generation never depends on precedence;
    the formatter then has to work out which parentheses it can drop without changing the plan.
    """

    draw: Callable[[st.SearchStrategy[Any]], Any]
    vars: dict[str, list[str]] = field(default_factory=lambda: {"Image": ["IMAGE", "LEFT", "RIGHT"]})
    count: int = 0

    def modules(self, typ: str, leaf: bool = False) -> list[Signature]:
        """Modules returning ``typ``; a leaf needs no Objects (only calls make those), so the
        recursion ends when the depth runs out."""
        return [
            s for s in CATALOG.values()
            if str(s.returns) == typ and all(self.can_build(p.type) for p in s.params)
            and not (leaf and any(str(p.type) == "Objects" for p in s.params))
        ]

    @staticmethod
    def can_build(typ: object) -> bool:
        return str(typ) in {"Image", "Objects", "Number", "Bool", "Text", "List[Text]", "List[Number]"}

    def pick(self, options: list[str]) -> str:
        return self.draw(st.sampled_from(options))

    def expr(self, typ: str, depth: int) -> str:
        options = []
        if self.vars.get(typ):
            options.append("var")
        if depth > 0 and self.modules(typ):
            options.append("call")
        if typ in SCALARS or typ.startswith("List["):
            options += ["literal", "operator"] if depth > 0 else ["literal"]
        if not options:  # Objects with no depth left and no variable yet: one more call it is
            options = ["leaf"]
        kind = self.pick(options)
        if kind == "var":
            return self.pick(self.vars[typ])
        if kind in ("call", "leaf"):
            return self.call(self.pick([s.name for s in self.modules(typ, leaf=kind == "leaf")]), max(depth - 1, 0))
        if kind == "literal":
            return self.literal(typ)
        return self.operator(typ, depth - 1)

    def literal(self, typ: str) -> str:
        if typ == "Number":
            number = self.draw(st.one_of(st.integers(-1000, 1000), st.floats(0, 1000, allow_nan=False)))
            return repr(number)
        if typ == "Bool":
            return self.pick(["True", "False"])
        if typ == "Text":
            quote = self.pick(["'", '"'])
            return quote + self.draw(WORDS) + quote
        item = typ[5:-1]
        items = [self.literal(item) for _ in range(self.draw(st.integers(1, 3)))]
        return "[" + ", ".join(items) + self.pick(["", ","]) + "]"

    def operator(self, typ: str, depth: int) -> str:
        e = self.expr
        if typ == "Number":
            form = self.pick(["arith", "divide", "power", "neg", "if"])
            if form == "arith":
                return f"({e('Number', depth)} {self.pick(['+', '-', '*'])} {e('Number', depth)})"
            if form == "divide":  # a non-zero literal divisor: folding must not divide by zero
                return f"({e('Number', depth)} {self.pick(['/', '//', '%'])} {self.draw(st.integers(1, 9))})"
            if form == "power":
                return f"({e('Number', depth)} ** {self.draw(st.integers(0, 3))})"
            if form == "neg":
                return f"-({e('Number', depth)})"
            return f"({e('Number', depth)} if {e('Bool', depth)} else {e('Number', depth)})"
        if typ == "Bool":
            form = self.pick(["compare", "chain", "text", "in", "logic", "not"])
            if form == "compare":
                return f"({e('Number', depth)} {self.pick(['<', '<=', '>', '>=', '==', '!='])} {e('Number', depth)})"
            if form == "chain":
                return f"({e('Number', depth)} < {e('Number', depth)} <= {e('Number', depth)})"
            if form == "text":
                return f"({e('Text', depth)} {self.pick(['==', '!=', 'in'])} {e('Text', depth)})"
            if form == "in":
                return f"({e('Text', depth)} in {e('List[Text]', depth)})"
            if form == "logic":
                return f"({e('Bool', depth)} {self.pick(['and', 'or', 'xor'])} {e('Bool', depth)})"
            return f"(not {e('Bool', depth)})"
        if typ == "Text":
            if self.pick(["concat", "if"]) == "concat":
                return f"({e('Text', depth)} + {e('Text', depth)})"
            return f"({e('Text', depth)} if {e('Bool', depth)} else {e('Text', depth)})"
        item = typ[5:-1]
        return "[" + ", ".join(e(item, depth) for _ in range(self.draw(st.integers(1, 3)))) + "]"

    def call(self, name: str, depth: int) -> str:
        sig = CATALOG[name]
        values: list[tuple[str, str]] = []
        for p in sig.params:
            if not p.required and self.draw(st.booleans()):
                continue  # leave it to its default
            if p.choices is not None:
                value = repr(self.draw(st.sampled_from(p.choices)))
            elif p.default is None and self.draw(st.booleans()):
                value = "None"
            else:
                value = self.expr(str(p.type), depth)
            values.append((p.name, value))
        # Positional for a prefix that has no gaps, keywords (in any order) for the rest.
        gapless = 0
        while gapless < len(values) and values[gapless][0] == sig.params[gapless].name:
            gapless += 1
        positional = self.draw(st.integers(0, gapless))
        keywords = self.draw(st.permutations(values[positional:]))
        args = [v for _, v in values[:positional]] + [f"{k}={v}" for k, v in keywords]
        sep = self.pick([",", ", ", ",\n    "])
        trailing = self.pick(["", ","]) if args else ""
        return f"{name}(" + sep.join(args) + trailing + ")"

    def eval_call(self, typ: str) -> str:
        """VisProg's EVAL over earlier scalars: ``{N}`` for numbers and bools, ``'{T}'`` for texts."""

        def term(t: str) -> str:
            known = self.vars.get(t, [])
            if known and self.draw(st.booleans()):
                name = self.pick(known)
                return f"'{{{name}}}'" if t == "Text" else f"{{{name}}}"
            return self.literal(t).replace('"', "'")

        if typ == "Number":
            body = f"{term('Number')} {self.pick(['+', '-', '*'])} {term('Number')}"
        elif typ == "Bool":
            body = self.pick([
                f"{term('Number')} > {term('Number')}",
                f"{term('Text')} == {term('Text')}",
                f"{term('Bool')} xor {term('Bool')}",
                f"{term('Bool')} and not {term('Bool')}",
            ])
        else:
            body = f"{term('Text')} if {term('Number')} >= {term('Number')} else {term('Text')}"
        return f'EVAL(expr="{body}")'

    def statement(self) -> str:
        typ = self.pick(["Image", "Objects", "Number", "Bool", "Text", "List[Text]"])
        form = self.pick(["assign", "assign", "assign", "eval", "expr"]) if typ in SCALARS else "assign"
        value = self.eval_call(typ) if form == "eval" else self.expr(typ, self.draw(st.integers(0, 3)))
        if form == "expr":
            return value
        name = f"v{self.count}"
        self.count += 1
        self.vars.setdefault(typ, []).append(name)
        return f"{name} = {value}"

    def program(self) -> str:
        statements = [self.statement() for _ in range(self.draw(st.integers(1, 8)))]
        every: list[str] = [n for names in self.vars.values() for n in names if n.startswith("v")]
        if every and self.draw(st.booleans()):
            statements.append(f"FINAL_RESULT = RESULT(var={self.pick(every)})")
        out = []
        for s in statements:
            out.append(s)
            out.append(self.pick(["\n", "\n", "\n\n", "; ", "\r\n", "  # why\n", "\n# a comment line\n"]))
        return "".join(out)


@st.composite
def programs(draw: Callable[[st.SearchStrategy[Any]], Any]) -> str:
    return Gen(draw).program()


def rename(text: str) -> str:
    """Every generated variable under another name (strings hold no digits, so no false hits)."""
    return re.sub(r"\bv(\d+)\b", lambda m: f"renamed_{int(m.group(1)) * 7 + 3}", text)


def compiles(text: str, limits: Limits | None = None) -> bool:
    """True if ``text`` compiles, False if it fails with ProgramError; anything else propagates."""
    start = time.perf_counter()
    try:
        compile_program(text, CATALOG, limits=limits) if limits else compile_program(text, CATALOG)
        ok = True
    except ProgramError as e:
        assert e.diagnostics and all(d.line >= 1 and d.column >= 1 for d in e.diagnostics)
        # In source order, each within the text (syntax errors come from every statement now).
        places = [(d.line, d.column) for d in e.diagnostics]
        assert places == sorted(places) and all(d.line <= text.count("\n") + 1 for d in e.diagnostics)
        e.render("fuzz.nsx")  # rendering must not fail either
        ok = False
    assert time.perf_counter() - start < SLOW
    return ok


# -- well-typed programs ---------------------------------------------------------------------------


@settings(SETTINGS, max_examples=200)
@given(programs())
def test_generated_programs_compile_and_keep_their_plan_through_format(text: str) -> None:
    plan = compile_program(text, CATALOG)
    formatted = format_program(text)
    assert format_program(formatted) == formatted
    assert compile_program(formatted, CATALOG).fingerprint() == plan.fingerprint()


@settings(SETTINGS, max_examples=100)
@given(programs())
def test_generated_programs_do_not_depend_on_variable_names_or_line_ends(text: str) -> None:
    fingerprint = compile_program(text, CATALOG).fingerprint()
    assert compile_program(rename(text), CATALOG).fingerprint() == fingerprint
    assert compile_program(text.replace("\r\n", "\n").replace("\n", "\r\n"), CATALOG).fingerprint() == fingerprint


MARKS = ("EVAL(", "RESULT(", "LOC(", "COUNT(", " xor ", " if ", "[", "\r\n", ";", "#")


def test_the_generator_reaches_every_kind_of_statement() -> None:
    # Guard against a generator that silently stopped producing some form.
    seen: set[str] = set()

    @settings(max_examples=60, deadline=None, database=None)
    @given(programs())
    def collect(text: str) -> None:
        seen.update(m for m in MARKS if m in text)

    collect()
    assert {"EVAL(", "RESULT(", "LOC(", "COUNT(", " if ", "[", ";"} <= seen, seen


# -- any text at all -------------------------------------------------------------------------------


@settings(SETTINGS, max_examples=400)
@given(st.text(max_size=200))
def test_random_text_fails_only_with_program_error(text: str) -> None:
    compiles(text)


PROGRAM_CHARS = "abcxyzIMAGELOCOUNT_019 .=()[]{},;:'\"\\#\n\r\t+-*/%<>!"


@settings(SETTINGS, max_examples=400)
@given(st.text(alphabet=PROGRAM_CHARS, max_size=120))
def test_program_like_text_fails_only_with_program_error(text: str) -> None:
    # Mostly the program's own characters, so the parser gets deep before it fails.
    compiles(text)


@st.composite
def mutants(draw: Callable[[st.SearchStrategy[Any]], Any]) -> str:
    text: str = draw(st.sampled_from(CORPUS_TEXTS))
    for _ in range(draw(st.integers(1, 6))):
        at = draw(st.integers(0, len(text)))
        op = draw(st.sampled_from(["insert", "delete", "replace", "duplicate"]))
        char = draw(st.one_of(st.sampled_from(PROGRAM_CHARS), st.characters()))
        if op == "insert":
            text = text[:at] + char + text[at:]
        elif op == "delete":
            text = text[:at] + text[at + 1 :]
        elif op == "replace":
            text = text[:at] + char + text[at + 1 :]
        else:  # a whole slice again: repeats calls, arguments, lines
            end = draw(st.integers(at, min(len(text), at + 40)))
            text = text[:end] + text[at:end] + text[end:]
    return text


@settings(SETTINGS, max_examples=500)
@given(mutants())
def test_mutated_corpus_programs_fail_only_with_program_error(text: str) -> None:
    if compiles(text):
        # A mutant that still compiles is a program like any other: format must keep its plan.
        formatted = format_program(text)
        assert compile_program(formatted, CATALOG).fingerprint() == compile_program(text, CATALOG).fingerprint()


@settings(SETTINGS, max_examples=200)
@given(
    mutants(),
    st.builds(
        Limits,
        max_bytes=st.integers(1, 400),
        max_statements=st.integers(1, 6),
        max_depth=st.integers(1, 6),
        max_list=st.integers(0, 3),
        max_number_digits=st.integers(1, 4),
    ),
)
def test_tight_limits_fail_only_with_program_error(text: str, limits: Limits) -> None:
    if compiles(text, limits):
        program = parse(text, limits)
        assert len(program.statements) <= limits.max_statements
        assert len(text.encode("utf-8", "surrogatepass")) <= limits.max_bytes


@settings(SETTINGS, max_examples=30)
@given(st.sampled_from(["[", "(", "not ", "-", "x + ", "'a' if True else "]), st.integers(65, 3000))
def test_deep_or_long_input_is_refused_quickly_not_by_recursion(prefix: str, n: int) -> None:
    text = "x = " + prefix * n + "1" + {"[": "]", "(": ")"}.get(prefix, "") * n
    compiles(text)


# -- the string codec ------------------------------------------------------------------------------


@settings(SETTINGS, max_examples=300)
@given(st.text())
def test_quoted_text_decodes_back_to_itself(value: str) -> None:
    raw = quote_string(value)
    decoded, offsets = decode_string(raw)
    assert decoded == value
    # One source offset for each decoded character, and one for the end, in order.
    assert len(offsets) == len(value) + 1 and offsets == sorted(offsets) and offsets[-1] == len(raw) - 1
    # And it is the literal the parser reads.
    (statement,) = parse(f"x = {raw}").statements
    assert isinstance(statement.value, Literal) and statement.value.value == value


# -- the evaluator on its own ----------------------------------------------------------------------

VALUES = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True), st.text(max_size=8)),
    lambda inner: st.lists(inner, max_size=3),
    max_leaves=6,
)
ATOMS = st.sampled_from(
    ["x", "y", "{x}", "'{y}'", "'<{x}>'", "1", "2.5", "0", "-3", "'a'", "True", "None", "[x, y]", "[]"]
)
BINARY = st.sampled_from(["+", "-", "*", "/", "//", "%", "**", "==", "!=", "<", ">=", "in", "and", "or", "xor"])


def _combine(inner: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    # Every compound is parenthesised: each draw is an expression that parses.
    return st.one_of(
        st.tuples(inner, BINARY, inner).map(lambda t: f"({t[0]} {t[1]} {t[2]})"),
        inner.map(lambda e: f"(not {e})"),
        inner.map(lambda e: f"(-{e})"),
        st.tuples(inner, inner, inner).map(lambda t: f"({t[0]} if {t[1]} else {t[2]})"),
        st.tuples(inner, inner, inner).map(lambda t: f"({t[0]} < {t[1]} <= {t[2]})"),
        st.lists(inner, max_size=3).map(lambda items: "[" + ", ".join(items) + "]"),
    )


EXPRESSIONS = st.recursive(ATOMS, _combine, max_leaves=12)


@settings(SETTINGS, max_examples=400)
@given(EXPRESSIONS, VALUES, VALUES)
def test_evaluator_raises_only_eval_error(text: str, x: Any, y: Any) -> None:
    # Values of every kind (NaN, huge ints, nested lists, text) into every operator.
    expr = parse_expression(text)
    start = time.perf_counter()
    with contextlib.suppress(EvalError):
        evaluate(expr, {"x": x, "y": y})
    assert time.perf_counter() - start < SLOW
