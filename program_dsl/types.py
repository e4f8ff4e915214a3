"""Value types and module signatures: the compiler's whole view of the module catalog."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True)
class Type:
    """A value type: ``Image``, ``Objects``, ``Number``, ``Bool``, ``Text``, ``List[T]``; ``Any`` is checked
    at run time."""

    name: str
    item: Type | None = None

    def __str__(self) -> str:
        return f"List[{self.item}]" if self.name == "List" else self.name

    def accepts(self, other: Type) -> bool:
        if self.name == "Any" or other.name == "Any":
            return True
        if self.name == "List" and other.name == "List":
            assert self.item is not None and other.item is not None
            return self.item.accepts(other.item)
        return self.name == other.name


IMAGE = Type("Image")
OBJECTS = Type("Objects")
NUMBER = Type("Number")
BOOL = Type("Bool")
TEXT = Type("Text")
ANY = Type("Any")
NONE = Type("None")


def List(item: Type) -> Type:  # noqa: N802 - reads like the type it builds
    return Type("List", item)


def join_types(types: Iterable[Type]) -> Type:
    """The type every one of ``types`` has, else Any (and Any for none at all)."""
    it = iter(types)
    first = next(it, ANY)
    return first if all(t == first for t in it) else ANY


def type_of(value: Any) -> Type:
    """The language's type of a value: scalars and lists by their Python type (an empty list is
    List[Any]), any other object by its class's ``nsx_type`` (a Type), else Any."""
    if isinstance(value, bool):
        return BOOL
    if isinstance(value, (int, float)):
        return NUMBER
    if isinstance(value, str):
        return TEXT
    if value is None:
        return NONE
    # Looked up on the class, as declared there (``nsx_type: ClassVar[Type] = IMAGE``), and before
    # the list case, so a class that declares its type is taken at its word.
    declared = getattr(type(value), "nsx_type", None)
    if isinstance(declared, Type):
        return declared
    if isinstance(value, list):
        return List(join_types([type_of(v) for v in value]) if value else ANY)
    return ANY


def type_label(value: Any) -> str:
    """A value's type for a message: the language's name for it (``List``, not ``List[Number]``),
    or the Python class of a value the language has no type for."""
    typ = type_of(value)
    return typ.name if typ != ANY else type(value).__name__


def parse_type(text: str) -> Type:
    """``'List[Text]'`` → ``List(TEXT)``; used by signatures declared as strings."""
    text = text.strip()
    if text.startswith("List[") and text.endswith("]"):
        return List(parse_type(text[5:-1]))
    if text not in {"Image", "Objects", "Number", "Bool", "Text", "Any", "None"}:
        raise ValueError(f"unknown type {text!r}")
    return Type(text)


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Any = _Required()


@dataclass(frozen=True)
class Param:
    name: str
    type: Type
    default: Any = REQUIRED
    choices: tuple[Any, ...] | None = None
    doc: str = ""

    @property
    def required(self) -> bool:
        return self.default is REQUIRED

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "type": str(self.type), "required": self.required}
        if not self.required:
            out["default"] = self.default
        if self.choices is not None:
            out["choices"] = list(self.choices)
        if self.doc:
            out["doc"] = self.doc
        return out


@dataclass(frozen=True)
class Signature:
    """What a module takes and returns; ``pack`` names the pack that provides its model."""

    name: str
    params: tuple[Param, ...]
    returns: Type
    version: str = "1"
    doc: str = ""
    pack: str = "core"

    def param(self, name: str) -> Param | None:
        for p in self.params:
            if p.name == name:
                return p
        return None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "params": [p.to_dict() for p in self.params],
            "returns": str(self.returns),
            "version": self.version,
            "doc": self.doc,
            "pack": self.pack,
        }


def signature(name: str, returns: str, *params: Param, version: str = "1", doc: str = "",
              pack: str = "core") -> Signature:
    return Signature(name, tuple(params), parse_type(returns), version, doc, pack)


def param(name: str, type: str, default: Any = REQUIRED,  # noqa: A002 - callers know it as Param.type
          choices: Iterable[Any] | None = None, doc: str = "") -> Param:
    return Param(name, parse_type(type), default, tuple(choices) if choices is not None else None, doc)


@dataclass(frozen=True)
class Routed:
    """Where a routed call goes: the signature of the module that runs it, and why that one."""

    signature: Signature
    reason: str


class RouteError(Exception):
    """No module offering the name takes these arguments; ``param`` is the argument at fault.
    The program still compiles, as it would on a deployment with a pack that takes them: the
    compiler warns, and the step fails with this message when it runs."""

    def __init__(self, message: str, hint: str | None = None, param: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint
        self.param = param


class Route(Protocol):
    """Chooses, for a name several packs offer, which one runs a call, from the call's constant
    arguments (by parameter name; an argument computed at run time is absent). Raises RouteError."""

    def __call__(self, consts: Mapping[str, Any]) -> Routed: ...


@dataclass(frozen=True, eq=False)
class Catalog(Mapping[str, Signature]):
    """An immutable set of signatures by name; hashed by identity so compiled plans can be memoized per catalog.
    A name in ``routes`` is offered by several modules: its signature here is what a call is checked
    against, and the route picks the module for each call when the program is compiled."""

    signatures: Mapping[str, Signature] = field(default_factory=dict)
    routes: Mapping[str, Route] = field(default_factory=dict)

    @classmethod
    def of(cls, signatures: Iterable[Signature]) -> Catalog:
        return cls({s.name: s for s in signatures})

    def __getitem__(self, name: str) -> Signature:
        return self.signatures[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.signatures)

    def __len__(self) -> int:
        return len(self.signatures)

    def __hash__(self) -> int:
        return id(self)

    def digest(self) -> str:
        blob = json.dumps([s.to_dict() for s in self.signatures.values()], sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()
