"""Cache benchmark: a run whose steps all hit vs the same run with the cache off, over HTTP and in
the run service, on the in-memory store and on Redis; and the cost of one hit.

    .venv/bin/python bench/cache.py [--repeats 30] [--redis redis://127.0.0.1:6379/14 | --no-redis]
                                    [--quick] [--json PATH]

*Over HTTP* (the issue's ratio): an ``nsx serve`` subprocess (packs core and shapes), the 6-step
shapes program (one LOC, five symbolic steps) on scenes uploaded first and named by ``sha256:``
reference; a run whose every step hits (checked) against the same run with the cache off, one
client, interleaved, each pair a ratio. The Redis database is flushed first.

*In the run service* (this process, core pack): the 10-step image program (crops of a 1024×768 image,
box drawing) and a 3-step scalar program through the run service (compile, execute, record,
persist), as the API and ``nsx run`` do, and the image program through the executor alone, so the
run service's own cost shows. A miss pays real pixel work (and encoding its PNG when the cache is
on); a hit pays a store read and a JSON parse, and decodes a cached image only when a step that is
computed needs it. Each timed run follows one untimed run of the same kind.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Runnable as a plain script from a checkout, without installing the package.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from PIL import Image, ImageDraw

from app.metrics import Metrics
from app.runs import RunService
from app.service import make_pool, running
from app.settings import Settings
from bench.common import SHAPES_PROGRAM, Report, client, options, post_run, server, shapes_scenes, upload
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

REDIS_URL = "redis://127.0.0.1:6379/14"


def scene() -> ImageValue:
    img = Image.new("RGB", (1024, 768), (240, 240, 230))
    d = ImageDraw.Draw(img)
    for i in range(40):
        d.ellipse((i * 23 % 1000, i * 37 % 740, i * 23 % 1000 + 30, i * 37 % 740 + 30), fill=(i * 6, 90, 200 - i * 4))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return ImageValue.from_bytes(buf.getvalue())


async def timed(runs: RunService, program: str, image: ImageValue, cache: bool) -> float:
    # Once untimed first: a run timed right after a miss that made and dropped megabytes of
    # crops would pay for that garbage, and the figures would compare orders, not paths.
    await runs.run(program, {"IMAGE": image}, cache=cache)
    t0 = time.perf_counter()
    record = await runs.run(program, {"IMAGE": image}, cache=cache)
    ms = (time.perf_counter() - t0) * 1000
    assert record.status == "succeeded", record.error
    return ms


async def executed(runs: RunService, program: str, image: ImageValue, cache: bool) -> float:
    plan = runs.compile(program, ["IMAGE"])
    await runs.executor.execute(plan, {"IMAGE": image}, cache=cache)  # untimed, as in timed()
    t0 = time.perf_counter()
    execution = await runs.executor.execute(plan, {"IMAGE": image}, cache=cache)
    assert execution.status == "succeeded", execution.error
    return (time.perf_counter() - t0) * 1000


@dataclass
class InProcess:
    store: str = ""
    steps: int = 0
    scalar_steps: int = 0
    hit: list[float] = field(default_factory=list)
    off: list[float] = field(default_factory=list)
    s_hit: list[float] = field(default_factory=list)
    s_off: list[float] = field(default_factory=list)
    e_hit: list[float] = field(default_factory=list)
    e_off: list[float] = field(default_factory=list)


async def in_process(redis_url: str | None, repeats: int) -> InProcess:
    settings = Settings(redis_url=redis_url, memory_store_mb=512, packs="core", device="cpu")
    metrics = Metrics()
    out = InProcess()
    async with running(settings, make_pool(settings, load_packs(["core"]), metrics), metrics, wait=True) as svc:
        runs = svc.runs
        image = scene()
        out.steps = len(runs.compile(PROGRAM, ["IMAGE"]).steps)
        out.scalar_steps = len(runs.compile(SCALAR, ["IMAGE"]).steps)
        await timed(runs, PROGRAM, image, True)  # fill the cache
        # Interleave the conditions so drift on a shared machine hits them alike.
        for _ in range(repeats):
            out.hit.append(await timed(runs, PROGRAM, image, True))
            out.off.append(await timed(runs, PROGRAM, image, False))
            out.s_hit.append(await timed(runs, SCALAR, image, True))
            out.s_off.append(await timed(runs, SCALAR, image, False))
            out.e_hit.append(await executed(runs, PROGRAM, image, True))
            out.e_off.append(await executed(runs, PROGRAM, image, False))
        out.store = svc.store.name
    return out


@dataclass
class OverHttp:
    hit: list[float] = field(default_factory=list)
    off: list[float] = field(default_factory=list)
    ratio: list[float] = field(default_factory=list)
    server_ratio: list[float] = field(default_factory=list)
    hit_execute: list[float] = field(default_factory=list)


def over_http(redis_url: str | None, repeats: int, scenes: list[bytes]) -> OverHttp:
    env = {"NSX_PACKS": "core,shapes"} | ({"NSX_REDIS_URL": redis_url} if redis_url else {})
    out = OverHttp()
    with server(env) as srv, client(srv.base) as http:
        refs = [{"IMAGE": upload(http, d)} for d in scenes]
        for ref in refs:  # fill the cache, and warm both paths
            post_run(http, SHAPES_PROGRAM, ref, cache=True)
            post_run(http, SHAPES_PROGRAM, ref, cache=False)
        for i in range(repeats):
            k = i % len(refs)
            ms: dict[bool, float] = {}
            rec: dict[bool, dict[str, Any]] = {}
            for cache in ((True, False) if i % 2 == 0 else (False, True)):
                t0 = time.perf_counter()
                rec[cache] = post_run(http, SHAPES_PROGRAM, refs[k], cache=cache)
                ms[cache] = (time.perf_counter() - t0) * 1000
            missed = [s["id"] for s in rec[True]["steps"] if s["cache"] != "hit"]
            if missed:
                raise SystemExit(f"steps {missed} did not hit the cache on a repeated run")
            out.hit.append(ms[True])
            out.off.append(ms[False])
            out.ratio.append(ms[True] / ms[False])
            t_hit, t_off = (float(rec[c]["timings"]["total_ms"]) for c in (True, False))
            out.server_ratio.append(t_hit / t_off)
            out.hit_execute.append(float(rec[True]["timings"]["execute_ms"]))
    return out


def redis_ready(url: str) -> str | None:
    """None when ``url`` answers (its database flushed), else why not."""
    try:
        import redis

        r = redis.Redis.from_url(url, socket_connect_timeout=2)
        r.flushdb()
        r.close()
        return None
    except Exception as e:  # noqa: BLE001 - any failure means: no Redis to measure
        return f"{type(e).__name__}: {e}"


def main() -> None:
    ap = options(argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter))
    ap.add_argument("--repeats", type=int, default=None, help="in-process repeats (default 30; --quick 10)")
    ap.add_argument("--http-repeats", type=int, default=None, help="pairs over HTTP (default 40; --quick 15)")
    ap.add_argument("--redis", default=REDIS_URL, help=f"Redis URL, flushed first (default {REDIS_URL})")
    ap.add_argument("--no-redis", action="store_true", help="the in-memory store only")
    args = ap.parse_args()
    repeats = args.repeats or (10 if args.quick else 30)
    http_repeats = args.http_repeats or (15 if args.quick else 40)
    report = Report("cache", config={"repeats": repeats, "http_repeats": http_repeats, "http_program_steps": 6,
                                     "image_program_steps": 10, "scalar_program_steps": 3})
    stores: list[tuple[str, str | None]] = [("memory", None)]
    if not args.no_redis:
        why = redis_ready(args.redis)
        if why is None:
            stores.append(("redis", args.redis))
            report.config["redis"] = args.redis
        else:
            report.notes.append(f"Redis at {args.redis} not measured: {why}")
    scenes = shapes_scenes(8)
    for name, url in stores:
        if url:
            redis_ready(url)
        h = over_http(url, http_repeats, scenes)
        report.add(f"http_hit_over_off_{name}", f"all-hit ÷ cache-off over HTTP, shapes program, sha256 refs ({name})",
                   h.ratio, "×", "<= 0.05")
        report.add(f"http_hit_ms_{name}", f"all-hit run over HTTP ({name})", h.hit, " ms")
        report.add(f"http_off_ms_{name}", f"cache-off run over HTTP ({name})", h.off, " ms")
        report.add(f"server_hit_over_off_{name}", f"all-hit ÷ cache-off, the records' total_ms ({name})",
                   h.server_ratio, "×")
        report.add(f"http_hit_execute_ms_{name}", f"all-hit run's execute_ms in its record ({name})",
                   h.hit_execute, " ms")
        if url:
            redis_ready(url)
        p = asyncio.run(in_process(url, repeats))
        report.add(f"hit_step_us_{name}", f"per hit step, image program, run service ({p.store})",
                   [v / p.steps * 1000 for v in p.hit], " µs")
        report.add(f"scalar_hit_step_us_{name}", f"per hit step, scalar program ({p.store})",
                   [v / p.scalar_steps * 1000 for v in p.s_hit], " µs")
        report.add(f"scalar_off_step_us_{name}", f"per computed trivial symbolic step, cache off ({p.store})",
                   [v / p.scalar_steps * 1000 for v in p.s_off], " µs")
        report.add(f"image_hit_ms_{name}", f"image program all hits, run service ({p.store})", p.hit, " ms")
        report.add(f"image_off_ms_{name}", f"image program cache off, run service ({p.store})", p.off, " ms")
        report.add(f"executor_hit_us_per_step_{name}", f"per hit step, executor alone ({p.store})",
                   [v / p.steps * 1000 for v in p.e_hit], " µs")
        report.add(f"service_cost_hit_ms_{name}", f"run service's own cost on an all-hit run ({p.store})",
                   [a - b for a, b in zip(p.hit, p.e_hit)], " ms")
        report.add(f"service_cost_off_ms_{name}", f"run service's own cost on a cache-off run ({p.store})",
                   [a - b for a, b in zip(p.off, p.e_off)], " ms")
    report.emit(args)


if __name__ == "__main__":
    main()
