"""One declaration per VisProg name: a pack that implements one must agree with it, and VisProg's
programs type-check the same whichever packs a deployment enables."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from modules.base import FunctionModule, Module, Pack
from modules.catalog import DECLARED
from modules.core import pack as core_pack
from modules.packs import PackError, build_catalog, check_declared, load_packs
from program_dsl import ProgramError, compile_program, param, signature

VALID = Path(__file__).parent / "corpus" / "valid"
PROGRAMS = sorted(VALID.glob("*.nsx"))


def _outcome(text: str, catalog: Any) -> tuple[str, Any]:
    try:
        plan = compile_program(text, catalog)
    except ProgramError as e:
        return "error", [(d.line, d.column, d.message) for d in e.diagnostics]
    # What the program asks for, not where it runs: which pack a step goes to and its version
    # depend on the deployment by design.
    return "ok", (str(plan.result_type), [(s.module, str(s.type), sorted(s.args)) for s in plan.steps])


@pytest.mark.parametrize("text", [
    "n = COUNT(LOC(IMAGE))",
    "BOX0=LOC(image=IMAGE,object='muffin')\nANSWER0=COUNT(box=BOX0)\n",
    "n = COUNT(LOC(image=IMAGE, object='dog', extra=1))",
    "x = LOC(IMAGE, 3)",
], ids=["loc-default-object", "visprog-loc", "unknown-argument", "wrong-type"])
def test_loc_type_checks_the_same_with_and_without_shapes(text: str) -> None:
    without = build_catalog([core_pack()])
    with_shapes = build_catalog(load_packs(["core", "shapes"]))
    assert _outcome(text, without) == _outcome(text, with_shapes)


def test_count_of_loc_compiles_on_a_core_only_deployment() -> None:
    plan = compile_program("n = COUNT(LOC(IMAGE))", build_catalog([core_pack()]))
    loc = plan.steps[0]
    assert loc.module == "LOC" and loc.args["object"].value == "object"  # type: ignore[union-attr]


@pytest.mark.parametrize("path", PROGRAMS, ids=[p.stem for p in PROGRAMS])
def test_corpus_programs_type_check_the_same_with_and_without_shapes(path: Path) -> None:
    text = path.read_bytes().decode("utf-8")
    without = _outcome(text, build_catalog([core_pack()]))
    assert without[0] == "ok", without
    assert without == _outcome(text, build_catalog(load_packs(["core", "shapes"])))


class _Loc(Module):
    def __init__(self, *params: Any) -> None:
        self.signature = signature("LOC", "Objects", *params, pack="mine")

    def forward(self, batch: Sequence[dict[str, Any]]) -> list[Any]:
        return []


@pytest.mark.parametrize(("params", "why"), [
    ((param("image", "Image"), param("object", "Text")), "object required"),
    ((param("image", "Image"), param("object", "Number", 1)), "object a Number"),
    ((param("img", "Image"), param("object", "Text", "object")), "image renamed"),
    ((param("image", "Image"),), "object missing"),
    ((param("image", "Image"), param("object", "Text", "object"), param("k", "Number")), "a required extra"),
])
def test_a_pack_contradicting_a_declared_signature_is_refused(params: tuple[Any, ...], why: str) -> None:
    mine = Pack("mine", [_Loc(*params)])
    with pytest.raises(PackError, match=r"pack 'mine' declares LOC\(.*contradicts the declared LOC\(image: Image, "
                                        r"object: Text = …\) -> Objects"):
        build_catalog([core_pack(), mine])


def test_agreeing_implementations_and_other_names_pass() -> None:
    check_declared(Pack("mine", [_Loc(param("image", "Image"), param("object", "Text", "thing", doc="its own doc"))]))
    check_declared(Pack("other", [FunctionModule(signature("COUNT", "Text"), lambda: "x")]))  # not declared here
    for pack in load_packs():
        check_declared(pack)


def test_core_implements_a_declared_name_only_to_share_it_by_phrase() -> None:
    # Core's LOC answers 'TOP' etc.; any other phrase must reach another pack's LOC, so the core
    # module has a vocabulary and routing (not a default) decides.
    shared = {m.name: m for m in core_pack().modules if m.name in {s.name for s in DECLARED}}
    assert set(shared) == {"LOC"} and shared["LOC"].vocabulary is not None


def test_an_implementation_may_add_optional_parameters() -> None:
    check_declared(Pack("mine", [_Loc(param("image", "Image"), param("object", "Text", "object"),
                                      param("threshold", "Number", 0.5))]))


def test_a_broken_pack_command_leaves_the_cli_working(monkeypatch: pytest.MonkeyPatch,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    import modules.commands as commands
    from app.cli import build_parser

    class Broken:
        name = "broken"

        def load(self) -> Any:
            raise AttributeError("module 'broken' has no attribute 'add_commands'")

    real = commands.entry_points
    monkeypatch.setattr(commands, "entry_points", lambda group: [*real(group=group), Broken()])
    parser = build_parser()
    assert parser.parse_args(["check", "x.nsx"]).fn.__name__ == "cmd_check"
    assert parser.parse_args(["bench", "shapes", "--questions", "1"]).bench == "shapes"  # the others still came
    assert "the broken pack's commands are unavailable: AttributeError" in caplog.text


def test_a_declared_name_two_packs_offer_means_the_declared_pack() -> None:
    # SEG is declared as the photo pack's: with another pack offering it too, the plain name keeps
    # meaning photo's and the other's is called by its qualified name (or chosen by NSX_MODULE_PACKS).
    def seg(pack_name: str) -> FunctionModule:
        return FunctionModule(signature("SEG", "Objects", param("image", "Image"), pack=pack_name), lambda image: None)

    packs = [core_pack(), Pack("photo", [seg("photo")]), Pack("wide", [seg("wide")])]
    catalog = build_catalog(packs)
    assert catalog["SEG"].pack == "photo" and catalog["wide.SEG"].pack == "wide"
    assert build_catalog(packs, {"SEG": "wide"})["SEG"].pack == "wide"
