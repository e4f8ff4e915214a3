"""Finding packs (entry-point group ``nsx.packs``) and the catalog they make together."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import replace
from importlib.metadata import EntryPoint, entry_points

from program_dsl import Catalog, Signature

from .base import Module, Pack
from .catalog import DECLARED
from .routing import Offer, Router, Vocabulary

GROUP = "nsx.packs"
log = logging.getLogger("nsx.packs")


class PackError(Exception):
    """A pack cannot be found, fails to load, or clashes with another."""


def installed_packs() -> dict[str, EntryPoint]:
    """Entry points of every installed pack, by name, without importing them."""
    return {ep.name: ep for ep in entry_points(group=GROUP)}


def load_packs(enabled: Iterable[str] | None = None) -> list[Pack]:
    """Import the enabled packs. ``None`` means every installed pack that imports here: one that
    cannot (a missing optional dependency) is skipped with a warning instead of stopping the service;
    a pack named explicitly must load."""
    found = installed_packs()
    explicit = enabled is not None
    names = [n.strip() for n in enabled if n.strip()] if enabled is not None else sorted(found)
    packs: list[Pack] = []
    for name in names:
        ep = found.get(name)
        if ep is None:
            raise PackError(f"pack {name!r} is not installed; installed packs: {', '.join(sorted(found)) or 'none'}")
        try:
            pack = ep.load()()
        except Exception as e:
            if explicit:
                raise PackError(f"pack {name!r} failed to load: {type(e).__name__}: {e}") from e
            log.warning("skipping pack %s: %s: %s", name, type(e).__name__, e)
            continue
        if not isinstance(pack, Pack):
            raise PackError(f"entry point {name!r} did not return a Pack")
        if pack.name != name:
            pack = replace(pack, name=name)
        if pack.opt_in and not explicit:
            log.info("pack %s is installed but not enabled: it runs only when NSX_PACKS names it", name)
            continue
        packs.append(pack)
    return packs


def resolve_modules(packs: Iterable[Pack], choose: Mapping[str, str] | None = None
                    ) -> tuple[dict[str, Module], dict[str, str]]:
    """Every module under its qualified name (``pack.NAME``), and which pack each plain name means.
    A plain name whose every offer declares a vocabulary is routed by phrase (``modules.routing``)
    and has no default; otherwise a name offered by two packs means the pack its declaration names
    (``catalog.DECLARED``: SEG and SELECT the photo pack's, CLASSIFY and VQA the hf pack's), else it
    is an error unless ``choose`` (NSX_MODULE_PACKS) settles it. The qualified names stay usable."""
    choose = dict(choose or {})
    qualified: dict[str, Module] = {}
    offered: dict[str, list[str]] = {}
    for pack in packs:
        for module in pack.modules:
            qualified[f"{pack.name}.{module.name}"] = module
            offered.setdefault(module.name, []).append(pack.name)
    default: dict[str, str] = {}
    for name, owners in offered.items():
        if name in choose:
            if choose[name] not in owners:
                raise PackError(f"NSX_MODULE_PACKS picks pack {choose[name]!r} for {name}, "
                                f"but only {', '.join(owners)} offer it")
            default[name] = f"{choose[name]}.{name}"
        elif all(qualified[f"{o}.{name}"].vocabulary is not None for o in owners):
            continue  # routed by phrase, even when one pack offers it: a phrase it does not know fails alike
        elif len(owners) > 1:
            declared = _DECLARED.get(name)
            if declared is not None and declared.pack in owners:
                # VisProg's names: the pack the declaration names runs them; the others are qualified.
                default[name] = f"{declared.pack}.{name}"
                continue
            raise PackError(f"module {name} is offered by packs {', '.join(repr(o) for o in owners)}: "
                            f"choose one with NSX_MODULE_PACKS={name}={owners[0]}, or call it qualified "
                            f"({owners[0]}.{name})")
        else:
            default[name] = f"{owners[0]}.{name}"
    return qualified, default


def routed_names(qualified: Mapping[str, Module], default: Mapping[str, str]) -> dict[str, list[str]]:
    """Plain names with no default, and the qualified names of the modules that offer each."""
    out: dict[str, list[str]] = {}
    for q, module in qualified.items():
        if module.name not in default:
            out.setdefault(module.name, []).append(q)
    return out


def build_catalog(packs: Iterable[Pack], choose: Mapping[str, str] | None = None) -> Catalog:
    """Signatures of every enabled module (plain and qualified names), plus VisProg's declared ones so
    their programs type-check even where no pack here runs them (running such a step fails, naming
    the pack to install)."""
    packs = list(packs)
    for pack in packs:
        check_declared(pack)
    qualified, default = resolve_modules(packs, choose)
    pack_of = {q: q.split(".", 1)[0] for q in qualified}
    sigs: dict[str, Signature] = {s.name: s for s in DECLARED}
    # The module's own version (code and weights) goes into the plan, so the compiler and the
    # executor hash the same identity for a step.
    own: dict[str, Signature] = {q: replace(m.signature, pack=pack_of[q], version=m.version)
                                 for q, m in qualified.items()}
    sigs.update(own)
    for name, q in default.items():
        sigs[name] = own[q]
    routes: dict[str, Router] = {}
    for name, offers in routed_names(qualified, default).items():
        routes[name] = Router(name, [Offer(pack_of[q], own[q], _vocabulary(qualified[q])) for q in offers])
        # A call is checked against the declared signature (every offer takes what it takes), or,
        # for a name nothing declares, against the first offer's.
        shared = _DECLARED.get(name, own[offers[0]])
        # Optional parameters some offers add (hf LOC's threshold) are accepted here; the compiler
        # refuses one the module the phrase goes to does not take.
        extra = [p for q in offers for p in own[q].params[len(shared.params):] if not p.required]
        params = list(shared.params)
        for p in extra:
            if all(p.name != have.name for have in params):
                params.append(p)
        sigs[name] = replace(shared, params=tuple(params), pack="|".join(pack_of[q] for q in offers),
                             version="routed")
    return Catalog(sigs, routes)


def _vocabulary(module: Module) -> Vocabulary:
    assert module.vocabulary is not None  # resolve_modules routes only modules that have one
    return module.vocabulary


_DECLARED = {s.name: s for s in DECLARED}


def _shape(sig: Signature) -> tuple[str, list[tuple[str, str, bool]]]:
    return str(sig.returns), [(p.name, str(p.type), p.required) for p in sig.params]


def check_declared(pack: Pack) -> None:
    """A pack implementing a declared VisProg name must take what the declaration takes: the same
    parameters in the same order, of the same types, required where it is required, and return the
    same type; it may add optional parameters after them. Otherwise a program that type-checks on
    one deployment would fail on another."""
    for module in pack.modules:
        declared = _DECLARED.get(module.name)
        if declared is None:
            continue
        (want_returns, want), (returns, got) = _shape(declared), _shape(module.signature)
        if returns == want_returns and got[:len(want)] == want and not any(req for _, _, req in got[len(want):]):
            continue
        raise PackError(f"pack {pack.name!r} declares {_show(module.signature)}, which contradicts "
                        f"the declared {_show(declared)}")


def _show(sig: Signature) -> str:
    params = ", ".join(f"{n}: {t}" + ("" if required else " = …") for n, t, required in _shape(sig)[1])
    return f"{sig.name}({params}) -> {sig.returns}"
