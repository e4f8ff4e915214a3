"""What a compiled program is: typed steps in dependency order, each with the identity that its
run-time cache key is built the same way as."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .errors import Diagnostic, Span
from .types import Type


@dataclass(frozen=True)
class Const:
    value: Any


@dataclass(frozen=True)
class Ref:
    step: str


@dataclass(frozen=True)
class Input:
    name: str


Source = Const | Ref | Input


def source_to_dict(src: Source) -> dict[str, Any]:
    if isinstance(src, Const):
        return {"const": src.value}
    if isinstance(src, Ref):
        return {"step": src.step}
    return {"input": src.name}


def canonical_const(value: Any) -> Any:
    """One spelling per value, so ``2`` and ``2.0`` reach the same step and the same cache entry."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    if isinstance(value, (list, tuple)):
        return [canonical_const(v) for v in value]
    return value


def step_key(module: str, version: str, consts: Mapping[str, Any], inputs: Mapping[str, str]) -> str:
    """sha256 of the module, its version, its constant arguments and the keys of its inputs: the same
    sub-program on the same image always has the same key, whoever asks and however it is written.

    The executor keys a run's steps with it (inputs: image and step keys); the compiler names the
    steps of a plan with it (inputs: the input's name, the parent step's fingerprint)."""
    blob = json.dumps({"m": module, "v": version, "a": consts, "i": inputs}, sort_keys=True,
                      ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8", "surrogatepass")).hexdigest()


def step_fingerprint(module: str, version: str, args: Mapping[str, Source],
                     parent: Callable[[str], str]) -> str:
    """A step's identity in a plan: step_key over its constants and its sources, a parent step by
    that step's fingerprint (``parent`` gives it), so identities chain like the cache keys do."""
    consts = {k: v.value for k, v in args.items() if isinstance(v, Const)}
    inputs = {k: f"step:{parent(v.step)}" if isinstance(v, Ref) else f"input:{v.name}"
              for k, v in args.items() if not isinstance(v, Const)}
    return step_key(module, version, consts, inputs)


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
    # Why this module of the ones offering the name (a routed call): shown in the step's record.
    # A routed call no module takes has no pack, and this says why: running it fails with it.
    route: str = ""

    def refs(self) -> list[str]:
        return [s.step for s in self.args.values() if isinstance(s, Ref)]

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id, "module": self.module, "version": self.version, "pack": self.pack,
            "args": {k: source_to_dict(v) for k, v in self.args.items()}, "type": str(self.type),
            "vars": list(self.vars), "spans": [vars(s) for s in self.spans], "fingerprint": self.fingerprint,
            **({"route": self.route} if self.route else {}),
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
    # The program in canonical form, formatted from the tree it was compiled from, so a run parses
    # its text once; kept as text, not as the tree, which weighs fifteen times more in the plan memo.
    canonical: str = field(default="", compare=False)

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
