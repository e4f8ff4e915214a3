"""The baselines ``bench/workload.py`` holds nsx to: programs run in this process, one step after
another, on the packs' own module objects, with no service, no batching and no store.

- ``Sequential``: a VisProg-style interpreter. The program is compiled by the project's compiler
  against the packs' catalog (the catalog the pool builds), then the plan's steps run in order, each
  as ``module.forward([args])[0]``, the values passed from step to step. Nothing is remembered
  between questions, so ten questions on one image run its detector (at least) ten times.
- ``Memo``: the same interpreter with a plain dict memo, keyed by the step's module, version,
  constant arguments and its inputs' identities (an image's key, or the key of the step that made
  the value): each distinct call on an image is computed once per process.

Both count the forward calls per module (each is one item, batch size 1), so a benchmark can report
how many detector passes each way took. A program text is compiled once per interpreter (as the
server's plan memo does); ``reset()`` forgets plans and memo, so repeats start cold.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from modules.base import Module, ModuleError, Pack
from modules.device import resolve_device
from modules.packs import build_catalog, resolve_modules
from modules.values import ImageValue
from program_dsl import IMAGE, Catalog, Const, Input, Plan, ProgramError, Step, compile_program


@dataclass
class Loaded:
    """The packs' module objects, loaded, and the catalog programs compile against."""

    packs: list[Pack]
    modules: dict[str, Module]  # qualified name (``shapes.LOC``) → the module
    catalog: Catalog


def load(packs: Sequence[Pack], device: str = "auto", warm: bool = True) -> Loaded:
    """Load the packs' modules as the pool would: symbolic ones on the CPU, the rest on ``device``,
    each warmed once so no timed call pays for lazy initialisation."""
    loaded = list(packs)
    qualified, _ = resolve_modules(loaded, {})
    target = resolve_device(device)
    for module in dict.fromkeys(qualified.values()):
        module.load("cpu" if module.cheap else target)
        if warm:
            module.warmup()
    return Loaded(loaded, dict(qualified), build_catalog(loaded, {}))


@dataclass(frozen=True)
class Outcome:
    """A program's answer (``value``), or why it has none (``error``)."""

    value: Any
    error: str | None = None


class Sequential:
    """Compile, then every step in plan order, one ``forward`` of one item each; no cache."""

    def __init__(self, loaded: Loaded) -> None:
        self.loaded = loaded
        self.plans: dict[str, Plan] = {}
        self.forwards: Counter[str] = Counter()

    def reset(self) -> None:
        self.plans.clear()
        self.forwards.clear()

    def compile(self, program: str, inputs: Sequence[str] = ("IMAGE",)) -> Plan:
        plan = self.plans.get(program)
        if plan is None:
            plan = compile_program(program, self.loaded.catalog, dict.fromkeys(inputs, IMAGE))
            self.plans[program] = plan
        return plan

    def run(self, program: str, images: Mapping[str, ImageValue]) -> Outcome:
        try:
            plan = self.compile(program, tuple(images))
        except ProgramError as e:
            return Outcome(None, f"program error: {e}")
        values: dict[str, Any] = {}
        keys: dict[str, Hashable] = {}
        for step in plan.steps:
            module = self.loaded.modules.get(f"{step.pack}.{step.module}")
            if module is None:
                return Outcome(None, f"no module {step.pack}.{step.module} here ({step.route or 'not loaded'})")
            args: dict[str, Any] = {}
            for name, src in step.args.items():
                if isinstance(src, Const):
                    args[name] = src.value
                elif isinstance(src, Input):
                    args[name] = images[src.name]
                else:
                    args[name] = values[src.step]
            out, keys[step.id] = self.call(step, module, args, images, keys)
            if isinstance(out, BaseException):
                return Outcome(None, f"step {step.id} ({step.module}) failed: {out}")
            values[step.id] = out
        result = plan.result
        if isinstance(result, Const):
            return Outcome(result.value)
        if isinstance(result, Input):
            return Outcome(images[result.name])
        return Outcome(values[result.step])

    def call(self, step: Step, module: Module, args: dict[str, Any], images: Mapping[str, ImageValue],
             keys: Mapping[str, Hashable]) -> tuple[Any, Hashable]:
        """The step's value (an exception instance when it failed) and its memo key (None here)."""
        return self.forward(step, module, args), None

    def forward(self, step: Step, module: Module, args: dict[str, Any]) -> Any:
        self.forwards[f"{step.pack}.{step.module}"] += 1
        try:
            return module.forward([args])[0]
        except ModuleError as e:
            return e


class Memo(Sequential):
    """``Sequential`` with a dict memo: a step whose module, version, constants and inputs were seen
    before returns the value (or the failure) computed then."""

    def __init__(self, loaded: Loaded) -> None:
        super().__init__(loaded)
        self.memo: dict[Hashable, Any] = {}
        self.hits: Counter[str] = Counter()
        self.misses: Counter[str] = Counter()

    def reset(self) -> None:
        super().reset()
        self.memo.clear()
        self.hits.clear()
        self.misses.clear()

    def call(self, step: Step, module: Module, args: dict[str, Any], images: Mapping[str, ImageValue],
             keys: Mapping[str, Hashable]) -> tuple[Any, Hashable]:
        consts = {n: s.value for n, s in step.args.items() if isinstance(s, Const)}
        inputs = tuple(sorted((n, images[s.name].key if isinstance(s, Input) else keys[s.step])
                              for n, s in step.args.items() if not isinstance(s, Const)))
        # JSON for the constants: a list argument is not hashable, and 2 and 2.0 are already one
        # spelling in the plan.
        key = (step.pack, step.module, step.version, module.state(),
               json.dumps(consts, sort_keys=True, ensure_ascii=False), inputs)
        qname = f"{step.pack}.{step.module}"
        if key in self.memo:
            self.hits[qname] += 1
            return self.memo[key], key
        self.misses[qname] += 1
        out = self.forward(step, module, args)
        self.memo[key] = out
        return out, key
