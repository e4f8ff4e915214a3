"""A call's arguments against its module's signature: which value goes to which parameter, and
whether a value fits it. Each mistake is reported once, and none is reported twice over."""

from __future__ import annotations

from collections.abc import Callable

from . import syntax as S
from .errors import Span, did_you_mean
from .plan import Const, Source
from .types import NONE, Param, Signature, Type

# How the compiler takes a diagnostic: span, message, hint, code.
Report = Callable[[Span, str, str | None, str], object]
Bound = dict[str, tuple[Span, S.Expr]]


def bind(sig: Signature, node: S.Call, report: Report) -> tuple[Bound | None, list[S.Expr]]:
    """Parameter → (span, value), or None if an argument is wrong; and the values given to no
    parameter (their own errors are still worth finding)."""
    bound: Bound = {}
    stray: list[S.Expr] = []
    ok = True
    # Only positionals before the first keyword bind by position; a later one is an error of its
    # own and must not also bind to a parameter (which would report a bogus duplicate).
    first_kw = next((i for i, a in enumerate(node.args) if a.name is not None), len(node.args))
    positional = list(node.args[:first_kw])
    misplaced = [a for a in node.args[first_kw:] if a.name is None]
    keywords = {a.name for a in node.args if a.name is not None}
    free = [p.name for p in sig.params[len(positional):] if p.name not in keywords]
    for a in misplaced:
        report(a.span, "positional argument after a keyword argument",
               f"name it, e.g. {free[0]}=…" if free else None, "argument")
        ok = False
    if len(positional) > len(sig.params):
        extra = positional[len(sig.params)]
        n = len(sig.params)
        report(extra.span, f"{sig.name} takes {n} argument{'s' if n != 1 else ''}, got {len(positional)}",
               f"{sig.name}({', '.join(p.name for p in sig.params)})", "argument")
        ok = False
    for p, a in zip(sig.params, positional):
        bound[p.name] = (a.span, a.value)
    suggested: set[str] = set()
    for a in node.args:
        if a.name is None:
            continue
        name_span = a.name_span or a.span
        if sig.param(a.name) is None:
            hint = did_you_mean(a.name, [p.name for p in sig.params])
            if hint is not None:
                suggested.add(hint.split("'")[1])
            if hint is None:
                hint = f"{sig.name} takes " + (", ".join(p.name for p in sig.params) or "no arguments")
            report(name_span, f"{sig.name} has no argument '{a.name}'", hint, "unknown-argument")
            stray.append(a.value)
            ok = False
            continue
        if a.name in bound:
            report(name_span, f"argument '{a.name}' is given twice", None, "duplicate-argument")
            ok = False
            continue
        bound[a.name] = (a.span, a.value)
    for p in sig.params:
        # A misspelt or misplaced argument already says which one is missing: no second error for it.
        if p.required and p.name not in bound and p.name not in suggested and p.name not in free[:len(misplaced)]:
            report(node.func_span, f"{sig.name} is missing argument '{p.name}' ({p.type})",
                   f"add {p.name}=…", "missing-argument")
            ok = False
    return (bound if ok else None), stray


def check_argument(sig: Signature, p: Param, src: Source, typ: Type, span: Span, report: Report) -> bool:
    """Whether a value of type ``typ`` (a constant, if ``src`` is one) fits parameter ``p``."""
    if typ == NONE:
        if p.default is None:
            return True
        report(span, f"{sig.name}'s '{p.name}' cannot be None", f"give a {p.type}", "type")
        return False
    if not p.type.accepts(typ):
        report(span, f"{sig.name} expects {p.type} for '{p.name}', got {typ}", None, "type")
        return False
    if p.choices is not None and isinstance(src, Const) and src.value not in p.choices:
        allowed = ", ".join(repr(c) for c in p.choices)
        hint = did_you_mean(str(src.value), [str(c) for c in p.choices]) if isinstance(src.value, str) else None
        report(span, f"{sig.name}'s '{p.name}' must be one of {allowed}; got {src.value!r}", hint, "choice")
        return False
    return True
