"""The safe expression evaluator: EVAL and expression statements run here, never in Python's eval."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

from . import syntax as S
from .parser import parse_expression
from .types import type_label


class EvalError(Exception):
    """A value-level failure (division by zero, comparing text with a number…) while evaluating."""


_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def as_number(value: Any) -> Any:
    """VisProg substitutes text into code: a Text that reads as a number acts as that number."""
    if isinstance(value, str):
        text = value.strip()
        if _NUMBER.fullmatch(text) and len(text) <= 64:
            number = float(text)
            return int(number) if number.is_integer() and not any(c in text for c in ".eE") else number
    return value


def to_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, (bool, int, float)) or value is None:
        return str(value)
    if isinstance(value, list):
        return ", ".join(to_text(v) for v in value)
    raise EvalError(f"cannot use a value of type {type(value).__name__} as text")


def _num(value: Any, op: str) -> int | float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        kind = type_label(value)
        shown = f" {to_text(value)!r}" if kind in ("Text", "None") else ""
        raise EvalError(f"'{op}' needs numbers, got {kind}{shown}")
    return value


# Python's ints are unbounded: a few squarings (folded at compile time, so before any run) reach
# numbers that take seconds and megabytes to compute and that str() refuses. Keep them in float range.
_MAX_INT_BITS = 1024


# Likewise for texts and lists: doubling one per statement, or nesting a list once more, would reach
# gigabytes (or Python's recursion limit) within a few dozen of a program's thousand statements.
MAX_VALUE_SIZE = 64 * 1024
MAX_VALUE_DEPTH = 64


def check_value(value: Any) -> Any:
    """``value`` itself if it is within the bounds above, else EvalError. Iterative, and it stops
    as soon as the bound is passed: the value may share sublists and be exponentially large."""
    size = 0
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_VALUE_DEPTH:
            raise EvalError(f"the value is nested too deeply (more than {MAX_VALUE_DEPTH} levels)")
        if isinstance(item, list):
            stack.extend((i, depth + 1) for i in item)
        size += len(item) if isinstance(item, (str, list)) else 1
        if size > MAX_VALUE_SIZE:
            raise EvalError(f"the value is too large (more than {MAX_VALUE_SIZE} characters and list items)")
    return value


def _arith(op: str, a: Any, b: Any) -> Any:
    if op == "+" and isinstance(a, str) and isinstance(b, str):
        return a + b
    x, y = _num(a, op), _num(b, op)
    try:
        if op == "+":
            return x + y
        if op == "-":
            return x - y
        if op == "*":
            return x * y
        if op == "/":
            return x / y
        if op == "//":
            return x // y
        if op == "%":
            return x % y
        if op == "**":
            # Refuse an integer power sure to exceed the bound before computing it, not after.
            if isinstance(x, int) and isinstance(y, int) and (abs(x).bit_length() - 1) * y > _MAX_INT_BITS:
                raise OverflowError
            result = x**y
            if isinstance(result, complex):
                raise EvalError("'**' of a negative number to a fractional power is not a real number")
            return result
    except ZeroDivisionError:
        raise EvalError("division by zero") from None
    except OverflowError:
        raise EvalError(f"'{op}' overflowed") from None
    raise EvalError(f"unknown operator {op!r}")


def _compare(op: str, a: Any, b: Any) -> bool:
    if op == "==":
        return bool(a == b)
    if op == "!=":
        return bool(a != b)
    if op == "in":
        if isinstance(b, str):
            if not isinstance(a, str):
                raise EvalError(f"'in' a text needs a text on its left, got {type_label(a)}")
            return a in b
        if isinstance(b, list):
            return a in b
        raise EvalError(f"'in' needs a text or a list on its right, got {type_label(b)}")
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (a, b))
    if not numeric and not (isinstance(a, str) and isinstance(b, str)):
        raise EvalError(f"cannot compare {type_label(a)} {op} {type_label(b)}")
    if op == "<":
        return bool(a < b)
    if op == "<=":
        return bool(a <= b)
    if op == ">":
        return bool(a > b)
    if op == ">=":
        return bool(a >= b)
    raise EvalError(f"unknown comparison {op!r}")


def evaluate(node: S.Expr, env: Mapping[str, Any]) -> Any:
    """Evaluate an expression tree over ``env`` (variable → value). Raises EvalError only."""

    def ev(n: S.Expr) -> Any:
        if isinstance(n, S.Literal):
            return n.value
        if isinstance(n, S.Name):
            if n.id not in env:
                raise EvalError(f"no value for {n.id!r}")
            return env[n.id]
        if isinstance(n, S.Placeholder):
            if n.name not in env:
                raise EvalError(f"no value for {n.name!r}")
            return as_number(env[n.name])
        if isinstance(n, S.Template):
            return "".join(p if isinstance(p, str) else to_text(env.get(p.name)) for p in n.parts)
        if isinstance(n, S.ListExpr):
            return [ev(i) for i in n.items]
        if isinstance(n, S.Unary):
            v = ev(n.operand)
            if n.op == "not":
                return not bool(v)
            return -_num(v, n.op) if n.op == "-" else +_num(v, n.op)
        if isinstance(n, S.Binary):
            if n.op == "and":
                return bool(ev(n.left)) and bool(ev(n.right))
            if n.op == "or":
                return bool(ev(n.left)) or bool(ev(n.right))
            if n.op == "xor":
                return bool(ev(n.left)) != bool(ev(n.right))
            result = _arith(n.op, ev(n.left), ev(n.right))
            if (isinstance(result, float) and not math.isfinite(result)) or (
                isinstance(result, int) and result.bit_length() > _MAX_INT_BITS
            ):
                raise EvalError(f"'{n.op}' gave a number out of range")
            return result
        if isinstance(n, S.Compare):
            left = ev(n.left)
            for op, c in zip(n.ops, n.comparators):
                right = ev(c)
                if not _compare(op, left, right):
                    return False
                left = right
            return True
        if isinstance(n, S.IfExp):
            return ev(n.body) if bool(ev(n.test)) else ev(n.orelse)
        raise EvalError(f"cannot evaluate {type(n).__name__}")

    return check_value(ev(node))


# Expressions up to this long are parsed once per text and kept (4096 of them: a few MB at most);
# a longer one, rare, is parsed each time rather than let a client fill memory with them.
MEMO_EXPRESSION = 1024


@lru_cache(maxsize=4096)
def _memo_expression(text: str) -> S.Expr:
    return parse_expression(text)


def compiled_expression(text: str) -> S.Expr:
    """Parse a canonical expression once per text (EVAL steps carry their expression as text)."""
    return _memo_expression(text) if len(text) <= MEMO_EXPRESSION else parse_expression(text)


def evaluate_text(text: str, env: Mapping[str, Any]) -> Any:
    return evaluate(compiled_expression(text), env)
