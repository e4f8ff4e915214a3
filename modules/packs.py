"""Finding packs (entry-point group ``nsx.packs``) and the catalog they make together."""

from __future__ import annotations

from collections.abc import Iterable
from importlib.metadata import entry_points

from program_dsl import Catalog, Signature

from .base import Module, Pack
from .catalog import VISPROG

GROUP = "nsx.packs"


class PackError(Exception):
    """A pack cannot be found, fails to load, or clashes with another."""


def installed_packs() -> dict[str, object]:
    """Entry points of every installed pack, by name, without importing them."""
    return {ep.name: ep for ep in entry_points(group=GROUP)}


def load_packs(enabled: Iterable[str] | None = None) -> list[Pack]:
    """Import the enabled packs (all installed ones when ``enabled`` is None)."""
    found = installed_packs()
    names = list(found) if enabled is None else [n.strip() for n in enabled if n.strip()]
    packs: list[Pack] = []
    for name in names:
        ep = found.get(name)
        if ep is None:
            raise PackError(f"pack {name!r} is not installed; installed packs: {', '.join(sorted(found)) or 'none'}")
        factory = ep.load()  # type: ignore[attr-defined]
        pack = factory()
        if not isinstance(pack, Pack):
            raise PackError(f"entry point {name!r} did not return a Pack")
        packs.append(pack)
    return packs


def modules_by_name(packs: Iterable[Pack]) -> dict[str, Module]:
    """One module per name; a name offered twice is an error naming both packs."""
    out: dict[str, Module] = {}
    owner: dict[str, str] = {}
    for pack in packs:
        for module in pack.modules:
            if module.name in out:
                raise PackError(f"module {module.name} is offered by packs {owner[module.name]!r} and {pack.name!r}; "
                                "enable only one of them (NSX_PACKS)")
            out[module.name] = module
            owner[module.name] = pack.name
    return out


def build_catalog(packs: Iterable[Pack]) -> Catalog:
    """Signatures of every enabled module, plus VisProg's declared ones so their programs type-check
    even where no pack here runs them (running such a step fails, naming the pack to install)."""
    sigs: dict[str, Signature] = {s.name: s for s in VISPROG}
    for pack in packs:
        for s in pack.signatures:
            sigs[s.name] = s
    return Catalog(sigs)
