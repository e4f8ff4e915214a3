"""The program's syntax tree: plain frozen dataclasses, every node with the span it came from."""

from __future__ import annotations

from dataclasses import dataclass, field

from .errors import Span


@dataclass(frozen=True)
class Name:
    """A variable, or an input image, by name."""

    id: str
    span: Span


@dataclass(frozen=True)
class Literal:
    value: int | float | str | bool | None
    span: Span
    # The quoted source text of a string literal: EVAL maps positions inside it back to the program.
    raw: str | None = field(default=None, compare=False)


@dataclass(frozen=True)
class ListExpr:
    items: tuple[Expr, ...]
    span: Span


@dataclass(frozen=True)
class Arg:
    name: str | None
    value: Expr
    span: Span
    name_span: Span | None = None


@dataclass(frozen=True)
class Call:
    func: str
    args: tuple[Arg, ...]
    span: Span
    func_span: Span


@dataclass(frozen=True)
class Unary:
    op: str  # '-', '+', 'not'
    operand: Expr
    span: Span


@dataclass(frozen=True)
class Binary:
    op: str  # + - * / // % ** and or xor
    left: Expr
    right: Expr
    span: Span


@dataclass(frozen=True)
class Compare:
    left: Expr
    ops: tuple[str, ...]
    comparators: tuple[Expr, ...]
    span: Span


@dataclass(frozen=True)
class IfExp:
    test: Expr
    body: Expr
    orelse: Expr
    span: Span


@dataclass(frozen=True)
class Placeholder:
    """``{X}`` inside an EVAL string: X's value, with a Text that reads as a number used as a Number."""

    name: str
    span: Span


@dataclass(frozen=True)
class Template:
    """A quoted string inside an EVAL string with ``{X}`` in it: the text of each X substituted."""

    parts: tuple[str | Placeholder, ...]
    span: Span


Expr = Name | Literal | ListExpr | Call | Unary | Binary | Compare | IfExp | Placeholder | Template


@dataclass(frozen=True)
class Assign:
    target: str
    target_span: Span
    value: Expr
    span: Span


@dataclass(frozen=True)
class ExprStmt:
    value: Expr
    span: Span


Statement = Assign | ExprStmt


@dataclass(frozen=True)
class Comment:
    text: str
    line: int
    column: int


@dataclass(frozen=True)
class Program:
    statements: tuple[Statement, ...]
    comments: tuple[Comment, ...] = ()
    source: str = ""


def walk(node: Expr) -> list[Expr]:
    """Every expression node under ``node`` (itself included), without recursion."""
    out: list[Expr] = []
    stack: list[Expr] = [node]
    while stack:
        n = stack.pop()
        out.append(n)
        if isinstance(n, ListExpr):
            stack.extend(reversed(n.items))
        elif isinstance(n, Call):
            stack.extend(a.value for a in reversed(n.args))
        elif isinstance(n, Unary):
            stack.append(n.operand)
        elif isinstance(n, Binary):
            stack.extend((n.right, n.left))
        elif isinstance(n, Compare):
            stack.extend(reversed((n.left, *n.comparators)))
        elif isinstance(n, IfExp):
            stack.extend((n.orelse, n.body, n.test))
        elif isinstance(n, Template):
            stack.extend(p for p in reversed(n.parts) if isinstance(p, Placeholder))
    return out
