"""Start-up: the pool loads packs at the same time and leaves the text model to load on first need
(or in the background once ready); a compile that needs the embedding still routes; a text model
that cannot load fails only what needs it; ``nsx run`` loads only the modules its plan uses."""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.settings import Settings
from modules import pool as pool_mod
from modules import words
from modules.base import Module, ModuleError, Pack
from modules.core import pack as core_pack
from modules.packs import build_catalog, load_packs
from modules.photo import identity
from modules.pool import Pool, PoolConfig
from modules.routing import may_load
from modules.shapes.concepts import Concepts
from program_dsl import compile_program, param, signature

ROOT = Path(__file__).resolve().parent.parent
STATES = {"not loaded", "loading", "ready", "failed"}


def _in_fresh_process(code: str, timeout: float = 300) -> dict[str, Any]:
    """Run ``code`` in a new interpreter (the text model is one per process) and return the JSON
    object it prints on its last line."""
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, capture_output=True, text=True,
                         timeout=timeout, env={k: v for k, v in os.environ.items() if not k.startswith("NSX_")})
    assert out.returncode == 0, out.stderr[-4000:]
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


# ------------------------------------------------------------------ the pool leaves the text model


def test_start_leaves_the_text_model_unloaded_and_a_compile_loads_it() -> None:
    got = _in_fresh_process("""
        import asyncio, json, sys
        from modules import words
        from modules.packs import load_packs
        from modules.pool import Pool, PoolConfig
        from modules.routing import may_load
        from program_dsl import compile_program

        pool = Pool(load_packs(), PoolConfig(device="cpu"))
        asyncio.run(pool.start())
        after_start = {"ready": pool.ready, "text": words.text_model_state(),
                       "transformers": "transformers" in sys.modules,
                       "may_load": may_load(pool.catalog.routes.values()),
                       "failed": [q for q, s in pool.states.items() if s.state == "failed"]}
        exact = compile_program("x = LOC(IMAGE, 'red circle')", pool.catalog)
        after_exact = words.text_model_state()
        near = compile_program("x = LOC(IMAGE, 'enormous ball')", pool.catalog)
        print(json.dumps({**after_start, "after_exact": after_exact, "exact_pack": exact.steps[0].pack,
                          "near_pack": near.steps[0].pack, "near_route": near.steps[0].route,
                          "after_near": words.text_model_state()}))
    """)
    assert got["ready"] and got["failed"] == []
    assert got["text"] == "not loaded" and not got["transformers"]
    assert got["may_load"]  # until the model is loaded, a compile belongs off the event loop
    assert got["exact_pack"] == "shapes" and got["after_exact"] == "not loaded"  # exact words need no model
    assert got["near_pack"] == "shapes" and "similarity" in got["near_route"]
    assert got["after_near"] == "ready"


def test_warm_all_embeds_every_vocabulary() -> None:
    catalog = build_catalog(load_packs(["core", "shapes"]))
    words.warm_all()
    assert words.text_model_state() == "ready" and words.all_warm()
    assert not may_load(catalog.routes.values())
    plan = compile_program("x = LOC(IMAGE, 'enormous ball')", catalog)
    assert plan.steps[0].pack == "shapes"


# ------------------------------------------------------------------ packs load at the same time


class Slow(Module):
    """Loads by waiting at a barrier that the other pack's module must reach too."""

    def __init__(self, name: str, barrier: threading.Barrier, order: list[str]) -> None:
        self.signature = signature(name, "Number", param("n", "Number"), pack="t")
        self.barrier = barrier
        self.order = order

    def load(self, device: str) -> None:
        self.order.append(self.name)
        if self.name.endswith("A"):
            self.barrier.wait(timeout=10)  # passes only if the other pack loads meanwhile
        self.device = device

    def forward(self, batch: Sequence[dict[str, Any]]) -> list[Any]:
        return [a["n"] for a in batch]


async def test_packs_load_at_the_same_time_each_in_its_order(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pool_mod, "LOAD_THREADS", 2)  # one on a two-core machine
    barrier = threading.Barrier(2)
    order: list[str] = []
    one = Pack("one", [Slow("ONE_A", barrier, order), Slow("ONE_B", barrier, order)])
    two = Pack("two", [Slow("TWO_A", barrier, order)])
    pool = Pool([one, two], PoolConfig(device="cpu"))
    await pool.start()
    try:
        assert {q: s.state for q, s in pool.states.items()} == dict.fromkeys(
            ["one.ONE_A", "one.ONE_B", "two.TWO_A"], "ready")
        assert order.index("ONE_A") < order.index("ONE_B")
    finally:
        await pool.close()


async def test_start_only_loads_the_named_modules() -> None:
    barrier = threading.Barrier(1)
    order: list[str] = []
    pool = Pool([Pack("one", [Slow("ONE_A", barrier, order), Slow("ONE_B", barrier, order)])],
                PoolConfig(device="cpu", lazy=True))
    await pool.start(["one.ONE_B", "nope.X"])
    try:
        assert pool.states["one.ONE_B"].state == "ready" and pool.states["one.ONE_A"].state == "pending"
        assert pool.ready  # lazy: the rest load on first need
        assert (await pool.call("ONE_A", {"n": 3})).value == 3
        assert pool.states["one.ONE_A"].state == "ready"
    finally:
        await pool.close()


# ------------------------------------------------------------------ readiness and the background load


def test_readyz_reports_the_text_model_and_it_loads_after_ready() -> None:
    packs = [core_pack(), *load_packs(["shapes"])]
    with TestClient(create_app(Settings(), packs=packs)) as client:
        deadline = time.monotonic() + 120
        while client.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert client.get("/readyz").json()["text_model"] in STATES
        svc = client.app.state.svc  # type: ignore[attr-defined]
        while not svc.warming.done():
            assert time.monotonic() < deadline
            time.sleep(0.05)
        body = client.get("/readyz").json()
        assert body["status"] == "ready" and body["text_model"] == "ready"
        assert not may_load(svc.pool.catalog.routes.values())


@pytest.mark.parametrize("freeze", [True, False])
def test_a_served_process_freezes_what_loading_left_alive(freeze: bool) -> None:
    gc.unfreeze()
    try:
        with TestClient(create_app(Settings(gc_freeze=freeze), packs=[core_pack()])) as client:
            svc = client.app.state.svc  # type: ignore[attr-defined]
            deadline = time.monotonic() + 120
            while not (svc.ready and svc.warming.done()):
                assert time.monotonic() < deadline
                time.sleep(0.05)
            assert (gc.get_freeze_count() > 0) is freeze
            assert client.get("/readyz").status_code == 200
    finally:
        gc.unfreeze()


# ------------------------------------------------------------------ a text model that cannot load


class Broken(words.Embedder):
    reads = 0

    def _read(self) -> tuple[Any, Any]:  # type: ignore[override]
        type(self).reads += 1
        raise FileNotFoundError("model.safetensors is missing")


@pytest.fixture
def broken(monkeypatch: pytest.MonkeyPatch) -> Iterator[Broken]:
    """The process's text model replaced by one whose files are missing (for anchors made now)."""
    model = Broken()
    Broken.reads = 0
    monkeypatch.setattr(words, "_SHARED", model)
    yield model


def test_a_missing_text_model_fails_only_what_needs_it(broken: Broken) -> None:
    mapper = Concepts()
    assert mapper.phrase("large red circle").wants() == {"size": {"large"}, "color": {"red"}, "shape": {"circle"}}
    with pytest.raises(ModuleError, match="needs the text model.*model.safetensors is missing"):
        mapper.word("enormous")
    with pytest.raises(ModuleError, match="needs the text model"):
        mapper.word("gigantic")
    assert Broken.reads == 1  # not read again for every word...
    assert words.text_model_state() == "failed"
    broken.RETRY_S = 0.0  # ...but again once a while has passed, in case the fault has
    with pytest.raises(words.TextModelUnavailable):
        words.warm_all()
    assert Broken.reads == 2


def test_a_missing_text_model_fails_only_the_step_that_routes_by_it(broken: Broken) -> None:
    catalog = build_catalog(load_packs(["core", "shapes"]))
    assert compile_program("x = LOC(IMAGE, 'red circle')", catalog).steps[0].pack == "shapes"
    plan = compile_program("x = LOC(IMAGE, 'enormous ball')\ny = LOC(IMAGE, 'red circle')", catalog)
    # As any phrase no pack takes: a warning now, and that step alone fails when run, saying why.
    near, exact = plan.steps
    assert near.pack == "" and "needs the text model" in near.route and "model.safetensors is missing" in near.route
    assert exact.pack == "shapes"
    assert any("needs the text model" in w.message for w in plan.warnings)


def test_a_missing_text_model_fails_select_of_an_unknown_word(broken: Broken) -> None:
    mods, _ = identity.build()
    select = mods[1]
    assert isinstance(select, identity.Select)
    assert select.reader.read("person") is not None and select.reader.read("face") is not None
    with pytest.raises(ModuleError, match="needs the text model"):
        select.reader.read("lad")


async def test_the_pool_reports_a_missing_text_model_without_raising(broken: Broken) -> None:
    pool = Pool(load_packs(["core", "shapes"]), PoolConfig(device="cpu", lazy=True))
    await pool.warm_words()
    assert words.text_model_state() == "failed"
    await pool.close()


# ------------------------------------------------------------------ nsx run loads what its plan uses


_RUN = """
    import json, sys
    import app.service as service
    from modules import words
    pools = []
    make = service.make_pool
    def recording(*a, **k):
        pools.append(make(*a, **k))
        return pools[-1]
    service.make_pool = recording
    from app.cli import main
    rc = main(["run", {program!r}, "-i", "examples/scene.png", "--json"])
    loaded = sorted(q for q, s in pools[0].states.items() if s.state != "pending")
    print(json.dumps({{"rc": rc, "loaded": loaded, "torch": "torch" in sys.modules,
                      "mediapipe": "mediapipe" in sys.modules, "text": words.text_model_state()}}))
"""


def test_nsx_run_of_a_core_program_loads_no_pack_model() -> None:
    got = _in_fresh_process(_RUN.format(program="examples/regions.nsx"))
    assert got["rc"] == 0
    assert got["loaded"] and all(q.startswith("core.") for q in got["loaded"])
    assert not got["torch"] and not got["mediapipe"] and got["text"] == "not loaded"


def test_nsx_run_loads_only_the_pack_modules_its_plan_uses(tmp_path: Path) -> None:
    program = tmp_path / "count.nsx"
    program.write_text("x = LOC(IMAGE, 'red circle')\nn = COUNT(box=x)\n")
    got = _in_fresh_process(_RUN.format(program=str(program)))
    assert got["rc"] == 0
    assert got["loaded"] == ["core.COUNT", "shapes.LOC"]
    assert not got["mediapipe"] and got["text"] == "not loaded"  # exact words: no text model
