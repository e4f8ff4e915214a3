"""Cache benchmark: a run whose steps all hit vs the same run with the cache off, and the cost of one hit.

    .venv/bin/python bench/cache.py [--redis redis://127.0.0.1:6379/15] [--repeats 30]

Runs go through the run service (compile, execute, record, persist), as the API's and the CLI's do;
the executor alone is timed too, so the run service's own cost per run shows.
Everything is measured in this one process run, so the ratios compare like with like on a noisy machine.
The program mixes cheap symbolic steps with image work (crops of a 1024×768 image, box drawing), so a
miss pays real pixel work (and encoding its PNG when the cache is on); a hit pays a store read and a
JSON parse, and decodes a cached image only when a step that is computed needs it.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import statistics
import time

from PIL import Image, ImageDraw

from app.metrics import Metrics
from app.runs import RunService
from app.service import make_pool, running
from app.settings import Settings
from modules.packs import load_packs
from modules.values import ImageValue

PROGRAM = """\
A = REGION(image=IMAGE, box=[100, 100, 400, 400], label='a')
B = REGION(image=IMAGE, box=[500, 200, 900, 600], label='b')
BOTH = UNION(left=A, right=B)
n = COUNT(box=BOTH)
LEFT_PART = CROP_LEFTOF(image=IMAGE, box=B)
TAGGED = TAG(image=LEFT_PART, object=REGION(image=LEFT_PART, box=[10, 10, 200, 200], label='corner'))
ZOOM = CROP(image=TAGGED, box=REGION(image=TAGGED, box=[0, 0, 300, 300]))
answer = 'two' if n == 2 else 'other'
"""

SCALAR = "n = COUNT(box=REGION(image=IMAGE, box=[1, 1, 9, 9]))\nm = n + 1\n"


def scene() -> ImageValue:
    img = Image.new("RGB", (1024, 768), (240, 240, 230))
    d = ImageDraw.Draw(img)
    for i in range(40):
        d.ellipse((i * 23 % 1000, i * 37 % 740, i * 23 % 1000 + 30, i * 37 % 740 + 30), fill=(i * 6, 90, 200 - i * 4))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return ImageValue.from_bytes(buf.getvalue())


async def timed(runs: RunService, program: str, image: ImageValue, cache: bool, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        # Once untimed first: a run timed right after a miss that made and dropped megabytes of
        # crops would pay for that garbage, and the figures would compare orders, not paths.
        await runs.run(program, {"IMAGE": image}, cache=cache)
        t0 = time.perf_counter()
        record = await runs.run(program, {"IMAGE": image}, cache=cache)
        out.append((time.perf_counter() - t0) * 1000)
        assert record.status == "succeeded", record.error
    return out


async def executed(runs: RunService, program: str, image: ImageValue, cache: bool) -> float:
    plan = runs.compile(program, ["IMAGE"])
    await runs.executor.execute(plan, {"IMAGE": image}, cache=cache)  # untimed, as in timed()
    t0 = time.perf_counter()
    execution = await runs.executor.execute(plan, {"IMAGE": image}, cache=cache)
    assert execution.status == "succeeded", execution.error
    return (time.perf_counter() - t0) * 1000


async def main(redis_url: str | None, repeats: int) -> None:
    settings = Settings(redis_url=redis_url, memory_store_mb=512, packs="core", device="cpu")
    metrics = Metrics()
    async with running(settings, make_pool(settings, load_packs(["core"]), metrics), metrics, wait=True) as svc:
        runs = svc.runs
        image = scene()
        steps = len(runs.compile(PROGRAM, ["IMAGE"]).steps)
        scalar_steps = len(runs.compile(SCALAR, ["IMAGE"]).steps)
        await timed(runs, PROGRAM, image, True, 1)  # fill the cache
        # Interleave the two conditions so drift on a shared machine hits both alike.
        hit: list[float] = []
        off: list[float] = []
        s_hit: list[float] = []
        s_off: list[float] = []
        e_hit: list[float] = []
        e_off: list[float] = []
        for _ in range(repeats):
            hit += await timed(runs, PROGRAM, image, True, 1)
            off += await timed(runs, PROGRAM, image, False, 1)
            s_hit += await timed(runs, SCALAR, image, True, 1)
            s_off += await timed(runs, SCALAR, image, False, 1)
            e_hit.append(await executed(runs, PROGRAM, image, True))
            e_off.append(await executed(runs, PROGRAM, image, False))
        store_name = svc.store.name
    med = statistics.median
    print(f"store: {store_name}; {repeats} repeats; medians")
    print(f"image program ({steps} steps): all hits {med(hit):.2f} ms, cache off {med(off):.2f} ms, "
          f"off/hit = {med(off) / med(hit):.2f}x")
    print(f"scalar program ({scalar_steps} steps): all hits {med(s_hit):.3f} ms, cache off {med(s_off):.3f} ms, "
          f"off/hit = {med(s_off) / med(s_hit):.2f}x")
    print(f"per-step cost of a hit: {med(hit) / steps * 1000:.0f} µs (image program), "
          f"{med(s_hit) / scalar_steps * 1000:.0f} µs (scalar program); computing a trivial symbolic step "
          f"with the cache off: {med(s_off) / scalar_steps * 1000:.0f} µs")
    print(f"executor alone, image program: all hits {med(e_hit):.2f} ms, cache off {med(e_off):.2f} ms; "
          f"the run service's own cost per run (compile lookup, record, persist): "
          f"{med(hit) - med(e_hit):.2f} ms on a hit, {med(off) - med(e_off):.2f} ms on a miss")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--redis", default=None, help="Redis URL (default: the in-memory store)")
    ap.add_argument("--repeats", type=int, default=30)
    a = ap.parse_args()
    asyncio.run(main(a.redis, a.repeats))
