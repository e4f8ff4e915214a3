"""The nsx program language: parse, type-check and compile programs into plans; no models, no torch."""

from .compiler import BUILTINS, DEFAULT_INPUTS, EVAL, RESULT, compile_cached, compile_program
from .errors import Diagnostic, ProgramError, Span, did_you_mean
from .evaluate import EvalError, as_number, evaluate, evaluate_text
from .formatter import format_expr, format_program
from .parser import DEFAULT_LIMITS, Limits, parse, parse_expression
from .plan import Const, Input, Plan, Ref, Source, Step, canonical_const, step_fingerprint, step_key
from .strings import decode_string, quote_string
from .syntax import Program
from .types import (
    ANY,
    BOOL,
    IMAGE,
    NONE,
    NUMBER,
    OBJECTS,
    TEXT,
    Catalog,
    List,
    Param,
    Route,
    Routed,
    RouteError,
    Signature,
    Type,
    join_types,
    param,
    parse_type,
    signature,
    type_label,
    type_of,
)

__all__ = [
    "ANY", "BOOL", "BUILTINS", "DEFAULT_INPUTS", "DEFAULT_LIMITS", "EVAL", "IMAGE", "NONE", "NUMBER", "OBJECTS",
    "RESULT", "TEXT", "Catalog", "Const", "Diagnostic", "EvalError", "Input", "Limits", "List", "Param", "Plan",
    "Program", "ProgramError", "Ref", "Route", "RouteError", "Routed", "Signature", "Source", "Span", "Step", "Type",
    "as_number", "canonical_const", "check", "compile_cached", "compile_program", "decode_string", "did_you_mean",
    "evaluate", "evaluate_text", "format_expr", "format_program", "join_types", "param", "parse", "parse_expression",
    "parse_type", "quote_string", "signature", "step_fingerprint", "step_key", "type_label", "type_of",
]


def check(text: str, catalog: Catalog, inputs: dict[str, Type] | None = None,
          limits: Limits = DEFAULT_LIMITS) -> list[Diagnostic]:
    """Every diagnostic for ``text``, errors and warnings, without raising."""
    try:
        return list(compile_cached(text, catalog, inputs, limits).warnings)
    except ProgramError as e:
        return e.diagnostics
