"""The Module interface: a signature for the compiler, a version for the cache, a batched forward."""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from program_dsl import Signature

from .routing import Vocabulary

if TYPE_CHECKING:  # the gallery imports ModuleError from here
    from .gallery import Gallery


# The argument a ``per_tenant`` module's calls carry the tenant in (never part of a cache key or a
# record: ``state`` stands for what the tenant changes).
TENANT_ARG = "__tenant__"


class ModuleError(Exception):
    """A module could not compute a value for this input; the message is shown in the step record."""


class Module(ABC):
    """A named computation. Symbolic modules are ``cheap`` and run on the event loop; neural ones
    run on a worker thread per device and may batch calls from many requests into one forward."""

    signature: Signature
    batchable: bool = False
    max_batch_size: int = 1
    cheap: bool = False
    # Whether its time is bounded by its arguments' size (the project's own symbolic modules): only
    # then does a cheap call run on the event loop, where nothing could cut it off; any other cheap
    # module runs on the symbolic worker, where the step timeout ends the step if it hangs.
    bounded: bool = False
    device: str = "cpu"
    # What it finds by a phrase, when several packs offer its name: ``modules.routing``.
    vocabulary: Vocabulary | None = None
    # Whether its answers depend on who asks (a tenant's own gallery): then ``state`` is asked per
    # tenant, and each call's arguments carry the tenant under TENANT_ARG.
    per_tenant: bool = False

    @property
    def name(self) -> str:
        """The name programs call it by (its pack may also be named: ``shapes.LOC``)."""
        return self.signature.name

    @property
    def version(self) -> str:
        """Code version plus the weights' hash where there are weights: part of every cache key.
        Known before ``load`` (the pool puts it in the catalog it compiles plans with), and fixed for
        the process: a module whose weights can change must hash them here, not when it loads."""
        return self.signature.version

    def state(self, tenant: str = "") -> str:
        """What the answers depend on besides the arguments and ``version`` where that can change
        while the process runs (a gallery of known faces: a digest of its entries, as ``tenant``
        has it); part of every cache key, so a changed gallery never serves an answer computed
        before. Empty for most."""
        return ""

    def load(self, device: str) -> None:
        """Put weights on ``device``. Called once by the pool; symbolic modules have nothing to load."""
        self.device = device

    def parameter_count(self) -> int:
        """Number of trained parameters (0 for symbolic modules)."""
        return 0

    def warmup(self) -> None:
        """Run once on a dummy input so the first request does not pay for lazy initialisation."""
        return None  # most modules have nothing to warm

    def memory_bytes(self) -> int:
        """Bytes its weights take on its device now (0 when not loaded, or symbolic)."""
        return 0

    def expected_bytes(self) -> int:
        """What ``memory_bytes`` will be once loaded on ``self.device``, known before loading (from the
        weight files' sizes), so the pool can make room under a device's memory budget first and
        spread models across devices by size. 0: unknown, or nothing to load."""
        return 0

    def memory_group(self) -> str:
        """Modules returning the same non-empty string share one copy of their weights per device
        (one model behind several names): the pool counts that copy once and unloads them together."""
        return ""

    def unload(self) -> None:
        """Give back what ``load`` took, so another module fits on the device; the pool calls ``load``
        again before the next call. A module that reports ``memory_bytes`` must free it here."""
        return None  # symbolic modules hold nothing

    def inline(self, args: Mapping[str, Any]) -> bool:
        """Whether this call is quick enough to run on the event loop, skipping the device's queue
        (a symbolic module that needs a model only for some arguments says so per call)."""
        return self.cheap

    def general_call(self, consts: Mapping[str, Any]) -> dict[str, Any] | None:
        """Constant arguments of a broader call whose output this call's is computed from by
        ``refine`` (LOC of every object, then the phrase's filter), or None. The executor computes
        (or finds in the cache) the broader call once for every phrase on the same inputs, and runs
        ``refine`` on the event loop: offer a general call only where refining is quick."""
        return None

    def refine(self, general: Any, args: Mapping[str, Any]) -> Any:
        """This call's output from the broader call's (``general_call``); raises ModuleError."""
        raise NotImplementedError(f"{self.name} offers no general call")

    @abstractmethod
    def forward(self, batch: Sequence[dict[str, Any]]) -> list[Any]:
        """One result (or an Exception instance, failing just that item) per argument dict."""


class FunctionModule(Module):
    """A symbolic module from a plain function of its arguments."""

    cheap = True

    def __init__(self, sig: Signature, fn: Callable[..., Any]) -> None:
        self.signature = sig
        self.fn = fn

    def forward(self, batch: Sequence[dict[str, Any]]) -> list[Any]:
        out: list[Any] = []
        for args in batch:
            try:
                out.append(self.fn(**args))
            except ModuleError as e:
                out.append(e)
        return out


def files_digest(paths: Sequence[Path], *extra: str) -> str:
    """sha256 over the files' bytes (a few MB: milliseconds) and ``extra`` (package versions, so a
    new runtime with the same weights still gets new cache keys). A missing file hashes as its name
    alone, so ``version`` never fails; ``load`` is where a missing file is reported."""
    h = hashlib.sha256()
    for s in extra:
        h.update(s.encode() + b"\0")
    for p in paths:
        h.update(p.name.encode() + b"\0")
        try:
            h.update(p.read_bytes())
        except OSError:
            h.update(b"missing")
    return h.hexdigest()[:12]


F = TypeVar("F", bound=Callable[..., Any])


class FunctionSet:
    """Plain functions declared as a pack's modules, each with its signature written above it:

        functions = FunctionSet()

        @functions(signature("COUNT", "Number", param("box", "Objects")))
        def count(box: Objects) -> int: ...

    ``modules()`` makes fresh module objects for a pack; ``kind`` says how they run (a
    ``FunctionModule`` subclass that is not ``cheap`` runs on the pool's worker thread)."""

    def __init__(self, kind: type[FunctionModule] = FunctionModule) -> None:
        self.kind = kind
        self._entries: list[tuple[Signature, Callable[..., Any], type[FunctionModule]]] = []

    def __call__(self, sig: Signature, kind: type[FunctionModule] | None = None) -> Callable[[F], F]:
        """``kind``: this one function's module class, where it differs from the set's."""
        def register(fn: F) -> F:
            self._entries.append((sig, fn, kind or self.kind))
            return fn

        return register

    @property
    def signatures(self) -> tuple[Signature, ...]:
        return tuple(sig for sig, _, _ in self._entries)

    def modules(self) -> list[Module]:
        return [kind(sig, fn) for sig, fn, kind in self._entries]


@dataclass
class Pack:
    """A named set of modules, found through the ``nsx.packs`` entry-point group."""

    name: str
    modules: list[Module] = field(default_factory=list)
    doc: str = ""
    # Named reference sets its modules read (known faces); the service loads and edits them.
    galleries: list[Gallery] = field(default_factory=list)
    # Enabled only when NSX_PACKS names it, never as one of "every installed pack" (the fault pack).
    opt_in: bool = False

    @property
    def signatures(self) -> list[Signature]:
        return [m.signature for m in self.modules]
