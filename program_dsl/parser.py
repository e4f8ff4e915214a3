"""Text → syntax tree, with Lark's LALR parser; every failure becomes a ProgramError with a position.

A syntax error does not hide the others: parsing starts again at the next statement, so the
ProgramError carries one diagnostic for every statement that has one."""

from __future__ import annotations

from lark import TextSlice
from lark.exceptions import UnexpectedInput

from . import syntax as S
from .errors import Diagnostic, ProgramError, Span
from .lalr import Build, SpanFn, run
from .limits import DEFAULT_LIMITS, Limits
from .syntax_errors import Brackets, describe, syntax_diagnostic

__all__ = ["DEFAULT_LIMITS", "Limits", "parse", "parse_expression"]


def parse(text: str, limits: Limits = DEFAULT_LIMITS) -> S.Program:
    """Parse a whole program. Raises ProgramError (never anything else) for any bad input."""
    if not isinstance(text, str):
        raise TypeError("program text must be str")
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > limits.max_bytes:
        raise ProgramError([Diagnostic(f"program is {size} bytes; the limit is {limits.max_bytes}", 1, 1, 1, 2,
                                       code="limit")], text)
    build = Build(limits)
    try:
        statements: list[S.Statement] = run(text, "start", build)
    except (UnexpectedInput, ProgramError) as e:
        raise ProgramError(_every_error(text, e, limits), text) from None
    if len(statements) > limits.max_statements:
        s = statements[limits.max_statements]
        raise ProgramError([Diagnostic.at(
            s.span, f"program has {len(statements)} statements; the limit is {limits.max_statements}",
            code="limit")], text)
    return S.Program(tuple(statements), tuple(build.comments), text)


def parse_expression(text: str, pos_span: SpanFn | None = None, limits: Limits = DEFAULT_LIMITS) -> S.Expr:
    """Parse an EVAL string: one expression, where ``{X}`` and ``'{X}'`` are placeholders."""
    span_fn = pos_span or (lambda a, b: Span(1, a + 1, 1, b + 1))
    try:
        expr: S.Expr = run(text, "eval_expr", Build(limits, span_fn))
    except UnexpectedInput as e:
        raise ProgramError([syntax_diagnostic(e, text, span_fn)], text) from None
    except ProgramError as e:
        raise ProgramError(e.diagnostics, text) from None
    return expr


def _every_error(text: str, first: UnexpectedInput | ProgramError, limits: Limits) -> list[Diagnostic]:
    """The first error's diagnostics, then those of every later statement, sorted by place.

    After the first error each statement is parsed on its own, from where it starts to where the
    next one does (as ``Brackets`` finds them), so the search costs about one parse of the text
    whatever the errors. Errors of parsing only (syntax, limits, literals): the statements around a
    broken one may read differently once it is fixed, so compiling them now would guess."""
    brackets = Brackets(text)
    diagnostics: list[Diagnostic] = []
    error: UnexpectedInput | ProgramError | None = first
    start, end = 0, len(text)
    while True:
        if isinstance(error, UnexpectedInput):
            found, resume = describe(error, text, start, end, brackets)
        elif isinstance(error, ProgramError) and end == len(text):
            # Raised from a reduction, in the middle of a statement: go on after that statement.
            found = error.diagnostics
            resume = brackets.next_statement(brackets.offset(found[0].line, found[0].column))
        else:
            # A statement parsed on its own, well formed or stopped in a reduction: on to the next.
            found = error.diagnostics if error is not None else []
            resume = end if end < len(text) else None
        # No more errors than a program may hold statements: more would say nothing new.
        diagnostics.extend(found[: limits.max_statements - len(diagnostics)])
        if resume is None or len(diagnostics) >= limits.max_statements:
            break
        start, end = resume, brackets.next_statement(resume) or len(text)
        try:
            # A slice keeps the whole text's offsets, lines and columns (Lark counts the lines before it).
            run(TextSlice(text, start, end), "start", Build(limits))
            error = None
        except (UnexpectedInput, ProgramError) as e:
            error = e
    return sorted(diagnostics, key=lambda d: (d.line, d.column))
