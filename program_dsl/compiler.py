"""Syntax tree + catalog → Plan: typed steps in topological order, duplicates merged, names dropped."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from . import syntax as S
from .arguments import Bound, bind, check_argument
from .errors import Diagnostic, ProgramError, Span, did_you_mean
from .evaluate import EvalError, check_value, evaluate
from .expressions import Rewrite
from .formatter import format_expr, format_program
from .parser import DEFAULT_LIMITS, Limits, parse, parse_expression
from .plan import Const, Input, Plan, Ref, Source, Step, canonical_const, step_fingerprint
from .strings import decode_string
from .types import (
    ANY,
    IMAGE,
    Catalog,
    List,
    Param,
    Route,
    RouteError,
    Signature,
    Type,
    join_types,
    param,
    signature,
    type_of,
)

# EVAL and RESULT belong to the language itself: every catalog has them.
EVAL = signature("EVAL", "Any", param("expr", "Text", doc="an expression; {X} stands for X's value"),
                 version="1", doc="Evaluate an expression over earlier results (no Python eval).")
RESULT = signature("RESULT", "Any", param("var", "Any", doc="the value to return"),
                   doc="Mark the program's result.")
BUILTINS = {"EVAL": EVAL, "RESULT": RESULT}

# Images a program may name without defining them, unless the caller says which it provides.
DEFAULT_INPUTS: Mapping[str, Type] = {"IMAGE": IMAGE, "LEFT": IMAGE, "RIGHT": IMAGE}


# What a failed expression yields: typed Any so one mistake is reported once, not again by every user.
_POISON: tuple[Source, Type] = (Input("\0error"), ANY)


# An example value, by parameter type, for the hint on a prompt-template placeholder.
_EXAMPLES = {"Number": "5", "Text": "'…'", "Bool": "True"}


class _Compiler:
    def __init__(self, program: S.Program, catalog: Mapping[str, Signature], inputs: Mapping[str, Type],
                 limits: Limits) -> None:
        self.program = program
        self.catalog = {**BUILTINS, **catalog}
        self.routes: Mapping[str, Route] = catalog.routes if isinstance(catalog, Catalog) else {}
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
        # '{X}' means X's value only inside an EVAL string; the flag says where the compiler is.
        self.in_eval = False
        for stmt in program.statements:
            if isinstance(stmt, S.Assign):
                self.first_assign.setdefault(stmt.target, stmt.span.line)

    def error(self, span: Span, message: str, hint: str | None = None, code: str = "error") -> tuple[Source, Type]:
        self.errors.append(Diagnostic.at(span, message, hint=hint, code=code))
        return _POISON

    def report(self, span: Span, message: str, hint: str | None, code: str) -> None:
        self.error(span, message, hint, code)

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
                stmt = next(s for s in stmts
                            if isinstance(s, S.Assign) and s.target == name and s.span.line == line)
                self.warnings.append(Diagnostic.at(stmt.target_span, f"'{name}' is assigned but never used",
                                                   code="unused", severity="warning"))
        if self.errors:
            raise ProgramError(sorted(self.errors, key=lambda d: (d.line, d.column)), self.program.source)
        steps = tuple(
            Step(s["id"], s["module"], s["version"], s["pack"], s["args"], s["type"], s["fingerprint"],
                 tuple(s["vars"]), tuple(s["spans"]), s["route"])
            for s in self.steps
        )
        return Plan(steps, self.result[0], self.result[1], tuple(self.used_inputs), tuple(self.warnings),
                    self.program.source, {s.id: s for s in steps}, format_program(self.program))

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
                              hint=f"it is assigned on line {self.first_assign[name]}",
                              code="use-before-definition")
        hint = did_you_mean(name, [*self.env, *self.inputs])
        if hint is None and self.inputs:
            hint = "inputs of this program: " + ", ".join(sorted(self.inputs))
        return self.error(span, f"undefined variable '{name}'", hint=hint, code="undefined-variable")

    def stray_placeholder(self, node: S.Placeholder, param: Param | None = None) -> tuple[Source, Type]:
        """'{X}' outside an EVAL string: a slip for X if the program knows X; else, most likely, a
        placeholder of the prompt template the program was written from (VisProg's ``{list_max}``)."""
        name = node.name
        self.used.add(name)
        if name in self.first_assign or name in self.inputs:
            hint = f"write {name}"
        else:
            example = _EXAMPLES.get(str(param.type)) if param is not None else None
            value = f"a value, e.g. {param.name}={example}" if param is not None and example else "a value"
            hint = (f"it looks like a prompt-template placeholder, which must be filled in before the program is "
                    f"sent: replace {{{name}}} with {value}")
        return self.error(node.span, f"'{{{name}}}' is only meaningful inside an EVAL string", hint=hint,
                          code="placeholder")

    def expr(self, node: S.Expr, stmt: S.Statement | None = None) -> tuple[Source, Type]:
        if isinstance(node, S.Literal):
            return Const(canonical_const(node.value)), type_of(node.value)
        if isinstance(node, S.Name):
            return self.lookup(node.id, node.span)
        if isinstance(node, S.Call):
            return self.call(node)
        if isinstance(node, S.ListExpr):
            items = [self.expr(i) for i in node.items]
            consts = [s for s, _ in items if isinstance(s, Const)]
            if len(consts) == len(items):
                value = [c.value for c in consts]
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

        rewritten, typ = Rewrite(self, alias)(node)
        if len(self.errors) > before:
            return _POISON
        text = format_expr(rewritten)
        if not args:
            # Nothing to wait for: fold it now, and report a failure as a compile error.
            try:
                value = evaluate(rewritten, {})
            except EvalError as e:
                return self.error(span, str(e), code="eval")
            return Const(canonical_const(value)), type_of(value) if typ == ANY else typ
        return self.add_step(EVAL, {"expr": Const(text), **args}, typ, span)

    # -- calls --------------------------------------------------------------------------
    def call(self, node: S.Call) -> tuple[Source, Type]:
        sig = self.catalog.get(node.func)
        if sig is None:
            for a in node.args:
                self.expr(a.value)
            names = [n for n in self.catalog if not n.startswith("_")]
            return self.error(node.func_span, f"unknown module '{node.func}'", hint=did_you_mean(node.func, names),
                              code="unknown-module")
        bound, stray = bind(sig, node, self.report)
        for value in stray:
            self.expr(value)
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
            if isinstance(value, S.Placeholder):
                # Directly an argument, so the hint can show the argument with a value.
                args[p.name] = self.stray_placeholder(value, p)[0]
                continue
            src, typ = self.expr(value)
            check_argument(sig, p, src, typ, value.span, self.report)
            args[p.name] = src
        if len(self.errors) > before:
            return _POISON
        route = self.routes.get(node.func)
        if route is None:
            return self.add_step(sig, args, sig.returns, node.span)
        consts = {n: s.value for n, s in args.items() if isinstance(s, Const)}
        try:
            routed = route(consts)
        except RouteError as e:
            # A type-checked program compiles on every deployment; only running this step fails.
            at = bound[e.param][1].span if e.param in bound else node.span
            self.warnings.append(Diagnostic.at(at, str(e), hint=e.hint, code="route", severity="warning"))
            return self.add_step(replace(sig, pack=""), args, sig.returns, node.span,
                                 f"{e}; {e.hint}" if e.hint else str(e))
        chosen = routed.signature
        takes = {p.name for p in chosen.params}
        for name in [n for n in args if n not in takes]:
            if name in bound:  # an option of another pack's module
                return self.error(bound[name][0], f"{node.func} here is {chosen.pack}'s, which has no argument "
                                  f"'{name}' ({routed.reason})",
                                  hint=f"{chosen.pack}.{node.func} takes {', '.join(p.name for p in chosen.params)}",
                                  code="unknown-argument")
            del args[name]
        for p in chosen.params:
            if p.name not in args:
                args[p.name] = Const(canonical_const(p.default))
        return self.add_step(chosen, args, sig.returns, node.span, routed.reason)

    def eval_call(self, node: S.Call, bound: Bound) -> tuple[Source, Type]:
        _, value = bound["expr"]
        if isinstance(value, S.Placeholder):
            return self.stray_placeholder(value)
        if not isinstance(value, S.Literal) or not isinstance(value.value, str):
            return self.error(value.span, "EVAL's 'expr' must be a string literal",
                              hint="write the expression itself, without EVAL, to compute it from variables",
                              code="eval")
        raw = value.raw or repr(value.value)
        decoded_offsets = decode_string(raw)[1]
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
        self.in_eval = True
        try:
            return self.expression_step(expr, node.span)
        finally:
            self.in_eval = False

    def add_step(self, sig: Signature, args: dict[str, Source], typ: Type, span: Span,
                 route: str = "") -> tuple[Source, Type]:
        def parent(step_id: str) -> str:
            fingerprint: str = self.steps[int(step_id[1:]) - 1]["fingerprint"]
            return fingerprint

        fp = step_fingerprint(f"{sig.pack}.{sig.name}", sig.version, args, parent)
        step = self.by_fp.get(fp)
        if step is None:
            step = {"id": f"s{len(self.steps) + 1}", "module": sig.name, "version": sig.version, "pack": sig.pack,
                    "args": args, "type": typ, "fingerprint": fp, "vars": [], "spans": [span], "route": route}
            self.steps.append(step)
            self.by_fp[fp] = step
        elif span not in step["spans"]:
            step["spans"].append(span)
        return Ref(step["id"]), typ


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


class PlanMemo:
    """Plans by (text, catalog, inputs, limits), least recently used dropped first, bounded by an
    estimate of the bytes they hold rather than by their number: a thousand 64 KB programs are not
    a thousand one-liners. Thread-safe (compiles also run on threads)."""

    # What a plan holds per byte of its program (AST, steps, spans, canonical text): measured with
    # tracemalloc over the corpus and examples, median 68 bytes, 49 for an 800-statement program,
    # up to 151 for one-liners, whose fixed part PER_ENTRY covers.
    PER_BYTE = 64
    PER_ENTRY = 8192

    def __init__(self, max_bytes: int = 32 * 1024 * 1024) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self._plans: OrderedDict[tuple[Any, ...], tuple[Plan, int]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple[Any, ...]) -> Plan | None:
        with self._lock:
            found = self._plans.get(key)
            if found is None:
                return None
            self._plans.move_to_end(key)
            return found[0]

    def put(self, key: tuple[Any, ...], plan: Plan, text: str, inputs: int) -> None:
        cost = self.PER_ENTRY + self.PER_BYTE * len(text) + 64 * inputs
        if cost > self.max_bytes:
            return
        with self._lock:
            old = self._plans.pop(key, None)
            if old is not None:
                self.bytes -= old[1]
            self._plans[key] = (plan, cost)
            self.bytes += cost
            while self.bytes > self.max_bytes:
                _, (_, dropped) = self._plans.popitem(last=False)
                self.bytes -= dropped

    def __len__(self) -> int:
        return len(self._plans)


PLANS = PlanMemo()


def compile_cached(text: str, catalog: Catalog, inputs: Mapping[str, Type] | None = None,
                   limits: Limits = DEFAULT_LIMITS) -> Plan:
    """compile_program memoized by program text (plans are immutable): a repeated program costs a lookup."""
    names = tuple(sorted(inputs.items(), key=lambda kv: kv[0])) if inputs is not None else None
    key = (text, catalog, names, limits)
    plan = PLANS.get(key)
    if plan is None:
        plan = compile_program(text, catalog, dict(names) if names is not None else None, limits)
        PLANS.put(key, plan, text, len(names or ()))
    return plan
