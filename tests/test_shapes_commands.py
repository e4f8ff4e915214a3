"""The shapes pack as a plug-in: its commands reach ``nsx`` through the ``nsx.commands`` entry
point without importing torch, and what the service loads never imports the pack's tooling."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import entry_points

from modules.packs import check_declared
from modules.shapes import pack
from modules.shapes.tools.cli import add_commands


def _python(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    return done.stdout.strip()


def test_the_entry_point_names_the_commands() -> None:
    [ep] = [e for e in entry_points(group="nsx.commands") if e.name == "shapes"]
    assert ep.value == "modules.shapes.tools.cli:add_commands" and ep.load() is add_commands


def test_nsx_has_the_commands_and_building_them_loads_no_torch() -> None:
    out = _python(
        "import sys\n"
        "from app.cli import build_parser\n"
        "p = build_parser()\n"
        "for argv in (['shapes', 'generate', '--out', 'x'], ['shapes', 'train'], ['import-clevr', 'f.json'],\n"
        "             ['bench', 'shapes', '--questions', '16', '--hard-questions', '0', '--seed', '3']):\n"
        "    assert callable(p.parse_args(argv).fn), argv\n"
        "print('torch' in sys.modules)\n")
    assert out == "False"


def test_the_service_side_never_imports_the_tooling() -> None:
    out = _python(
        "import sys\n"
        "from modules.shapes import pack\n"
        "p = pack()\n"
        "print(sorted(m for m in sys.modules if m.startswith('modules.shapes.tools')))\n")
    assert out == "[]"


def test_loc_agrees_with_the_declared_signature() -> None:
    check_declared(pack())  # raises PackError on a contradiction
    loc = next(m for m in pack().modules if m.name == "LOC").signature
    assert [(p.name, str(p.type), p.required) for p in loc.params] == [("image", "Image", True),
                                                                        ("object", "Text", False)]
    assert loc.param("object").default == "object"
