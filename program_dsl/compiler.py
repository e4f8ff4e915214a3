"""Syntax tree + catalog → Plan: typed steps in topological order, duplicates merged, names dropped."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Union

from . import syntax as S
from .errors import Diagnostic, ProgramError, Span, did_you_mean
from .evaluate import MAX_VALUE_DEPTH, EvalError, as_number, check_value, evaluate, to_text
from .formatter import format_expr
from .parser import DEFAULT_LIMITS, Limits, decode_string, parse, parse_expression
from .types import ANY, BOOL, IMAGE, NONE, NUMBER, TEXT, Catalog, List, Param, Signature, Type, param, signature

# EVAL and RESULT belong to the language itself: every catalog has them.
EVAL = signature("EVAL", "Any", param("expr", "Text", doc="an expression; {X} stands for X's value"),
                 version="1", doc="Evaluate an expression over earlier results (no Python eval).")
RESULT = signature("RESULT", "Any", param("var", "Any", doc="the value to return"),
                   doc="Mark the program's result.")
BUILTINS = {"EVAL": EVAL, "RESULT": RESULT}

# Images a program may name without defining them, unless the caller says which it provides.
DEFAULT_INPUTS: Mapping[str, Type] = {"IMAGE": IMAGE, "LEFT": IMAGE, "RIGHT": IMAGE}


@dataclass(frozen=True)
class Const:
    value: Any


@dataclass(frozen=True)
class Ref:
    step: str


@dataclass(frozen=True)
class Input:
    name: str


Source = Union[Const, Ref, Input]


def source_to_dict(src: Source) -> dict[str, Any]:
    if isinstance(src, Const):
        return {"const": src.value}
    if isinstance(src, Ref):
        return {"step": src.step}
    return {"input": src.name}


@dataclass(frozen=True)
class Step:
    """One module call. ``fingerprint`` is the same for the same call on the same inputs, whatever
    the variables are named; cache keys at run time build on the same parts."""

    id: str
    module: str
    version: str
    pack: str
    args: Mapping[str, Source]
    type: Type
    fingerprint: str
    vars: tuple[str, ...] = ()
    spans: tuple[Span, ...] = ()

    def refs(self) -> list[str]:
        return [s.step for s in self.args.values() if isinstance(s, Ref)]

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id, "module": self.module, "version": self.version, "pack": self.pack,
            "args": {k: source_to_dict(v) for k, v in self.args.items()}, "type": str(self.type),
            "vars": list(self.vars), "spans": [vars(s) for s in self.spans], "fingerprint": self.fingerprint,
        }


@dataclass(frozen=True)
class Plan:
    steps: tuple[Step, ...]
    result: Source
    result_type: Type
    inputs: tuple[str, ...]
    warnings: tuple[Diagnostic, ...] = ()
    source: str = ""
    by_id: Mapping[str, Step] = field(default_factory=dict, compare=False, repr=False)

    def step(self, step_id: str) -> Step:
        return self.by_id[step_id]

    def fingerprint(self) -> str:
        """Identity of what the plan computes, independent of names, spacing and comments."""
        result = source_to_dict(self.result)
        if "step" in result:
            result = {"step": self.by_id[result["step"]].fingerprint}
        blob = json.dumps({"steps": sorted(s.fingerprint for s in self.steps), "result": result}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()

    def to_dict(self) -> dict[str, Any]:
        return {
            "steps": [s.to_dict() for s in self.steps], "result": source_to_dict(self.result),
            "result_type": str(self.result_type), "inputs": list(self.inputs),
            "fingerprint": self.fingerprint(), "warnings": [w.to_dict() for w in self.warnings],
        }


def canonical_const(value: Any) -> Any:
    """One spelling per value, so ``2`` and ``2.0`` reach the same step and the same cache entry."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    if isinstance(value, (list, tuple)):
        return [canonical_const(v) for v in value]
    return value


def literal_type(value: Any) -> Type:
    if isinstance(value, bool):
        return BOOL
    if isinstance(value, (int, float)):
        return NUMBER
    if isinstance(value, str):
        return TEXT
    if value is None:
        return NONE
    if isinstance(value, list):
        return List(join_types([literal_type(v) for v in value]) if value else ANY)
    return ANY


def join_types(types: list[Type]) -> Type:
    if not types:
        return ANY
    first = types[0]
    return first if all(t == first for t in types) else ANY


_ARITH = {"+", "-", "*", "/", "//", "%", "**"}
_SCALAR = {"Number", "Text", "Bool", "Any"}
# What a failed expression yields: typed Any so one mistake is reported once, not again by every user.
_POISON: tuple[Source, Type] = (Input("\0error"), ANY)


class _Compiler:
    def __init__(self, program: S.Program, catalog: Mapping[str, Signature], inputs: Mapping[str, Type], limits: Limits) -> None:
        self.program = program
        self.catalog = {**BUILTINS, **catalog}
        self.inputs = inputs
        self.limits = limits
        self.env: dict[str, tuple[Source, Type]] = {}
        self.defined_at: dict[str, int] = {}
        self.first_assign: dict[str, int] = {}
        self.used: set[str] = set()
        self.used_inputs: list[str] = []
        self.steps: list[dict[str, Any]] = []
        self.by_fp: dict[str, dict[str, Any]] = {}
        self.errors: list[Diagnostic] = []
        self.warnings: list[Diagnostic] = []
        self.result: tuple[Source, Type] | None = None
        self.result_var: str | None = None
        for stmt in program.statements:
            if isinstance(stmt, S.Assign):
                self.first_assign.setdefault(stmt.target, stmt.span.line)

    def error(self, span: Span, message: str, hint: str | None = None, code: str = "error") -> tuple[Source, Type]:
        self.errors.append(Diagnostic.at(span, message, hint=hint, code=code))
        return _POISON

    # -- statements ---------------------------------------------------------------------
    def run(self) -> Plan:
        stmts = self.program.statements
        if not stmts:
            self.error(Span(1, 1, 1, 2), "program is empty",
                       hint="write at least one statement, e.g. ANSWER = COUNT(box=LOC(image=IMAGE, object='dog'))",
                       code="empty")
            raise ProgramError(self.errors, self.program.source)
        last: tuple[Source, Type] = _POISON
        last_var: str | None = None
        for stmt in stmts:
            value = self.expr(stmt.value, stmt)
            if isinstance(stmt, S.Assign):
                self.env[stmt.target] = value
                self.defined_at[stmt.target] = stmt.span.line
                self.name_step(value[0], stmt.target, stmt.span)
                last_var = stmt.target
            last = value
        if self.result is None:
            self.result = last
            self.result_var = last_var
        for name, line in self.defined_at.items():
            if name not in self.used and name != self.result_var and self.env[name] != self.result:
                stmt = next(s for s in stmts if isinstance(s, S.Assign) and s.target == name and s.span.line == line)
                self.warnings.append(Diagnostic.at(stmt.target_span, f"'{name}' is assigned but never used",
                                                   code="unused", severity="warning"))
        if self.errors:
            raise ProgramError(sorted(self.errors, key=lambda d: (d.line, d.column)), self.program.source)
        steps = tuple(
            Step(s["id"], s["module"], s["version"], s["pack"], s["args"], s["type"], s["fingerprint"],
                 tuple(s["vars"]), tuple(s["spans"]))
            for s in self.steps
        )
        return Plan(steps, self.result[0], self.result[1], tuple(self.used_inputs), tuple(self.warnings),
                    self.program.source, {s.id: s for s in steps})

    def name_step(self, src: Source, var: str, span: Span) -> None:
        if isinstance(src, Ref):
            step = self.steps[int(src.step[1:]) - 1]
            if var not in step["vars"]:
                step["vars"].append(var)
            if span not in step["spans"]:
                step["spans"].append(span)

    # -- expressions --------------------------------------------------------------------
    def lookup(self, name: str, span: Span) -> tuple[Source, Type]:
        self.used.add(name)
        if name in self.env:
            return self.env[name]
        if name in self.inputs:
            if name not in self.used_inputs:
                self.used_inputs.append(name)
            return Input(name), self.inputs[name]
        if name in self.first_assign:
            return self.error(span, f"'{name}' is used before it is defined",
                              hint=f"it is assigned on line {self.first_assign[name]}", code="use-before-definition")
        hint = did_you_mean(name, [*self.env, *self.inputs])
        if hint is None and self.inputs:
            hint = "inputs of this program: " + ", ".join(sorted(self.inputs))
        return self.error(span, f"undefined variable '{name}'", hint=hint, code="undefined-variable")

    def expr(self, node: S.Expr, stmt: S.Statement | None = None) -> tuple[Source, Type]:
        if isinstance(node, S.Literal):
            return Const(canonical_const(node.value)), literal_type(node.value)
        if isinstance(node, S.Name):
            return self.lookup(node.id, node.span)
        if isinstance(node, S.Call):
            return self.call(node)
        if isinstance(node, S.ListExpr):
            items = [self.expr(i) for i in node.items]
            if all(isinstance(s, Const) for s, _ in items):
                value = [s.value for s, _ in items]  # type: ignore[union-attr]
                try:
                    # Constants carry over between statements: one list per statement could nest without end.
                    check_value(value)
                except EvalError as e:
                    return self.error(node.span, str(e), code="eval")
                return Const(value), List(join_types([t for _, t in items]))
        return self.expression_step(node, node.span)

    def expression_step(self, node: S.Expr, span: Span) -> tuple[Source, Type]:
        """An expression becomes an EVAL step whose text names its inputs x0, x1…: the same
        expression over the same values is one step, however the variables were called."""
        refs: dict[Source, str] = {}
        args: dict[str, Source] = {}
        before = len(self.errors)

        def alias(src: Source) -> str:
            if src not in refs:
                refs[src] = f"x{len(refs)}"
                args[refs[src]] = src
            return refs[src]

        rewritten, typ = self.rewrite(node, alias)
        if len(self.errors) > before:
            return _POISON
        text = format_expr(rewritten)
        if not args:
            # Nothing to wait for: fold it now, and report a failure as a compile error.
            try:
                value = evaluate(rewritten, {})
            except EvalError as e:
                return self.error(span, str(e), code="eval")
            return Const(canonical_const(value)), literal_type(value) if typ == ANY else typ
        return self.add_step(EVAL, {"expr": Const(text), **args}, typ, span)

    def rewrite(self, node: S.Expr, alias: Any) -> tuple[S.Expr, Type]:
        """Replace variables and calls with aliases (constants inline) and infer the type."""
        span = node.span

        def ref(src: Source, typ: Type) -> tuple[S.Expr, Type]:
            if isinstance(src, Const):
                return S.Literal(src.value, span), literal_type(src.value) if typ == ANY else typ
            return S.Name(alias(src), span), typ

        if isinstance(node, S.Literal):
            return node, literal_type(node.value)
        if isinstance(node, S.Name):
            return ref(*self.lookup(node.id, span))
        if isinstance(node, S.Call):
            return ref(*self.call(node))
        if isinstance(node, S.Placeholder):
            src, typ = self.lookup(node.name, span)
            if isinstance(src, Const):
                value = as_number(src.value)
                return S.Literal(value, span), literal_type(value)
            # A Text placeholder may read as a number at run time: its type is known only then.
            return S.Placeholder(alias(src), span), ANY if typ == TEXT else typ
        if isinstance(node, S.Template):
            parts: list[str | S.Placeholder] = []
            for p in node.parts:
                if isinstance(p, str):
                    parts.append(p)
                    continue
                src, typ = self.lookup(p.name, p.span)
                if typ.name not in _SCALAR | {"List", "None"}:
                    self.error(p.span, f"'{{{p.name}}}' is {typ}, which has no text form", code="type")
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
            if all(isinstance(p, str) for p in merged):
                return S.Literal("".join(merged), span), TEXT  # type: ignore[arg-type]
            return S.Template(tuple(merged), span), TEXT
        if isinstance(node, S.ListExpr):
            items = [self.rewrite(i, alias) for i in node.items]
            typ = List(join_types([t for _, t in items]))
            if _nesting(typ) > MAX_VALUE_DEPTH:
                # The run would fail (check_value), and deep types break str() and JSON first.
                self.error(span, f"the value is nested too deeply (more than {MAX_VALUE_DEPTH} levels)", code="eval")
                typ = ANY
            return S.ListExpr(tuple(i for i, _ in items), span), typ
        if isinstance(node, S.Unary):
            operand, t = self.rewrite(node.operand, alias)
            if node.op == "not":
                return S.Unary("not", operand, span), BOOL
            if t.name not in ("Number", "Any"):
                self.error(node.span, f"'{node.op}' needs a Number, got {t}", code="type")
            return S.Unary(node.op, operand, span), NUMBER if t == NUMBER else ANY
        if isinstance(node, S.Binary):
            left, lt = self.rewrite(node.left, alias)
            right, rt = self.rewrite(node.right, alias)
            out = S.Binary(node.op, left, right, span)
            if node.op not in _ARITH:
                return out, BOOL
            return out, self.arith_type(node, lt, rt)
        if isinstance(node, S.Compare):
            left, lt = self.rewrite(node.left, alias)
            comps = [self.rewrite(c, alias) for c in node.comparators]
            types = [lt, *(t for _, t in comps)]
            for op, a, b, c in zip(node.ops, types, types[1:], node.comparators):
                if op in ("<", "<=", ">", ">=") and not ({a.name, b.name} <= {"Number", "Any"} or {a.name, b.name} <= {"Text", "Any"}):
                    self.error(Span(node.span.line, node.span.column, c.span.end_line, c.span.end_column),
                               f"cannot compare {a} {op} {b}", code="type")
                if op == "in" and b.name not in ("Text", "List", "Any"):
                    self.error(c.span, f"'in' needs a Text or a List on its right, got {b}", code="type")
            return S.Compare(left, node.ops, tuple(c for c, _ in comps), span), BOOL
        if isinstance(node, S.IfExp):
            test, _ = self.rewrite(node.test, alias)
            body, bt = self.rewrite(node.body, alias)
            orelse, ot = self.rewrite(node.orelse, alias)
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
        self.error(node.span, f"'{node.op}' needs {need}, got {lt} and {rt}", code="type")
        return ANY

    # -- calls --------------------------------------------------------------------------
    def call(self, node: S.Call) -> tuple[Source, Type]:
        sig = self.catalog.get(node.func)
        if sig is None:
            for a in node.args:
                self.expr(a.value)
            names = [n for n in self.catalog if not n.startswith("_")]
            return self.error(node.func_span, f"unknown module '{node.func}'", hint=did_you_mean(node.func, names),
                              code="unknown-module")
        bound = self.bind(sig, node)
        if bound is None:
            return _POISON
        if sig.name == "RESULT":
            src, typ = self.expr(bound["var"][1]) if "var" in bound else _POISON
            self.result = (src, typ)
            if isinstance(bound["var"][1], S.Name):
                self.result_var = bound["var"][1].id
            return src, typ
        if sig.name == "EVAL":
            return self.eval_call(node, bound)
        args: dict[str, Source] = {}
        before = len(self.errors)
        for p in sig.params:
            if p.name not in bound:
                args[p.name] = Const(canonical_const(p.default))
                continue
            _, value = bound[p.name]
            src, typ = self.expr(value)
            self.check_arg(sig, p, src, typ, value.span)
            args[p.name] = src
        if len(self.errors) > before:
            return _POISON
        return self.add_step(sig, args, sig.returns, node.span)

    def bind(self, sig: Signature, node: S.Call) -> dict[str, tuple[Span, S.Expr]] | None:
        bound: dict[str, tuple[Span, S.Expr]] = {}
        ok = True
        # Only positionals before the first keyword bind by position; a later one is an error of its
        # own and must not also bind to a parameter (which would report a bogus duplicate).
        first_kw = next((i for i, a in enumerate(node.args) if a.name is not None), len(node.args))
        positional = list(node.args[:first_kw])
        misplaced = [a for a in node.args[first_kw:] if a.name is None]
        keywords = {a.name for a in node.args if a.name is not None}
        free = [p.name for p in sig.params[len(positional):] if p.name not in keywords]
        for a in misplaced:
            self.error(a.span, "positional argument after a keyword argument",
                       hint=f"name it, e.g. {free[0]}=…" if free else None, code="argument")
            ok = False
        if len(positional) > len(sig.params):
            extra = positional[len(sig.params)]
            n = len(sig.params)
            self.error(extra.span, f"{sig.name} takes {n} argument{'s' if n != 1 else ''}, got {len(positional)}",
                       hint=f"{sig.name}({', '.join(p.name for p in sig.params)})", code="argument")
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
                self.error(name_span, f"{sig.name} has no argument '{a.name}'", hint=hint, code="unknown-argument")
                self.expr(a.value)
                ok = False
                continue
            if a.name in bound:
                self.error(name_span, f"argument '{a.name}' is given twice", code="duplicate-argument")
                ok = False
                continue
            bound[a.name] = (a.span, a.value)
        for p in sig.params:
            # A misspelt or misplaced argument already says which one is missing: no second error for it.
            if p.required and p.name not in bound and p.name not in suggested and p.name not in free[:len(misplaced)]:
                self.error(node.func_span, f"{sig.name} is missing argument '{p.name}' ({p.type})",
                           hint=f"add {p.name}=…", code="missing-argument")
                ok = False
        return bound if ok else None

    def check_arg(self, sig: Signature, p: Param, src: Source, typ: Type, span: Span) -> bool:
        if typ == NONE:
            if p.default is None:
                return True
            self.error(span, f"{sig.name}'s '{p.name}' cannot be None", hint=f"give a {p.type}", code="type")
            return False
        if not p.type.accepts(typ):
            self.error(span, f"{sig.name} expects {p.type} for '{p.name}', got {typ}", code="type")
            return False
        if p.choices is not None and isinstance(src, Const) and src.value not in p.choices:
            allowed = ", ".join(repr(c) for c in p.choices)
            hint = did_you_mean(str(src.value), [str(c) for c in p.choices]) if isinstance(src.value, str) else None
            self.error(span, f"{sig.name}'s '{p.name}' must be one of {allowed}; got {src.value!r}",
                       hint=hint, code="choice")
            return False
        return True

    def eval_call(self, node: S.Call, bound: dict[str, tuple[Span, S.Expr]]) -> tuple[Source, Type]:
        _, value = bound["expr"]
        if not isinstance(value, S.Literal) or not isinstance(value.value, str):
            return self.error(value.span, "EVAL's 'expr' must be a string literal",
                              hint="write the expression itself, without EVAL, to compute it from variables",
                              code="eval")
        raw = value.raw or repr(value.value)
        decoded_offsets = _offsets(raw)
        base = value.span

        def pos_span(start: int, end: int) -> Span:
            def col(i: int) -> int:
                i = max(0, min(i, len(decoded_offsets) - 1))
                return base.column + decoded_offsets[i]

            return Span(base.line, col(start), base.line, max(col(end), col(start) + 1))

        try:
            expr = parse_expression(value.value, pos_span, self.limits)
        except ProgramError as e:
            self.errors.extend(e.diagnostics)
            return _POISON
        calls = [n for n in S.walk(expr) if isinstance(n, S.Call)]
        if calls:
            return self.error(calls[0].span, "an EVAL string cannot call modules",
                              hint="call the module in its own statement and use {VAR}", code="eval")
        return self.expression_step(expr, node.span)

    def add_step(self, sig: Signature, args: dict[str, Source], typ: Type, span: Span) -> tuple[Source, Type]:
        def part(src: Source) -> Any:
            if isinstance(src, Ref):
                return {"step": self.steps[int(src.step[1:]) - 1]["fingerprint"]}
            return source_to_dict(src)

        blob = json.dumps({"module": sig.name, "pack": sig.pack, "version": sig.version, "args": {k: part(v) for k, v in args.items()}},
                          sort_keys=True, ensure_ascii=False, default=str)
        fp = hashlib.sha256(blob.encode("utf-8", "surrogatepass")).hexdigest()
        step = self.by_fp.get(fp)
        if step is None:
            step = {"id": f"s{len(self.steps) + 1}", "module": sig.name, "version": sig.version, "pack": sig.pack,
                    "args": args, "type": typ, "fingerprint": fp, "vars": [], "spans": [span]}
            self.steps.append(step)
            self.by_fp[fp] = step
        elif span not in step["spans"]:
            step["spans"].append(span)
        return Ref(step["id"]), typ


def _nesting(typ: Type) -> int:
    depth = 1
    while typ.item is not None:
        typ, depth = typ.item, depth + 1
    return depth


def _offsets(raw: str) -> list[int]:
    return decode_string(raw)[1]


def compile_program(
    program: S.Program | str,
    catalog: Mapping[str, Signature],
    inputs: Mapping[str, Type] | None = None,
    limits: Limits = DEFAULT_LIMITS,
) -> Plan:
    """Type-check a program against ``catalog`` and build its plan. Raises ProgramError with every
    diagnostic it found. ``inputs`` names the images the caller provides (default IMAGE, LEFT, RIGHT)."""
    if isinstance(program, str):
        program = parse(program, limits)
    return _Compiler(program, catalog, DEFAULT_INPUTS if inputs is None else inputs, limits).run()


@lru_cache(maxsize=1024)
def _memo(text: str, catalog: Catalog, inputs: tuple[tuple[str, Type], ...] | None, limits: Limits) -> Plan:
    return compile_program(text, catalog, dict(inputs) if inputs is not None else None, limits)


def compile_cached(text: str, catalog: Catalog, inputs: Mapping[str, Type] | None = None,
                   limits: Limits = DEFAULT_LIMITS) -> Plan:
    """compile_program memoized by program text (plans are immutable): a repeated program costs a lookup."""
    key = tuple(sorted(inputs.items(), key=lambda kv: kv[0])) if inputs is not None else None
    return _memo(text, catalog, key, limits)
