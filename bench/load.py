"""Sustained load: 64 clients for 60 s on a mix of programs and images with repeats, against a served
process on a Redis of its own (append-only), reporting throughput, latency p50/p99, answers by
status and the server's peak memory; ``--restart-redis N`` restarts that Redis N times during the
window and then checks that no record was lost.

    .venv/bin/python bench/load.py [--clients 64] [--seconds 60] [--restart-redis 2] [--quick] [--json PATH]

The server is ``nsx serve`` (core and shapes packs) with NSX_REDIS_URL set to a ``redis-server``
this script starts on a free port with ``--appendonly yes``: records it says are persisted must
survive the restarts. Clients are asyncio tasks on bare keep-alive connections
(``bench.common.Connection``). Each request is, at random (seeded), one of:

- the six-step shapes program on one of 24 uploaded scenes, by ``sha256:`` reference (repeats: the
  cache answers most of them after a while);
- the same with the scene inline as base64, cache off (every step computed);
- a core-only program (REGION, CROP, COUNT, EVAL) on an uploaded scene;
- a run on a reference no one uploaded (a 422 on purpose, counted apart as "expected").

Counted: 200s whose run succeeded, failed runs (200 with status "failed"), 429 and 503 that carry
Retry-After (the service asking for a retry: counted apart), and every other 4xx/5xx. After the
window every record that answered ``persisted: true`` is looked for in Redis itself, and every
record through ``GET /v1/runs/{id}``: the lost ones are counted. Goals (with restarts): 0 failed
runs, 0 lost records, 0 unexpected 4xx/5xx.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import redis

from bench.common import SHAPES_PROGRAM, Connection, Report, client, free_port, options, server, shapes_scenes, upload
from bench.workload import settle

CORE_PROGRAM = """\
R = REGION(image=IMAGE, box=[20, 20, 140, 140])
PART = CROP(image=IMAGE, box=R)
n = COUNT(box=R)
answer = n * 10
"""
MISSING = "sha256:" + "0" * 64


class RedisServer:
    """A redis-server with an append-only file in a folder of its own, restartable on its port."""

    def __init__(self) -> None:
        if shutil.which("redis-server") is None:
            raise SystemExit("bench/load.py needs redis-server on PATH (apt-get install redis-server)")
        self.dir = Path(tempfile.mkdtemp(prefix="nsx-load-redis-"))
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
                                      "--appendonly", "yes", "--save", "", "--dir", str(self.dir),
                                      "--loglevel", "warning"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        r = redis.Redis(port=self.port)
        deadline = time.monotonic() + 10
        while True:
            try:
                if r.ping():
                    return
            except redis.ConnectionError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("redis-server did not start")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()  # SIGTERM: Redis writes its append-only file out before it exits
            self.proc.wait(timeout=20)

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


@dataclass
class Tally:
    latencies: list[float] = field(default_factory=list)
    by_kind: dict[str, list[float]] = field(default_factory=dict)
    statuses: Counter[str] = field(default_factory=Counter)
    succeeded: int = 0
    failed_runs: list[str] = field(default_factory=list)
    retry_asked: Counter[int] = field(default_factory=Counter)  # 429/503 with Retry-After
    unexpected: list[str] = field(default_factory=list)
    expected: int = 0
    records: dict[str, bool] = field(default_factory=dict)  # run id → persisted


def requests(refs: list[str], scenes: list[bytes]) -> list[tuple[str, bytes, bool]]:
    """(kind, JSON body, whether a 422 is expected) for every request the clients draw from."""
    out: list[tuple[str, bytes, bool]] = []
    for ref in refs:
        out.append(("shapes", json.dumps({"program": SHAPES_PROGRAM, "images": {"IMAGE": ref}}).encode(), False))
        out.append(("core", json.dumps({"program": CORE_PROGRAM, "images": {"IMAGE": ref}}).encode(), False))
    for scene in scenes[:8]:
        inline = base64.b64encode(scene).decode()
        out.append(("inline", json.dumps({"program": SHAPES_PROGRAM, "images": {"IMAGE": inline},
                                          "options": {"cache": False}}).encode(), False))
    out.append(("missing", json.dumps({"program": CORE_PROGRAM, "images": {"IMAGE": MISSING}}).encode(), True))
    return out


async def client_loop(port: int, pool: list[tuple[str, bytes, bool]], weights: list[float], until: float,
                      seed: int, tally: Tally) -> None:
    rng = random.Random(seed)
    conn = Connection("127.0.0.1", port)
    try:
        while time.perf_counter() < until:
            kind, body, expect_422 = rng.choices(pool, weights)[0]
            headers: dict[str, str] = {}
            t0 = time.perf_counter()
            try:
                status, data = await conn.post("/v1/runs", body, headers)
            except (OSError, asyncio.IncompleteReadError, ValueError) as e:
                tally.unexpected.append(f"{kind}: connection: {type(e).__name__}: {e}")
                await conn.close()
                conn = Connection("127.0.0.1", port)
                continue
            took = time.perf_counter() - t0
            tally.latencies.append(took)
            tally.by_kind.setdefault(kind, []).append(took)
            tally.statuses[str(status)] += 1
            if status == 200:
                record = json.loads(data)
                tally.records[record["run_id"]] = bool(record["persisted"])
                if record["status"] == "succeeded":
                    tally.succeeded += 1
                else:
                    tally.failed_runs.append(f"{kind}: {record.get('error')}")
            elif status in (429, 503) and "retry-after" in headers:
                tally.retry_asked[status] += 1
                await asyncio.sleep(min(float(headers["retry-after"]), 2.0))
            elif status == 422 and expect_422:
                tally.expected += 1
            else:
                tally.unexpected.append(f"{kind}: {status}: {data[:200]!r}")
    finally:
        await conn.close()


def percentile(ordered: list[float], q: float) -> float:
    """The ``q`` quantile of sorted values (nearest rank); 0 for none."""
    if not ordered:
        return 0.0
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


def restarter(store: RedisServer, times: int, t0: float, seconds: float, log: list[str]) -> None:
    for i in range(times):
        at = t0 + seconds * (i + 1) / (times + 1)
        time.sleep(max(0.0, at - time.perf_counter()))
        store.stop()
        log.append(f"redis stopped at {time.perf_counter() - t0:.1f} s")
        time.sleep(1.0)
        store.start()
        log.append(f"redis back at {time.perf_counter() - t0:.1f} s")


def main(argv: list[str] | None = None) -> int:
    ap = options(argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter))
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--seconds", type=float, default=None, help="the timed window (default 60; --quick 15)")
    ap.add_argument("--restart-redis", type=int, default=0, metavar="N", help="restart Redis N times in the window")
    args = ap.parse_args(argv)
    seconds = args.seconds or (15.0 if args.quick else 60.0)
    store = RedisServer()
    store.start()
    report = Report("load")
    try:
        with server({"NSX_REDIS_URL": store.url, "NSX_PACKS": "core,shapes", "NSX_LOG_LEVEL": "warning"}) as srv:
            # Quiet first: a ready server still loads its text model in the background.
            settle(srv.pid)
            scenes = shapes_scenes(24, seed=777)
            with client(srv.base) as http:
                refs = [upload(http, s) for s in scenes]
            pool = requests(refs, scenes)
            weights = [{"shapes": 6.0, "core": 3.0, "inline": 2.0, "missing": 0.5}[k] for k, _, _ in pool]
            tally = Tally()
            peak = [srv.rss_mib()]
            restarts: list[str] = []
            done = threading.Event()

            def sample() -> None:
                while not done.wait(0.5):
                    peak.append(srv.rss_mib())

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            port = int(srv.base.rsplit(":", 1)[1])
            t0 = time.perf_counter()
            bouncer = threading.Thread(target=restarter, args=(store, args.restart_redis, t0, seconds, restarts))
            bouncer.start()

            async def drive() -> None:
                await asyncio.gather(*(client_loop(port, pool, weights, t0 + seconds, 1000 + i, tally)
                                       for i in range(args.clients)))

            asyncio.run(drive())
            elapsed = time.perf_counter() - t0
            bouncer.join()
            done.set()
            time.sleep(1.5)  # the server's next try at Redis after the last restart
            plain = redis.Redis.from_url(store.url)
            claimed = [rid for rid, persisted in tally.records.items() if persisted]
            lost_in_redis = [rid for rid in claimed if not plain.exists(f"nsx:v1:run:{rid}")]
            with client(srv.base) as http:
                unreadable = [rid for rid in tally.records if http.get(f"/v1/runs/{rid}").status_code != 200]
    finally:
        store.close()
    lat = sorted(tally.latencies)
    total = len(lat)
    report.add("runs_per_s", f"answers per second, {args.clients} clients", [total / elapsed], " /s")
    report.add("p50_ms", "latency p50", [percentile(lat, 0.5) * 1000], " ms")
    report.add("p99_ms", "latency p99", [percentile(lat, 0.99) * 1000], " ms")
    report.add("peak_rss_mib", "server peak resident memory", [max(peak)], " MiB")
    report.add("failed_runs", "runs that failed (200 with status failed)", [len(tally.failed_runs)], "", "<= 0")
    report.add("unexpected", "unexpected answers (4xx/5xx other than the planted 422; 429/503 without "
               "Retry-After; dropped connections)", [len(tally.unexpected)], "", "<= 0")
    report.add("lost_records", "records that said persisted: true and are not in Redis after the run",
               [len(lost_in_redis)], "", "<= 0")
    report.add("unreadable_records", "records GET /v1/runs/{id} does not answer after the run", [len(unreadable)], "",
               "<= 0")
    report.add("retry_asked", "429 and 503 with Retry-After (the service asked for a retry)",
               [sum(tally.retry_asked.values())])
    report.add("persisted_share", "records that said persisted: true",
               [100 * len(claimed) / max(1, len(tally.records))], " %")
    by_status = ", ".join(f"{k}: {v}" for k, v in sorted(tally.statuses.items()))
    report.notes.append(f"{total} answers in {elapsed:.1f} s: {by_status}; succeeded {tally.succeeded}, "
                        f"planted 422s {tally.expected}, 429/503 with Retry-After {dict(tally.retry_asked)}")
    for kind, times in sorted(tally.by_kind.items()):
        times.sort()
        report.notes.append(f"{kind}: {len(times)} answers, p50 {percentile(times, 0.5) * 1000:.0f} ms, "
                            f"p99 {percentile(times, 0.99) * 1000:.0f} ms, max {times[-1] * 1000:.0f} ms")
    for line in restarts:
        report.notes.append(line)
    for what, items in (("failed run", tally.failed_runs), ("unexpected", tally.unexpected),
                        ("lost", lost_in_redis), ("unreadable", unreadable)):
        for item in sorted(set(items))[:5]:
            report.notes.append(f"{what}: {item}")
    report.emit(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
