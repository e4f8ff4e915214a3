"""No work done twice: every LOC phrase on an image is a filter over its one detection, and a filter
by known words runs on the event loop instead of queueing behind a device's batches."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from typing import Any

import pytest

from app.serialize import encode
from app.service import open_runner
from modules.base import FunctionModule, Pack
from modules.packs import load_packs
from modules.shapes import Loc
from modules.shapes import pack as shapes_pack
from modules.shapes.tools.world import ObjectSpec, compose
from modules.values import ImageValue
from program_dsl import param, signature
from tests.test_shapes_modules import needs_weights

SCENE = [
    ObjectSpec("circle", "red", "large", "solid", 60, 64),
    ObjectSpec("square", "blue", "small", "striped", 196, 52, rotation=8),
    ObjectSpec("circle", "red", "small", "striped", 200, 200),
    ObjectSpec("triangle", "yellow", "large", "striped", 128, 140),
]

PROGRAM = """\
reds = LOC(image=IMAGE, object='red circle')
squares = LOC(image=IMAGE, object='square')
n = COUNT(box=reds)
m = COUNT(box=squares)
answer = n + m
"""


class CountingLoc(Loc):
    def __init__(self) -> None:
        super().__init__()
        self.items: list[str] = []

    def forward(self, batch: Sequence[dict[str, Any]]) -> list[Any]:
        self.items += [str(a.get("object")) for a in batch]
        return super().forward(batch)


def packs_with(loc: Loc) -> list[Pack]:
    core = load_packs(["core"])
    shapes = shapes_pack()
    shapes.modules[:] = [loc if m.name == "LOC" else m for m in shapes.modules]
    return [*core, shapes]


def scene() -> ImageValue:
    return ImageValue(compose(SCENE, seed=3).pil(), "sha256:" + "ab" * 32)


@needs_weights
@pytest.mark.parametrize("cache", [True, False])
def test_every_phrase_on_an_image_filters_its_one_detection(cache: bool) -> None:
    loc = CountingLoc()

    async def main() -> None:
        async with open_runner(packs_with(loc), device="cpu") as runner:
            loc.items.clear()
            record = await runner.run(PROGRAM, {"IMAGE": scene()}, cache=cache)
            assert record.status == "succeeded", record.error
            assert record.result == {"type": "number", "value": 3}
            assert loc.items == ["object"]  # one detection for both phrases
            locs = [s for s in record.steps if s.module == "LOC"]
            assert all(s.via is not None for s in locs) and len({s.via for s in locs}) == 1
            assert sum(not s.shared for s in locs) == 1  # one of them computed it, the other shared it
            # The same as LOC computing each phrase on its own.
            image = scene()
            for s, phrase in zip(locs, ("red circle", "square")):
                direct = Loc().forward([{"image": image, "object": phrase}])[0]
                assert s.output is not None
                assert [i["label"] for i in s.output["items"]] == [o.label for o in direct]
                expected, _ = encode(direct)
                linked = [{k: v for k, v in i.items() if k != "mask_url"} for i in s.output["items"]]
                assert linked == expected["items"]
            again = await runner.run(PROGRAM, {"IMAGE": scene()}, cache=cache)
            assert again.result == record.result
            if cache:
                assert loc.items == ["object"] and {s.cache for s in again.steps} == {"hit"}
                # A new phrase on the same image: a filter over the cached detection, no network.
                other = await runner.run("x = COUNT(box=LOC(image=IMAGE, object='yellow triangle'))",
                                         {"IMAGE": scene()})
                assert other.result == {"type": "number", "value": 1} and loc.items == ["object"]
            else:
                assert loc.items == ["object", "object"]

    asyncio.run(main())


@needs_weights
def test_a_phrase_with_an_unseen_word_runs_loc_itself() -> None:
    loc = Loc()
    assert loc.general_call({"object": "red circle"}) == {"object": "object"}
    assert loc.general_call({"object": "object"}) is None
    assert loc.general_call({"object": "crimson circle"}) is None  # the text model decides, on LOC's thread


def test_filter_by_known_words_runs_on_the_event_loop() -> None:
    shapes = shapes_pack()
    filt = next(m for m in shapes.modules if m.name == "FILTER")
    assert not filt.cheap
    assert filt.inline({"value": "large red"}) and filt.inline({"value": "things"})
    assert not filt.inline({"value": "crimson"})  # may need the text model: off the loop


def test_the_pool_runs_inline_calls_on_the_loop_and_the_rest_on_the_symbolic_worker() -> None:
    class Where(FunctionModule):
        cheap = False
        bounded = True  # only a module whose time is bounded may run on the loop

        def inline(self, args: Any) -> bool:
            return bool(args["here"])

    names: list[str] = []

    def ident(here: bool) -> int:
        names.append(threading.current_thread().name)
        return threading.get_ident()

    where = Where(signature("WHERE", "Number", param("here", "Bool")), ident)
    pack = Pack("t", [where])

    async def main() -> None:
        async with open_runner([*load_packs(["core"]), pack], device="cpu") as runner:
            loop_thread = threading.get_ident()
            on = await runner.run("x = WHERE(here=True)", {}, cache=False)
            off = await runner.run("x = WHERE(here=False)", {}, cache=False)
            assert on.result == {"type": "number", "value": loop_thread}
            assert off.result is not None and off.result["value"] != loop_thread
            # Off the loop, a symbolic module runs apart from every device's worker.
            assert names[-1].startswith("nsx-symbolic")

    asyncio.run(main())
