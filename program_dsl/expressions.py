"""An expression → the expression an EVAL step runs: variables and calls replaced by aliases of
their steps (constants written in), and its type inferred from its parts."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from . import syntax as S
from .errors import Span
from .evaluate import MAX_VALUE_DEPTH, as_number, to_text
from .plan import Const, Source
from .types import ANY, BOOL, NUMBER, TEXT, List, Param, Type, join_types, type_of

_ARITH = {"+", "-", "*", "/", "//", "%", "**"}
_SCALAR = {"Number", "Text", "Bool", "Any"}


class Scope(Protocol):
    """What rewriting needs of the compiler: names, calls, and where to report."""

    # Whether the expression came from an EVAL string, where '{X}' means X's value.
    in_eval: bool

    def lookup(self, name: str, span: Span) -> tuple[Source, Type]: ...

    def call(self, node: S.Call) -> tuple[Source, Type]: ...

    def error(self, span: Span, message: str, hint: str | None = None, code: str = "error") -> tuple[Source, Type]: ...

    def stray_placeholder(self, node: S.Placeholder, param: Param | None = None) -> tuple[Source, Type]: ...


class Rewrite:
    """Replace variables and calls with aliases (constants inline) and infer the type."""

    def __init__(self, scope: Scope, alias: Callable[[Source], str]) -> None:
        self.scope = scope
        self.alias = alias

    def __call__(self, node: S.Expr) -> tuple[S.Expr, Type]:
        span = node.span
        scope, alias = self.scope, self.alias

        def ref(src: Source, typ: Type) -> tuple[S.Expr, Type]:
            if isinstance(src, Const):
                return S.Literal(src.value, span), type_of(src.value) if typ == ANY else typ
            return S.Name(alias(src), span), typ

        if isinstance(node, S.Literal):
            return node, type_of(node.value)
        if isinstance(node, S.Name):
            return ref(*scope.lookup(node.id, span))
        if isinstance(node, S.Call):
            return ref(*scope.call(node))
        if isinstance(node, S.Placeholder):
            if not scope.in_eval:
                scope.stray_placeholder(node)
                return node, ANY
            src, typ = scope.lookup(node.name, span)
            if isinstance(src, Const):
                value = as_number(src.value)
                return S.Literal(value, span), type_of(value)
            # A Text placeholder may read as a number at run time: its type is known only then.
            return S.Placeholder(alias(src), span), ANY if typ == TEXT else typ
        if isinstance(node, S.Template):
            parts: list[str | S.Placeholder] = []
            for p in node.parts:
                if isinstance(p, str):
                    parts.append(p)
                    continue
                src, typ = scope.lookup(p.name, p.span)
                if typ.name not in _SCALAR | {"List", "None"}:
                    scope.error(p.span, f"'{{{p.name}}}' is {typ}, which has no text form", code="type")
                if isinstance(src, Const):
                    parts.append(to_text(src.value))
                else:
                    parts.append(S.Placeholder(alias(src), p.span))
            merged: list[str | S.Placeholder] = []
            for p in parts:
                if isinstance(p, str) and merged and isinstance(merged[-1], str):
                    merged[-1] += p
                else:
                    merged.append(p)
            texts = [p for p in merged if isinstance(p, str)]
            if len(texts) == len(merged):
                return S.Literal("".join(texts), span), TEXT
            return S.Template(tuple(merged), span), TEXT
        if isinstance(node, S.ListExpr):
            items = [self(i) for i in node.items]
            typ = List(join_types([t for _, t in items]))
            if _nesting(typ) > MAX_VALUE_DEPTH:
                # The run would fail (check_value), and deep types break str() and JSON first.
                scope.error(span, f"the value is nested too deeply (more than {MAX_VALUE_DEPTH} levels)", code="eval")
                typ = ANY
            return S.ListExpr(tuple(i for i, _ in items), span), typ
        if isinstance(node, S.Unary):
            operand, t = self(node.operand)
            if node.op == "not":
                return S.Unary("not", operand, span), BOOL
            if t.name not in ("Number", "Any"):
                scope.error(node.span, f"'{node.op}' needs a Number, got {t}", code="type")
            return S.Unary(node.op, operand, span), NUMBER if t == NUMBER else ANY
        if isinstance(node, S.Binary):
            left, lt = self(node.left)
            right, rt = self(node.right)
            out = S.Binary(node.op, left, right, span)
            if node.op not in _ARITH:
                return out, BOOL
            return out, self.arith_type(node, lt, rt)
        if isinstance(node, S.Compare):
            left, lt = self(node.left)
            comps = [self(c) for c in node.comparators]
            types = [lt, *(t for _, t in comps)]
            for op, a, b, c in zip(node.ops, types, types[1:], node.comparators):
                names = {a.name, b.name}
                if op in ("<", "<=", ">", ">=") and not (names <= {"Number", "Any"} or names <= {"Text", "Any"}):
                    scope.error(Span(node.span.line, node.span.column, c.span.end_line, c.span.end_column),
                               f"cannot compare {a} {op} {b}", code="type")
                if op == "in" and b.name not in ("Text", "List", "Any"):
                    scope.error(c.span, f"'in' needs a Text or a List on its right, got {b}", code="type")
            return S.Compare(left, node.ops, tuple(c for c, _ in comps), span), BOOL
        if isinstance(node, S.IfExp):
            test, _ = self(node.test)
            body, bt = self(node.body)
            orelse, ot = self(node.orelse)
            return S.IfExp(test, body, orelse, span), join_types([bt, ot])
        raise AssertionError(f"unexpected node {type(node).__name__}")

    def arith_type(self, node: S.Binary, lt: Type, rt: Type) -> Type:
        names = {lt.name, rt.name}
        if names <= {"Number"}:
            return NUMBER
        if node.op == "+" and names <= {"Text"}:
            return TEXT
        if names <= {"Number", "Any"} or (node.op == "+" and names <= {"Text", "Any"}):
            return ANY
        need = "two Numbers or two Texts" if node.op == "+" else "Numbers"
        self.scope.error(node.span, f"'{node.op}' needs {need}, got {lt} and {rt}", code="type")
        return ANY


def _nesting(typ: Type) -> int:
    depth = 1
    while typ.item is not None:
        typ, depth = typ.item, depth + 1
    return depth
