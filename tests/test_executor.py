"""The executor on its own: concurrency, sharing of identical steps, timeouts, failures, keys."""

from __future__ import annotations

import asyncio
import io
import threading
import time
from collections.abc import Sequence
from typing import Any

import pytest
from PIL import Image

from app.executor import Executor, step_key
from app.store import MemoryStore
from modules.base import Module, Pack
from modules.core import pack as core_pack
from modules.pool import Pool
from modules.values import ImageValue
from program_dsl import IMAGE, compile_program, param, signature


class Slow(Module):
    """A module that takes real time off the event loop and counts its calls."""

    signature = signature("SLOW", "Number", param("image", "Image"), param("seconds", "Number", 0.2),
                          pack="test", version="3")

    def __init__(self) -> None:
        self.calls = 0
        self.lock = threading.Lock()

    def forward(self, batch: Sequence[dict[str, Any]]) -> list[Any]:
        with self.lock:
            self.calls += len(batch)
        time.sleep(batch[0]["seconds"])
        return [a["image"].width for a in batch]


class Crash(Module):
    signature = signature("CRASH", "Number", param("image", "Image"), pack="test")

    def forward(self, batch: Sequence[dict[str, Any]]) -> list[Any]:
        raise RuntimeError("boom")


def image(color: tuple[int, int, int] = (1, 2, 3)) -> ImageValue:
    buf = io.BytesIO()
    Image.new("RGB", (32, 16), color).save(buf, format="PNG")
    return ImageValue.from_bytes(buf.getvalue())


@pytest.fixture
async def setup() -> Any:
    slow = Slow()
    pool = Pool([core_pack(), Pack("test", [slow, Crash()])], "cpu")
    await pool.start()
    executor = Executor(pool, MemoryStore(), step_timeout_s=5)
    yield executor, slow
    await pool.close()


def plan(executor: Executor, text: str) -> Any:
    return compile_program(text, executor.pool.catalog, {"IMAGE": IMAGE})


async def test_identical_steps_in_flight_are_computed_once(setup: Any) -> None:
    executor, slow = setup
    p1 = plan(executor, "a = SLOW(image=IMAGE)\nb = a + 1\n")
    p2 = plan(executor, "width = SLOW(IMAGE, 0.2)\nc = width * 2\n")
    img = image()
    r1, r2 = await asyncio.gather(executor.execute(p1, {"IMAGE": img}), executor.execute(p2, {"IMAGE": img}))
    assert slow.calls == 1
    assert (r1.result, r2.result) == (33, 64)
    assert sorted([r1.steps[0].shared, r2.steps[0].shared]) == [False, True]
    assert r1.steps[0].key == r2.steps[0].key


async def test_independent_steps_run_concurrently(setup: Any) -> None:
    executor, _ = setup
    # Two different SLOW steps share one device worker, so they serialise there; but the symbolic
    # steps that do not depend on them must not wait behind them.
    p = plan(executor, "a = SLOW(image=IMAGE, seconds=0.3)\nn = COUNT(box=REGION(image=IMAGE, box=[0, 0, 4, 4]))\n")
    done_at: dict[str, float] = {}
    t0 = time.perf_counter()
    ex = await executor.execute(p, {"IMAGE": image()},
                                on_step=lambda r: done_at.setdefault(r.module, time.perf_counter() - t0))
    assert ex.status == "succeeded"
    assert done_at["COUNT"] < done_at["SLOW"]


async def test_step_timeout_fails_that_step_only(setup: Any) -> None:
    executor, _ = setup
    executor.step_timeout_s = 0.05
    p = plan(executor, "a = SLOW(image=IMAGE, seconds=0.3)\nb = a + 1\n"
                       "n = COUNT(box=REGION(image=IMAGE, box=[0, 0, 4, 4]))\n")
    ex = await executor.execute(p, {"IMAGE": image()})
    by_module = {s.module: s for s in ex.steps}
    assert by_module["SLOW"].status == "failed" and "timed out" in (by_module["SLOW"].error or "")
    assert by_module["EVAL"].status == "skipped"
    assert by_module["COUNT"].status == "succeeded"
    assert ex.status == "failed"


async def test_run_timeout(setup: Any) -> None:
    executor, _ = setup
    p = plan(executor, "a = SLOW(image=IMAGE, seconds=0.4)\n")
    ex = await executor.execute(p, {"IMAGE": image()}, timeout_s=0.05)
    assert ex.status == "failed" and ex.error == "run timed out after 0.05 s"


async def test_crashing_module_fails_its_step(setup: Any) -> None:
    executor, _ = setup
    ex = await executor.execute(plan(executor, "x = CRASH(image=IMAGE)\n"), {"IMAGE": image()})
    assert ex.status == "failed"
    assert ex.steps[0].error == "internal error in CRASH: RuntimeError: boom"
    ok = await executor.execute(plan(executor, "n = COUNT(box=REGION(image=IMAGE, box=[0, 0, 4, 4]))\n"),
                                {"IMAGE": image()})
    assert ok.status == "succeeded"


async def test_runtime_type_check_for_any(setup: Any) -> None:
    executor, _ = setup
    # Objects or Text: the compiler types x as Any, so the check happens when the value is known.
    p = plan(executor, "R = REGION(image=IMAGE, box=[0, 0, 4, 4])\nx = R if COUNT(box=R) > 5 else 'none'\n"
                       "n = COUNT(box=x)\n")
    ex = await executor.execute(p, {"IMAGE": image()})
    assert ex.steps[-1].error == "COUNT expects Objects for 'box', got Text"


async def test_keys_chain_and_depend_on_version(setup: Any) -> None:
    executor, slow = setup
    p = plan(executor, "a = SLOW(image=IMAGE, seconds=0)\n")
    # The plan carries the module's own version: the compiler and the executor hash one identity.
    assert p.steps[0].version == slow.version == "3"
    img = image()
    first = await executor.execute(p, {"IMAGE": img})
    assert first.steps[0].inputs == {"image": img.key}
    assert first.steps[0].key == step_key("test.SLOW", "3", {"seconds": 0}, {"image": img.key})
    assert step_key("test.SLOW", "4", {"seconds": 0}, {"image": img.key}) != first.steps[0].key
    other = await executor.execute(p, {"IMAGE": image((9, 9, 9))})
    assert other.steps[0].key != first.steps[0].key and other.steps[0].cache == "miss"


class CountingStore(MemoryStore):
    """Counts artifact reads, to show what a cache hit does not have to fetch."""

    def __init__(self) -> None:
        super().__init__()
        self.art_reads = 0

    async def get(self, kind: str, key: str) -> bytes | None:
        if kind == "art":
            self.art_reads += 1
        return await super().get(kind, key)


async def test_hits_do_not_decode_images_nobody_needs(setup: Any) -> None:
    executor, _ = setup
    store = CountingStore()
    executor.store = store
    text = ("A = CROP_LEFTOF(image=IMAGE, box=REGION(image=IMAGE, box=[8, 0, 16, 8]))\n"
            "B = CROP_ABOVE(image=A, box=REGION(image=A, box=[0, 4, 4, 8]))\n"
            "n = COUNT(box=REGION(image=B, box=[0, 0, 2, 2]))\n")
    first = await executor.execute(plan(executor, text), {"IMAGE": image()})
    assert first.status == "succeeded" and first.result == 1
    store.art_reads = 0
    again = await executor.execute(plan(executor, text), {"IMAGE": image()})
    assert {s.cache for s in again.steps} == {"hit"} and again.result == 1
    assert store.art_reads == 0
    # A new step downstream of cached images decodes just the one it needs.
    more = await executor.execute(plan(executor, text + "m = COUNT(box=REGION(image=B, box=[0, 0, 3, 3]))\n"),
                                  {"IMAGE": image()})
    assert more.status == "succeeded" and store.art_reads == 1


async def test_a_stored_image_is_decoded_only_when_a_step_needs_its_pixels(setup: Any,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    import modules.values

    executor, _ = setup
    monkeypatch.setattr(modules.values, "DECODED", modules.values._Decoded(0))  # keeps nothing decoded
    buf = io.BytesIO()
    Image.new("RGB", (40, 30), (9, 8, 7)).save(buf, format="PNG")
    data = buf.getvalue()
    p = plan(executor, "c = CROP(image=IMAGE, box=REGION(image=IMAGE, box=[0, 0, 20, 10]))\n"
                       "n = COUNT(box=LOC(image=c, object='TOP'))\n")
    first = ImageValue.stored(data, ImageValue.from_bytes(data).key)
    assert (first.width, first.height) == (40, 30) and first._image is None  # the header alone
    ran = await executor.execute(p, {"IMAGE": first}, decode_result=False)
    assert ran.status == "succeeded" and first._image is not None
    again = ImageValue.stored(data, first.key)
    hit = await executor.execute(p, {"IMAGE": again}, decode_result=False)
    assert {s.cache for s in hit.steps} == {"hit"} and hit.result_json == ran.result_json
    assert again._image is None  # every step hit: no pixel was needed


def test_decoded_pixels_are_kept_by_key_within_their_budget() -> None:
    from modules.values import _Decoded

    kept = _Decoded(3 * 10 * 10 * 2)  # room for two 10×10 images
    images = [Image.new("RGB", (10, 10), (i, 0, 0)) for i in range(3)]
    for i, im in enumerate(images):
        kept.put(f"k{i}", im)
    assert kept.get("k0") is None and kept.get("k1") is images[1] and kept.get("k2") is images[2]
    kept.put("k3", Image.new("RGB", (10, 10)))  # k1 was used longest ago
    assert kept.get("k1") is None and kept.get("k2") is images[2]
    buf = io.BytesIO()
    images[0].save(buf, format="PNG")
    import modules.values

    value = ImageValue.from_bytes(buf.getvalue())
    assert ImageValue.stored(buf.getvalue(), value.key).image is modules.values.DECODED.get(value.key)
