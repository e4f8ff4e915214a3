"""The Lark LALR parser, built once, and what it calls back: the post-lexer that lets brackets
span lines, and the reductions that build syntax nodes (no tree, no recursion)."""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterator
from functools import lru_cache
from importlib import resources
from typing import Any, Protocol, TypeVar

from lark import Lark, TextSlice, Token

from . import syntax as S
from .errors import Diagnostic, ProgramError, Span
from .limits import Limits
from .strings import decode_string

SpanFn = Callable[[int, int], Span]
OPEN = frozenset({"LPAR", "LSQB", "LBRACE"})
CLOSE = frozenset({"RPAR", "RSQB", "RBRACE"})
# Every terminal name used here; a test checks each is a terminal of the grammar.
TERMINALS_USED = OPEN | CLOSE | {"COMMA", "COMMENT", "_NL"}
_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


class _Spanned(Protocol):
    @property
    def span(self) -> Span: ...


_N = TypeVar("_N", bound=_Spanned)

# One parser serves every thread; each parse's own state (its Build) is found through this.
_local = threading.local()


def run(text: str | TextSlice[str], start: str, build: Build) -> Any:
    """Parse ``text`` from rule ``start`` into ``build``; Lark's exceptions pass through."""
    _local.build = build
    try:
        return lark_parser().parse(text, start=start)
    finally:
        _local.build = None


class BracketNewlines:
    """Post-lexer: drop newlines inside brackets, so a call or list may span several lines."""

    always_accept = ("_NL",)

    def process(self, stream: Iterator[Token]) -> Iterator[Token]:
        depth = 0
        for tok in stream:
            if tok.type in OPEN:
                depth += 1
            elif tok.type in CLOSE:
                depth = max(0, depth - 1)
            elif tok.type == "_NL" and depth:
                continue
            yield tok


def _collect_comment(tok: Token) -> None:
    build: Build | None = getattr(_local, "build", None)
    if build is not None:
        build.comments.append(S.Comment(str(tok), tok.line or 0, tok.column or 0))


@lru_cache(maxsize=1)
def lark_parser() -> Lark:
    """The parser, built on first use (a server builds it once at start-up)."""
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


class Build:
    """What one parse builds: syntax nodes from the reductions, comments from the lexer.

    In EVAL mode ``pos_span`` maps character offsets of the EVAL string back to the program text.
    """

    def __init__(self, limits: Limits, pos_span: SpanFn | None = None) -> None:
        self.limits = limits
        self.pos_span = pos_span
        self.depth: dict[int, int] = {}
        self.comments: list[S.Comment] = []
        self.table = self.callbacks()

    # spans ------------------------------------------------------------------
    def tspan(self, tok: Token) -> Span:
        if self.pos_span is not None:
            return self.pos_span(tok.start_pos or 0, tok.end_pos or 0)
        return Span(tok.line or 1, tok.column or 1, tok.end_line or 1, tok.end_column or 1)

    def span_of(self, item: Token | _Spanned) -> Span:
        return self.tspan(item) if isinstance(item, Token) else item.span

    def join(self, first: Token | _Spanned, last: Token | _Spanned) -> Span:
        a, b = self.span_of(first), self.span_of(last)
        return Span(a.line, a.column, b.end_line, b.end_column)

    def node(self, n: _N, *children: object) -> _N:
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
            "name": self.name, "number": self.number, "string": self.string, "list": self.list_,
            "true": self.const(True), "false": self.const(False), "none": self.const(None),
            "placeholder": self.placeholder, "call": self.call, "kwarg": self.kwarg, "atom": self.atom,
        }

    def start(self, c: list[Any]) -> list[S.Statement]:
        return [x for x in c if isinstance(x, (S.Assign, S.ExprStmt))]

    def eval_expr(self, c: list[Any]) -> S.Expr:
        expr: S.Expr = c[0]
        return expr

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
        if (isinstance(operand, S.Literal) and isinstance(operand.value, (int, float))
                and not isinstance(operand.value, bool)):
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
            raise ProgramError([Diagnostic.at(
                span, f"number literal is too long (more than {self.limits.max_number_digits} characters)",
                code="limit")])
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

    def list_(self, c: list[Any]) -> S.ListExpr:
        items = tuple(x for x in c[1:-1] if not isinstance(x, Token))
        span = self.join(c[0], c[-1])
        if len(items) > self.limits.max_list:
            raise ProgramError([Diagnostic.at(
                span, f"list has {len(items)} items; the limit is {self.limits.max_list}", code="limit")])
        return self.node(S.ListExpr(items, span), *items)

    def const(self, value: bool | None) -> Callable[[list[Any]], S.Literal]:
        return lambda c: S.Literal(value, self.tspan(c[0]))

    def placeholder(self, c: list[Any]) -> S.Placeholder:
        # Outside an EVAL string this is an error, but which one depends on the program's variables:
        # the compiler, which knows them, reports it.
        lb, name, rb = c
        return S.Placeholder(str(name), self.join(lb, rb))

    def call(self, c: list[Any]) -> S.Call:
        func = c[0]
        args = tuple(self._arg(x) for x in c[2:-1] if not (isinstance(x, Token) and x.type == "COMMA"))
        return self.node(S.Call(str(func), args, self.join(func, c[-1]), self.tspan(func)), *(a.value for a in args))

    def _arg(self, x: S.Arg | S.Expr) -> S.Arg:
        return x if isinstance(x, S.Arg) else S.Arg(None, x, x.span)

    def kwarg(self, c: list[Any]) -> S.Arg:
        name, _, value = c
        return S.Arg(str(name), value, self.join(name, value), self.tspan(name))

    def atom(self, c: list[Any]) -> S.Expr:
        # Only the parenthesised form reaches here: ``"(" test ")"``.
        expr: S.Expr = c[1]
        return expr


_RULES = ("start", "eval_expr", "assign", "expr_stmt", "ifexp", "or_", "xor", "and_", "not_", "compare",
          "binop", "unary", "pow", "name", "number", "string", "list", "true", "false", "none",
          "placeholder", "call", "kwarg", "atom")


class _Dispatch:
    """The transformer Lark calls at each reduction; it forwards to this thread's current Build,
    so one parser (built once) serves every parse while each parse keeps its own limits and spans."""


def _forward(rule: str) -> Callable[[Any, list[Any]], Any]:
    def method(self: _Dispatch, children: list[Any]) -> Any:
        return _local.build.table[rule](children)

    method.__name__ = rule
    return method


for _rule in _RULES:
    setattr(_Dispatch, _rule, _forward(_rule))
