"""Text → syntax tree, with Lark's LALR parser; every failure becomes a ProgramError with a position."""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Any

from lark import Lark, Token
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken

from . import syntax as S
from .errors import Diagnostic, ProgramError, Span


@dataclass(frozen=True)
class Limits:
    """Bounds that keep any input — including a hostile one — to a clean error instead of a hang."""

    max_bytes: int = 64 * 1024
    max_statements: int = 1000
    max_depth: int = 64
    max_list: int = 1000
    max_number_digits: int = 64


DEFAULT_LIMITS = Limits()

_OPEN = {"LPAR", "LSQB", "LBRACE"}
_CLOSE = {"RPAR", "RSQB", "RBRACE"}


class BracketNewlines:
    """Post-lexer: drop newlines inside brackets, so a call or list may span several lines."""

    always_accept = ("_NL",)

    def process(self, stream: Iterator[Token]) -> Iterator[Token]:
        depth = 0
        for tok in stream:
            if tok.type in _OPEN:
                depth += 1
            elif tok.type in _CLOSE:
                depth = max(0, depth - 1)
            elif tok.type == "_NL" and depth:
                continue
            yield tok


_local = threading.local()


def _collect_comment(tok: Token) -> None:
    sink = getattr(_local, "comments", None)
    if sink is not None:
        sink.append(S.Comment(str(tok), tok.line or 0, tok.column or 0))


@lru_cache(maxsize=1)
def _lark() -> Lark:
    grammar = resources.files("program_dsl").joinpath("grammar.lark").read_text(encoding="utf-8")
    return Lark(
        grammar,
        parser="lalr",
        # Not Lark's default contextual lexer: it lexes by what the parser expects, so where 'if'
        # may come but a name may not, 'iffy' became 'if' + 'fy', and where a name may come but
        # 'in' may not, 'in' was a name. Keywords are reserved words, as in Python.
        lexer="basic",
        start=["start", "eval_expr"],
        postlex=BracketNewlines(),
        keep_all_tokens=True,
        maybe_placeholders=False,
        lexer_callbacks={"COMMENT": _collect_comment},
        transformer=_Dispatch(),
    )


# -- strings ------------------------------------------------------------------------------------

_SIMPLE_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "0": "\0", "\\": "\\", "'": "'", '"': '"'}
_HEX_ESCAPES = {"x": 2, "u": 4, "U": 8}


def decode_string(raw: str) -> tuple[str, list[int]]:
    """Decode a quoted literal; also return, for every decoded character, its index in ``raw``
    (plus one entry for the end), so positions inside an EVAL string map back to the source."""
    out: list[str] = []
    offsets: list[int] = []
    i, end = 1, len(raw) - 1
    while i < end:
        ch = raw[i]
        if ch == "\\" and i + 1 < end:
            nxt = raw[i + 1]
            if nxt in _SIMPLE_ESCAPES:
                out.append(_SIMPLE_ESCAPES[nxt])
                offsets.append(i)
                i += 2
                continue
            if nxt in _HEX_ESCAPES:
                n = _HEX_ESCAPES[nxt]
                digits = raw[i + 2 : i + 2 + n]
                if len(digits) == n and all(c in "0123456789abcdefABCDEF" for c in digits):
                    code = int(digits, 16)
                    if code <= 0x10FFFF:
                        out.append(chr(code))
                        offsets.append(i)
                        i += 2 + n
                        continue
        # An unknown escape keeps its backslash, as Python does.
        out.append(ch)
        offsets.append(i)
        i += 1
    offsets.append(end)
    return "".join(out), offsets


def quote_string(value: str) -> str:
    """The canonical literal for ``value``: single quotes unless the text holds one and no double."""
    q = '"' if "'" in value and '"' not in value else "'"
    out = [q]
    for ch in value:
        if ch == "\\":
            out.append("\\\\")
        elif ch == q:
            out.append("\\" + q)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ch == "\r":
            out.append("\\r")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F or 0xD800 <= ord(ch) <= 0xDFFF:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    out.append(q)
    return "".join(out)


# -- tree building --------------------------------------------------------------------------------

SpanFn = Callable[[int, int], Span]
_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


class _Build:
    """Builds syntax nodes inside the LALR parser's reductions (no tree, no recursion).

    In EVAL mode ``pos_span`` maps character offsets of the EVAL string back to the program text.
    """

    def __init__(self, limits: Limits, pos_span: SpanFn | None = None) -> None:
        self.limits = limits
        self.pos_span = pos_span
        self.depth: dict[int, int] = {}
        self.errors: list[Diagnostic] = []
        self.table = self.callbacks()

    # spans ------------------------------------------------------------------
    def tspan(self, tok: Token) -> Span:
        if self.pos_span is not None:
            return self.pos_span(tok.start_pos or 0, tok.end_pos or 0)
        return Span(tok.line or 1, tok.column or 1, tok.end_line or 1, tok.end_column or 1)

    def span_of(self, item: Any) -> Span:
        return self.tspan(item) if isinstance(item, Token) else item.span

    def join(self, first: Any, last: Any) -> Span:
        a, b = self.span_of(first), self.span_of(last)
        return Span(a.line, a.column, b.end_line, b.end_column)

    def node(self, n: Any, *children: Any) -> Any:
        d = 1 + max((self.depth.get(id(c), 0) for c in children), default=0)
        if d > self.limits.max_depth:
            raise ProgramError(
                [Diagnostic.at(n.span, f"expression is nested too deeply (more than {self.limits.max_depth} levels)",
                               hint="split it into several statements", code="limit")]
            )
        self.depth[id(n)] = d
        return n

    # callbacks ----------------------------------------------------------------
    def callbacks(self) -> dict[str, Callable[[list[Any]], Any]]:
        return {
            "start": self.start, "eval_expr": self.eval_expr, "assign": self.assign,
            "expr_stmt": self.expr_stmt, "ifexp": self.ifexp, "or_": self.boolop("or"),
            "xor": self.boolop("xor"), "and_": self.boolop("and"), "not_": self.not_,
            "compare": self.compare, "binop": self.binop, "unary": self.unary, "pow": self.pow,
            "name": self.name, "number": self.number, "string": self.string, "list": self.list,
            "true": self.const(True), "false": self.const(False), "none": self.const(None),
            "placeholder": self.placeholder, "call": self.call, "kwarg": self.kwarg, "atom": self.atom,
        }

    def start(self, c: list[Any]) -> list[S.Statement]:
        return [x for x in c if isinstance(x, (S.Assign, S.ExprStmt))]

    def eval_expr(self, c: list[Any]) -> S.Expr:
        return c[0]

    def assign(self, c: list[Any]) -> S.Assign:
        name, _, value = c
        return S.Assign(str(name), self.tspan(name), value, self.join(name, value))

    def expr_stmt(self, c: list[Any]) -> S.ExprStmt:
        return S.ExprStmt(c[0], c[0].span)

    def ifexp(self, c: list[Any]) -> S.IfExp:
        body, _, test, _, orelse = c
        return self.node(S.IfExp(test, body, orelse, self.join(body, orelse)), body, test, orelse)

    def boolop(self, op: str) -> Callable[[list[Any]], S.Binary]:
        def build(c: list[Any]) -> S.Binary:
            left, _, right = c
            return self.node(S.Binary(op, left, right, self.join(left, right)), left, right)

        return build

    def not_(self, c: list[Any]) -> S.Unary:
        tok, operand = c
        return self.node(S.Unary("not", operand, self.join(tok, operand)), operand)

    def compare(self, c: list[Any]) -> S.Compare:
        ops = tuple(str(t) for t in c[1::2])
        comparators = tuple(c[2::2])
        return self.node(S.Compare(c[0], ops, comparators, self.join(c[0], c[-1])), *c[0::2])

    def binop(self, c: list[Any]) -> S.Binary:
        left, op, right = c
        return self.node(S.Binary(str(op), left, right, self.join(left, right)), left, right)

    def pow(self, c: list[Any]) -> S.Binary:
        left, _, right = c
        return self.node(S.Binary("**", left, right, self.join(left, right)), left, right)

    def unary(self, c: list[Any]) -> S.Expr:
        op, operand = c
        span = self.join(op, operand)
        # Fold a sign into a number literal, so ``-3`` is the constant -3 (and formats back the same).
        if isinstance(operand, S.Literal) and isinstance(operand.value, (int, float)) and not isinstance(operand.value, bool):
            value = -operand.value if str(op) == "-" else operand.value
            return S.Literal(value, span)
        return self.node(S.Unary(str(op), operand, span), operand)

    def name(self, c: list[Any]) -> S.Name:
        return S.Name(str(c[0]), self.tspan(c[0]))

    def number(self, c: list[Any]) -> S.Literal:
        tok = c[0]
        text = str(tok)
        span = self.tspan(tok)
        if len(text) > self.limits.max_number_digits:
            raise ProgramError([Diagnostic.at(span, f"number literal is too long (more than {self.limits.max_number_digits} characters)", code="limit")])
        value: int | float
        if any(ch in text for ch in ".eE"):
            value = float(text)
            if value in (float("inf"), float("-inf")):
                raise ProgramError([Diagnostic.at(span, f"number {text} is out of range", code="number")])
        else:
            value = int(text)
        return S.Literal(value, span)

    def string(self, c: list[Any]) -> S.Expr:
        tok = c[0]
        raw = str(tok)
        value, offsets = decode_string(raw)
        span = self.tspan(tok)
        if self.pos_span is None or "{" not in value:
            return S.Literal(value, span, raw)
        # Inside an EVAL string, '{X}' stands for the text of X (VisProg's substitution).
        base = tok.start_pos or 0
        parts: list[str | S.Placeholder] = []
        last = 0
        for m in _PLACEHOLDER.finditer(value):
            if m.start() > last:
                parts.append(value[last : m.start()])
            pspan = self.pos_span(base + offsets[m.start()], base + offsets[m.end()])
            parts.append(S.Placeholder(m.group(1), pspan))
            last = m.end()
        if not any(isinstance(p, S.Placeholder) for p in parts):
            return S.Literal(value, span, raw)
        if last < len(value):
            parts.append(value[last:])
        return S.Template(tuple(parts), span)

    def list(self, c: list[Any]) -> S.ListExpr:
        items = tuple(x for x in c[1:-1] if not isinstance(x, Token))
        span = self.join(c[0], c[-1])
        if len(items) > self.limits.max_list:
            raise ProgramError([Diagnostic.at(span, f"list has {len(items)} items; the limit is {self.limits.max_list}", code="limit")])
        return self.node(S.ListExpr(items, span), *items)

    def const(self, value: bool | None) -> Callable[[list[Any]], S.Literal]:
        return lambda c: S.Literal(value, self.tspan(c[0]))

    def placeholder(self, c: list[Any]) -> S.Placeholder:
        lb, name, rb = c
        span = self.join(lb, rb)
        if self.pos_span is None:
            self.errors.append(Diagnostic.at(span, f"'{{{name}}}' is only meaningful inside an EVAL string",
                                             hint=f"write {name}", code="placeholder"))
        return S.Placeholder(str(name), span)

    def call(self, c: list[Any]) -> S.Call:
        func = c[0]
        args = tuple(self._arg(x) for x in c[2:-1] if not (isinstance(x, Token) and x.type == "COMMA"))
        return self.node(S.Call(str(func), args, self.join(func, c[-1]), self.tspan(func)), *(a.value for a in args))

    def _arg(self, x: Any) -> S.Arg:
        return x if isinstance(x, S.Arg) else S.Arg(None, x, x.span)

    def kwarg(self, c: list[Any]) -> S.Arg:
        name, _, value = c
        return S.Arg(str(name), value, self.join(name, value), self.tspan(name))

    def atom(self, c: list[Any]) -> S.Expr:
        # Only the parenthesised form reaches here: ``"(" test ")"``.
        return c[1]


_RULES = ("start", "eval_expr", "assign", "expr_stmt", "ifexp", "or_", "xor", "and_", "not_", "compare",
          "binop", "unary", "pow", "name", "number", "string", "list", "true", "false", "none",
          "placeholder", "call", "kwarg", "atom")


class _Dispatch:
    """The transformer Lark calls at each reduction; it forwards to this thread's current _Build,
    so one parser (built once) serves every parse while each parse keeps its own limits and spans."""


def _forward(rule: str) -> Callable[[Any, list[Any]], Any]:
    def method(self: _Dispatch, children: list[Any]) -> Any:
        return _local.build.table[rule](children)

    method.__name__ = rule
    return method


for _rule in _RULES:
    setattr(_Dispatch, _rule, _forward(_rule))


# -- errors -----------------------------------------------------------------------------------------

_WORDS = {
    "NAME": "a name", "QUALNAME": "a module name", "NUMBER": "a number", "STRING": "a string",
    "_NL": "a new line", "$END": "the end of the program", "COMMENT": "a comment",
}
_OPERATORS = {"ADD_OP", "MUL_OP", "OR", "AND", "XOR", "IF", "IN", "EQEQUAL", "NOTEQUAL", "LESSTHAN",
              "MORETHAN", "LESSEQUAL", "MOREEQUAL", "POW", "__ANON_0", "__ANON_1", "__ANON_2", "__ANON_3", "__ANON_4"}


def _describe(term: str) -> str:
    if term in _WORDS:
        return _WORDS[term]
    try:
        pattern = _lark().get_terminal(term).pattern
    except KeyError:
        return term.lower()
    return f"'{pattern.value}'" if pattern.type == "str" else term.lower()


_EXPR_START = {"LPAR", "LSQB", "LBRACE", "QUALNAME", "NAME", "NUMBER", "STRING", "TRUE", "FALSE", "NONE", "NOT", "ADD_OP"}


def _expected(names: set[str]) -> str:
    names = {n for n in names if n not in ("COMMENT",)}
    expression = {"NAME", "NUMBER", "STRING"} <= names
    if expression:
        # Ten ways to start an expression read better as one word.
        names -= _EXPR_START
    ops = {n for n in names if n in _OPERATORS or (n.startswith("__ANON") and _describe(n).strip("'") in {"==", "!=", "<", "<=", ">", ">=", "**"})}
    words = sorted({_describe(n) for n in names - ops})
    if ops:
        words.append("an operator")
    if expression:
        words.insert(0, "an expression")
    if not words:
        return ""
    if len(words) == 1:
        return words[0]
    return ", ".join(words[:-1]) + " or " + words[-1]


def _token_words(tok: Token) -> str:
    if tok.type == "$END":
        return "end of program"
    if tok.type == "_NL":
        return "end of line"
    if tok.type == "NAME":
        return f"name '{tok}'"
    if tok.type == "NUMBER":
        return f"number {tok}"
    if tok.type == "STRING":
        return f"string {tok}"
    return f"'{tok}'"


def _acceptable(e: UnexpectedInput, table: set[str]) -> set[str]:
    """The tokens the parser would really take here. The LALR table's set for a state is wider:
    merged states share lookaheads, so it lists ')' at the top level or a new line inside a call."""
    parser = getattr(e, "interactive_parser", None)
    return set(parser.accepts()) if parser is not None else table


def _syntax_diagnostic(e: UnexpectedInput, text: str, pos_span: SpanFn | None) -> Diagnostic:
    def at(line: int, column: int, start: int, length: int) -> Span:
        if pos_span is not None:
            return pos_span(start, start + length)
        return Span(line, column, line, column + length)

    if isinstance(e, UnexpectedCharacters):
        ch = text[e.pos_in_stream] if e.pos_in_stream < len(text) else ""
        span = at(e.line, e.column, e.pos_in_stream, 1)
        if ch in "'\"":
            return Diagnostic.at(span, "unterminated string", hint=f"close it with {ch} on the same line", code="syntax")
        expected = _expected(_acceptable(e, set(e.allowed or ())))
        return Diagnostic.at(span, f"unexpected character {ch!r}", hint=f"expected {expected}" if expected else None, code="syntax")
    if isinstance(e, UnexpectedToken):
        tok = e.token
        expected = _expected(_acceptable(e, set(e.expected or ())))
        if tok.type == "$END":
            # Point just after the last thing written, not past trailing newlines (a line with no text).
            end = len(text.rstrip())
            line = text.count("\n", 0, end) + 1
            col = end - (text.rfind("\n", 0, end) + 1) + 1
            span = at(line, col, end, 1)
            return Diagnostic.at(span, "unexpected end of program", hint=f"expected {expected}" if expected else None, code="syntax")
        start = tok.start_pos or 0
        length = max(1, (tok.end_pos or start + 1) - start) if tok.type != "_NL" else 1
        span = at(tok.line or 1, tok.column or 1, start, length)
        if tok.type == "_NL":
            return Diagnostic.at(span, "unexpected end of line", hint=f"expected {expected}" if expected else None, code="syntax")
        return Diagnostic.at(span, f"unexpected {_token_words(tok)}", hint=f"expected {expected}" if expected else None, code="syntax")
    assert isinstance(e, UnexpectedEOF)
    end = len(text)
    return Diagnostic.at(at(1, 1, end, 1), "unexpected end of program", code="syntax")


def parse(text: str, limits: Limits = DEFAULT_LIMITS) -> S.Program:
    """Parse a whole program. Raises ProgramError (never anything else) for any bad input."""
    if not isinstance(text, str):
        raise TypeError("program text must be str")
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > limits.max_bytes:
        raise ProgramError([Diagnostic(f"program is {size} bytes; the limit is {limits.max_bytes}", 1, 1, 1, 2, code="limit")], text)
    build = _Build(limits)
    _local.comments = []
    try:
        statements = _parse_with(text, "start", build, None)
        comments = tuple(_local.comments)
    finally:
        _local.comments = None
    if build.errors:
        raise ProgramError(build.errors, text)
    if len(statements) > limits.max_statements:
        s = statements[limits.max_statements]
        raise ProgramError([Diagnostic.at(s.span, f"program has {len(statements)} statements; the limit is {limits.max_statements}", code="limit")], text)
    return S.Program(tuple(statements), comments, text)


def parse_expression(text: str, pos_span: SpanFn | None = None, limits: Limits = DEFAULT_LIMITS) -> S.Expr:
    """Parse an EVAL string: one expression, where ``{X}`` and ``'{X}'`` are placeholders."""
    span_fn = pos_span or (lambda a, b: Span(1, a + 1, 1, b + 1))
    build = _Build(limits, span_fn)
    return _parse_with(text, "eval_expr", build, span_fn)


def _parse_with(text: str, start: str, build: _Build, pos_span: SpanFn | None) -> Any:
    _local.build = build
    try:
        return _lark().parse(text, start=start)
    except UnexpectedInput as e:
        raise ProgramError([_syntax_diagnostic(e, text, pos_span)], text) from None
    except ProgramError as e:
        raise ProgramError(e.diagnostics, text) from None
    finally:
        _local.build = None
