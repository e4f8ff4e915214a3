"""A CLEVR-style workload: nsx at 16 clients with its cache, against a sequential interpreter over the
same modules with no cache, and the same interpreter with a plain dict memo.

    .venv/bin/python bench/workload.py [--questions 500] [--per-scene 10] [--clients 16] [--repeats 3]
                                       [--seed 0] [--redis URL] [--quick] [--json PATH]

The questions are the shapes pack's own (``modules/shapes/tools/questions.py``), ``--per-scene`` per
held-out scene (the world seed ``nsx bench shapes --seed`` draws from), shuffled: 500 questions over
50 scenes by default, 200 over 20 with ``--quick``. Their programs name the scene's objects with
``LOC(IMAGE, 'object')`` and now and then with a phrase (``LOC(IMAGE, 'red circle')``); the number
of distinct LOC calls among them is reported.

*nsx*: a real ``nsx serve`` subprocess (packs core and shapes, the in-memory store, or ``--redis``
with its database flushed), every scene uploaded once before timing and named by its ``sha256:``
reference; ``--clients`` asyncio clients, each on a bare keep-alive connection (``bench.common.Connection``,
TCP_NODELAY), take the questions in turn, the cache
on; the figure is the wall time from the first request to the last answer. Each repeat starts a new
server (or flushes the Redis database), so every repeat starts with a cold cache. The server is
left to go idle (its background text-model load) before timing.

*sequential* and *memo* (``bench/baselines.py``): one process, the packs' module objects loaded here,
the images decoded before timing; every program compiled by the project's compiler, its steps run in
order, each ``module.forward([args])[0]``; *memo* keeps every step's value in a dict keyed by
module, version, constants and input identities.

The three must give the same answer to every question; the figure ``mismatches`` counts those that
do not, and the first few are printed. Ratios are taken per repeat (the three run back to back,
their order rotating between repeats), then the median over repeats.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Runnable as a plain script from a checkout, without installing the package.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx

from bench.baselines import Loaded, Memo, Sequential, load
from bench.common import Connection, Report, client, options, server, upload
from modules.packs import load_packs
from modules.shapes.tools.bench import CONDITIONS, SceneSource, check_held_out
from modules.shapes.tools.programs import normalize_answer
from modules.shapes.tools.questions import Question, generate_questions
from modules.shapes.tools.seeds import bench_seed, question_seed
from modules.values import ImageValue
from program_dsl import Const, Ref

PACKS = ("core", "shapes")


@dataclass
class Workload:
    questions: list[Question]  # in the order they are asked (shuffled)
    pngs: dict[int, bytes]  # scene id → PNG
    world_seed: int


def make_workload(n: int, per_scene: int, seed: int) -> Workload:
    """``n`` questions from the shapes generator, ``per_scene`` per held-out scene, shuffled."""
    world_seed = bench_seed(seed)
    source = SceneSource(world_seed, 0, CONDITIONS[0].world)
    questions = generate_questions(iter(source), n, seed=question_seed(seed, 0), per_scene=per_scene)
    random.Random(seed).shuffle(questions)
    pngs = {s: source.png(s) for s in sorted({q.scene for q in questions})}
    return Workload(questions, pngs, world_seed)


def distinct_calls(interp: Sequential, questions: Sequence[Question], module: str = "LOC") -> int:
    """Distinct calls to ``module`` on the scenes' images among the questions' programs: what a
    perfect cache computes (a call on a step's output, a crop say, is not counted)."""
    seen: set[tuple[int, str]] = set()
    for q in questions:
        for step in interp.compile(q.program).steps:
            if step.module != module or any(isinstance(s, Ref) for s in step.args.values()):
                continue
            consts = {k: s.value for k, s in step.args.items() if isinstance(s, Const)}
            seen.add((q.scene, json.dumps(consts, sort_keys=True)))
    return len(seen)


def answer_of(record: Mapping[str, Any]) -> str:
    """A run record's answer, normalised as the questions' answers are."""
    doc = record.get("result")
    if record.get("status") != "succeeded" or not isinstance(doc, Mapping):
        return "<none>"
    return normalize_answer(doc["value"]) if "value" in doc else f"<{doc.get('type')}>"


def metric(text: str, name: str, **labels: str) -> float:
    """The sum of a Prometheus counter's samples whose labels include ``labels``."""
    want = [f'{k}="{v}"' for k, v in labels.items()]
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and all(w in line for w in want):
            total += float(line.rsplit(" ", 1)[1])
    return total


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def settle(pid: int, idle: float = 0.05, window_s: float = 0.5, timeout_s: float = 90.0) -> float:
    """Wait until process ``pid`` uses under ``idle`` of a core over two windows in a row: a server
    that is ready still loads its text model in the background, which must not share the timed
    window. Seconds waited."""
    t0 = time.perf_counter()
    quiet = 0
    last = cpu_seconds(pid)
    while quiet < 2 and time.perf_counter() - t0 < timeout_s:
        time.sleep(window_s)
        now = cpu_seconds(pid)
        quiet = quiet + 1 if (now - last) / window_s < idle else 0
        last = now
    return time.perf_counter() - t0


# ----------------------------------------------------------------------------- the three ways


@dataclass
class Timed:
    seconds: float
    answers: list[str]
    loc_images: float  # items through LOC's forward
    loc_forwards: float  # forward calls (batches) of LOC


async def _drive(base: str, questions: Sequence[Question], refs: Mapping[int, str], clients: int) -> Timed:
    answers = ["<unasked>"] * len(questions)
    order = iter(range(len(questions)))

    url = httpx.URL(base)

    async def one_client(http: httpx.AsyncClient) -> None:
        # A bare keep-alive connection per client (``Connection``): httpx's pool costs the client
        # more CPU than the server spends, on a machine where the two share two cores.
        conn = Connection(url.host, url.port or 80)
        try:
            for i in order:  # shared: each client takes the next question
                q = questions[i]
                body = json.dumps({"program": q.program, "images": {"IMAGE": refs[q.scene]},
                                   "options": {"cache": True}}).encode()
                status, data = await conn.post("/v1/runs", body)
                if status != 200:
                    raise RuntimeError(f"POST /v1/runs answered {status} for question {q.id}: {data[:300]!r}")
                answers[i] = answer_of(json.loads(data))
        finally:
            await conn.close()

    limits = httpx.Limits(max_connections=clients + 4, max_keepalive_connections=clients + 4)
    transport = httpx.AsyncHTTPTransport(limits=limits, socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)])
    async with httpx.AsyncClient(base_url=base, timeout=600, transport=transport) as http:
        # A new process meets every scene's tensor shapes for the first time (the attribute net's
        # batch is the scene's object count), as the baselines did in their untimed pass: one LOC per
        # scene with the cache off warms the kernels and leaves the cache cold.
        scenes = list(refs.values())
        for k in range(0, len(scenes), clients):
            warm = [http.post("/v1/runs", json={"program": "x = LOC(IMAGE, 'object')", "images": {"IMAGE": ref},
                                                "options": {"cache": False}}) for ref in scenes[k:k + clients]]
            for r in await asyncio.gather(*warm):
                r.raise_for_status()
        before = (await http.get("/metrics")).text
        t0 = time.perf_counter()
        await asyncio.gather(*(one_client(http) for _ in range(clients)))
        seconds = time.perf_counter() - t0
        after = (await http.get("/metrics")).text
    images = metric(after, "nsx_module_batched_calls_total", module="LOC") - metric(
        before, "nsx_module_batched_calls_total", module="LOC")
    batches = metric(after, "nsx_module_batches_total", module="LOC") - metric(
        before, "nsx_module_batches_total", module="LOC")
    return Timed(seconds, answers, images, batches)


def flush_redis(url: str) -> None:
    import redis

    r = redis.Redis.from_url(url)
    try:
        r.flushdb()
    finally:
        r.close()


def run_nsx(work: Workload, clients: int, redis_url: str | None, device: str) -> tuple[Timed, dict[str, float]]:
    """One cold server, every scene uploaded, every question asked by ``clients`` clients."""
    env = {"NSX_PACKS": ",".join(PACKS), "NSX_DEVICE": device}
    if redis_url:
        flush_redis(redis_url)
        env["NSX_REDIS_URL"] = redis_url
    with server(env) as srv:
        with client(srv.base) as http:
            refs = {s: upload(http, png) for s, png in work.pngs.items()}
        waited = settle(srv.pid)
        timed = asyncio.run(_drive(srv.base, work.questions, refs, clients))
        return timed, {"ready_s": srv.ready_s, "settle_s": waited}


def run_local(interp: Sequential, work: Workload, images: Mapping[int, ImageValue]) -> Timed:
    interp.reset()
    answers: list[str] = []
    t0 = time.perf_counter()
    for q in work.questions:
        out = interp.run(q.program, {"IMAGE": images[q.scene]})
        answers.append("<none>" if out.error is not None else normalize_answer(out.value))
    seconds = time.perf_counter() - t0
    n = float(interp.forwards["shapes.LOC"])
    return Timed(seconds, answers, n, n)


# ----------------------------------------------------------------------------- main


def main() -> None:
    ap = options(argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter))
    ap.add_argument("--questions", type=int, default=None, help="questions (default 500; --quick 200)")
    ap.add_argument("--per-scene", type=int, default=10, help="questions per scene")
    ap.add_argument("--clients", type=int, default=16, help="concurrent nsx clients")
    ap.add_argument("--repeats", type=int, default=None, help="repeats (default 3; --quick 2)")
    ap.add_argument("--seed", type=int, default=0, help="held-out world and question seed, as nsx bench shapes --seed")
    ap.add_argument("--redis", metavar="URL", help="run nsx on this Redis database (FLUSHED before each repeat)")
    ap.add_argument("--device", default="cpu", help="device of the modules, both sides (default cpu)")
    args = ap.parse_args()
    n = args.questions or (200 if args.quick else 500)
    repeats = max(2, args.repeats or (2 if args.quick else 3))

    t0 = time.perf_counter()
    work = make_workload(n, args.per_scene, args.seed)
    from modules.shapes.files import WEIGHTS

    check_held_out(work.world_seed, WEIGHTS)
    loaded: Loaded = load(load_packs(list(PACKS)), args.device)
    images = {s: ImageValue.from_bytes(png) for s, png in work.pngs.items()}
    sequential, memo = Sequential(loaded), Memo(loaded)
    distinct = distinct_calls(sequential, work.questions)
    run_local(memo, work, images)  # untimed: every scene's shapes through the kernels once
    print(f"{len(work.questions)} questions over {len(work.pngs)} scenes (world seed {work.world_seed}), "
          f"{distinct} distinct LOC calls; prepared in {time.perf_counter() - t0:.1f} s", flush=True)

    report = Report("workload", config={
        "questions": len(work.questions), "scenes": len(work.pngs), "per_scene": args.per_scene,
        "clients": args.clients, "repeats": repeats, "seed": args.seed, "world_seed": work.world_seed,
        "store": "redis" if args.redis else "memory", "packs": ",".join(PACKS), "device": args.device,
        "distinct_loc_calls": distinct})
    runs: dict[str, list[Timed]] = {"nsx": [], "sequential": [], "memo": []}
    starts: list[dict[str, float]] = []
    mismatches: list[float] = []
    examples: list[str] = []
    for r in range(repeats):
        order = ["nsx", "sequential", "memo"]
        order = order[r % 3:] + order[:r % 3]
        got: dict[str, Timed] = {}
        for side in order:
            if side == "nsx":
                got[side], start = run_nsx(work, args.clients, args.redis, args.device)
                starts.append(start)
            else:
                got[side] = run_local(sequential if side == "sequential" else memo, work, images)
            print(f"  repeat {r + 1}/{repeats}: {side:<10} {got[side].seconds:7.2f} s "
                  f"({len(work.questions) / got[side].seconds:6.1f} questions/s), "
                  f"LOC images {got[side].loc_images:.0f}", flush=True)
        for side, t in got.items():
            runs[side].append(t)
        bad = [i for i in range(len(work.questions))
               if not got["nsx"].answers[i] == got["sequential"].answers[i] == got["memo"].answers[i]]
        mismatches.append(float(len(bad)))
        for i in bad[:max(0, 5 - len(examples))]:
            q = work.questions[i]
            examples.append(f"question {q.id} (scene {q.scene}): nsx {got['nsx'].answers[i]!r}, sequential "
                            f"{got['sequential'].answers[i]!r}, memo {got['memo'].answers[i]!r}; truth {q.answer!r}; "
                            f"program {q.program!r}")

    qps = {side: [len(work.questions) / t.seconds for t in ts] for side, ts in runs.items()}
    report.add("nsx_over_sequential", f"nsx ({args.clients} clients, cache on) ÷ sequential interpreter, "
               "questions/s", [a / b for a, b in zip(qps["nsx"], qps["sequential"])], "×", ">= 5")
    report.add("nsx_over_memo", f"nsx ({args.clients} clients, cache on) ÷ sequential with a dict memo, questions/s",
               [a / b for a, b in zip(qps["nsx"], qps["memo"])], "×", ">= 1.0")
    report.add("nsx_qps", f"nsx, {args.clients} clients, cache on (cold at start)", qps["nsx"], " questions/s")
    report.add("sequential_qps", "sequential interpreter, no cache", qps["sequential"], " questions/s")
    report.add("memo_qps", "sequential interpreter with a dict memo", qps["memo"], " questions/s")
    report.add("mismatches", "questions where the three answers differ", mismatches, "", "<= 0")
    truth = [q.answer for q in work.questions]
    report.add("accuracy", "nsx answers equal to the ground truth",
               [100 * sum(a == b for a, b in zip(t.answers, truth)) / len(truth) for t in runs["nsx"]], " %")
    report.add("distinct_loc", "distinct LOC calls among the questions", [float(distinct)] * repeats, " calls")
    report.add("loc_images_nsx", "images through LOC's forward, nsx", [t.loc_images for t in runs["nsx"]])
    report.add("loc_batches_nsx", "LOC forward passes (batches), nsx", [t.loc_forwards for t in runs["nsx"]])
    report.add("loc_forwards_sequential", "LOC forward passes, sequential", [t.loc_images for t in runs["sequential"]])
    report.add("loc_forwards_memo", "LOC forward passes, memo", [t.loc_images for t in runs["memo"]])
    report.add("server_ready_s", "nsx server ready (start to /readyz 200)", [s["ready_s"] for s in starts], " s")
    report.notes.append("nsx: wall time of all questions from the first request; upload, start-up and the "
                        f"background text-model load (waited for, {max(s['settle_s'] for s in starts):.1f} s at "
                        "most) not timed; each repeat a new server, cold cache")
    report.notes.append("warm-up, untimed: the baselines ran the memo pass once; each server one cache-off "
                        "LOC(IMAGE, 'object') per scene")
    report.notes.append("baselines: images decoded before timing; each program compiled once per repeat")
    report.notes.extend(f"mismatch: {e}" for e in examples)
    report.notes.append(f"total {time.perf_counter() - t0:.0f} s")
    report.emit(args)


if __name__ == "__main__":
    main()
