"""The canonical text of a program: one statement a line, spaced, single-quoted, comments kept."""

from __future__ import annotations

from collections.abc import Callable

from . import syntax as S
from .parser import DEFAULT_LIMITS, Limits, parse
from .strings import quote_string

# Binding strength, loosest first; a child is parenthesised when it binds looser than its place needs.
_PREC = {"if": 1, "or": 2, "xor": 3, "and": 4, "not": 5, "cmp": 6, "+": 7, "-": 7,
         "*": 8, "/": 8, "//": 8, "%": 8, "unary": 9, "**": 10, "atom": 11}


def _prec(node: S.Expr) -> int:
    if isinstance(node, S.IfExp):
        return _PREC["if"]
    if isinstance(node, S.Binary):
        return _PREC[node.op]
    if isinstance(node, S.Unary):
        return _PREC["not"] if node.op == "not" else _PREC["unary"]
    if isinstance(node, S.Compare):
        return _PREC["cmp"]
    if (isinstance(node, S.Literal) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool)
            and node.value < 0):
        return _PREC["unary"]
    return _PREC["atom"]


def format_number(value: int | float) -> str:
    if isinstance(value, float):
        text = repr(value)
        return text if any(c in text for c in ".e") else text + ".0"
    return str(value)


def format_literal(value: object) -> str:
    if value is None or isinstance(value, bool):
        return repr(value)
    if isinstance(value, (int, float)):
        return format_number(value)
    if isinstance(value, str):
        return quote_string(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(format_literal(v) for v in value) + "]"
    raise TypeError(f"no literal form for {type(value).__name__}")


def format_expr(node: S.Expr, name: Callable[[str], str] = lambda n: n) -> str:
    """Canonical text of an expression; ``name`` renames variables (the compiler uses it to drop names)."""

    def wrap(child: S.Expr, least: int) -> str:
        text = fmt(child)
        return f"({text})" if _prec(child) < least else text

    def fmt(n: S.Expr) -> str:
        if isinstance(n, S.Literal):
            return format_literal(n.value)
        if isinstance(n, S.Name):
            return name(n.id)
        if isinstance(n, S.Placeholder):
            return "{" + name(n.name) + "}"
        if isinstance(n, S.Template):
            body = "".join(p if isinstance(p, str) else "{" + name(p.name) + "}" for p in n.parts)
            return quote_string(body)
        if isinstance(n, S.ListExpr):
            return "[" + ", ".join(fmt(i) for i in n.items) + "]"
        if isinstance(n, S.Call):
            return f"{n.func}(" + ", ".join(
                (f"{a.name}={fmt(a.value)}" if a.name else fmt(a.value)) for a in n.args) + ")"
        if isinstance(n, S.Unary):
            if n.op == "not":
                return "not " + wrap(n.operand, _PREC["not"])
            return n.op + wrap(n.operand, _PREC["unary"])
        if isinstance(n, S.Binary):
            p = _PREC[n.op]
            if n.op == "**":
                return f"{wrap(n.left, p + 1)} ** {wrap(n.right, _PREC['unary'])}"
            return f"{wrap(n.left, p)} {n.op} {wrap(n.right, p + 1)}"
        if isinstance(n, S.Compare):
            p = _PREC["cmp"] + 1
            parts = [wrap(n.left, p)]
            for op, c in zip(n.ops, n.comparators):
                parts += [op, wrap(c, p)]
            return " ".join(parts)
        if isinstance(n, S.IfExp):
            p = _PREC["if"] + 1
            return f"{wrap(n.body, p)} if {wrap(n.test, p)} else {wrap(n.orelse, _PREC['if'])}"
        raise TypeError(f"cannot format {type(n).__name__}")

    return fmt(node)


def format_statement(stmt: S.Statement) -> str:
    if isinstance(stmt, S.Assign):
        return f"{stmt.target} = {format_expr(stmt.value)}"
    return format_expr(stmt.value)


def format_program(program: S.Program | str, limits: Limits = DEFAULT_LIMITS) -> str:
    """Canonical form of a program. Stable (formatting it again changes nothing) and plan-preserving."""
    if isinstance(program, str):
        program = parse(program, limits)
    comments = sorted(program.comments, key=lambda c: (c.line, c.column))
    out: list[str] = []
    ci = 0
    prev_end = 0
    for i, stmt in enumerate(program.statements):
        next_line = program.statements[i + 1].span.line if i + 1 < len(program.statements) else None
        # Comment lines above the statement stay above it; a blank line in the source stays one blank line.
        while ci < len(comments) and comments[ci].line < stmt.span.line:
            c = comments[ci]
            if out and c.line > prev_end + 1 and out[-1] != "":
                out.append("")
            out.append(c.text.rstrip())
            prev_end = c.line
            ci += 1
        if out and stmt.span.line > prev_end + 1 and out[-1] != "":
            out.append("")
        line = format_statement(stmt)
        while ci < len(comments) and comments[ci].line <= stmt.span.end_line and comments[ci].line != next_line:
            line += "  " + comments[ci].text.rstrip()
            ci += 1
        out.append(line)
        prev_end = stmt.span.end_line
    for c in comments[ci:]:
        if out and c.line > prev_end + 1 and out[-1] != "":
            out.append("")
        out.append(c.text.rstrip())
        prev_end = c.line
    return "\n".join(out) + "\n" if out else ""
