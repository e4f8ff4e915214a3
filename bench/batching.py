"""Throughput of the batchable neural modules through the HTTP API, at 1, 4, 16 and 64 concurrent
clients, with dynamic batching on and off: the shapes LOC and PROBE, a small conv net.

    .venv/bin/python bench/batching.py [--seconds 6] [--max-seconds 30] [--repeats 3]
                                       [--clients 1,4,16,64] [--module both|LOC|PROBE] [--quick] [--json PATH]

Each configuration (batching on, off) gets its own server process (uvicorn, one worker, the
in-memory store, the core pack, PROBE and the shapes pack), left to go idle after start-up; clients
are asyncio tasks in this process, each on a bare keep-alive connection (``bench.common.Connection``,
TCP_NODELAY): through httpx's pool the client itself took a core at 64 clients. Every request runs
``x = <module>(image=IMAGE)`` on one of 64 distinct uploaded images with the cache off, so each
request costs a real forward pass. LOC is the shapes-world detector and attribute classifier on
256×256 rendered scenes (skipped without its weights); PROBE is a real conv net (about 0.3 M
parameters, random weights) on 64×64 inputs.

A level's clients run for a warm-up second, then for a window of at least ``--seconds``, lengthened
until the module has run 30 forward passes (read from ``/metrics``) or ``--max-seconds`` have
passed; a window that ends with fewer than 30 is named in the notes. The levels take turns
``--repeats`` times, so slow drift on a shared machine falls on every level alike; figures are
medians over the repeats, and the 64 ÷ 16 clients ratio is taken within each repeat.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import socket
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

# Runnable as a plain script from a checkout, without installing the package.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx
from PIL import Image

from bench.common import Connection, Report, client, options, server, upload
from bench.workload import metric, settle

MIN_BATCHES = 30


def serve(port: int, batching: bool) -> None:
    import uvicorn

    from app.main import create_app
    from app.settings import Settings
    from modules.base import Pack
    from modules.core import pack as core_pack
    from modules.demo import ConvProbe
    from modules.packs import load_packs
    from modules.shapes.files import have_weights

    packs = [core_pack(), Pack("demo", [ConvProbe()])]
    if have_weights():  # the trained detector when there is one; PROBE alone otherwise
        packs += [p for p in load_packs(["shapes"]) if p.modules]
    app = create_app(Settings(batching=batching, max_queue=4096), packs=packs)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


def images(n: int, module: str = "PROBE") -> list[bytes]:
    """Distinct inputs: rendered shapes scenes for LOC (what its detector was trained on), small
    coloured squares for PROBE."""
    out = []
    if module == "LOC":
        from modules.shapes.tools.world import render_scene

        for i in range(n):
            buf = io.BytesIO()
            render_scene(4242, i).pil().save(buf, format="PNG")
            out.append(buf.getvalue())
        return out
    for i in range(n):
        img = Image.new("RGB", (64, 64), ((i * 37) % 256, (i * 91) % 256, (i * 13) % 256))
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


@dataclass
class Window:
    runs_per_s: float
    mean_batch: float
    batches: float
    seconds: float


async def measure(base: str, module: str, refs: list[str], clients: int, seconds: float, max_seconds: float,
                  warm_s: float = 1.0) -> Window:
    """Runs per second and mean batch size over one window, after a warm-up."""
    done = 0
    running = True
    counting = False

    url = httpx.URL(base)
    bodies = [json.dumps({"program": f"x = {module}(image=IMAGE)", "images": {"IMAGE": ref},
                          "options": {"cache": False}}).encode() for ref in refs]

    async def one_client(i: int, http: httpx.AsyncClient) -> None:
        # The load goes through a bare keep-alive connection each (``Connection``): httpx's pool
        # itself saturated a core at 64 clients, and the client shares this machine's two.
        nonlocal done
        k = i
        conn = Connection(url.host, url.port or 80)
        try:
            while running:
                status, data = await conn.post("/v1/runs", bodies[k % len(bodies)])
                if status != 200 or json.loads(data)["status"] != "succeeded":
                    raise RuntimeError(data[:300].decode(errors="replace"))
                if counting:
                    done += 1
                k += clients
        finally:
            await conn.close()

    async def counters(http: httpx.AsyncClient) -> tuple[float, float]:
        text = (await http.get("/metrics")).text
        return (metric(text, "nsx_module_batched_calls_total", module=module),
                metric(text, "nsx_module_batches_total", module=module))

    limits = httpx.Limits(max_connections=clients + 4, max_keepalive_connections=clients + 4)
    # Without TCP_NODELAY a request's body waits for the server's delayed ACK of its headers
    # (about 40 ms on Linux), which would measure the TCP stack instead of the service.
    transport = httpx.AsyncHTTPTransport(limits=limits,
                                         socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)])
    async with httpx.AsyncClient(base_url=base, timeout=120, transport=transport) as http:
        tasks = [asyncio.create_task(one_client(i, http)) for i in range(clients)]
        try:
            await asyncio.sleep(warm_s)
            c0, e0 = await counters(http)
            counting, t0 = True, time.perf_counter()
            await asyncio.sleep(seconds)
            while True:
                c1, e1 = await counters(http)
                elapsed = time.perf_counter() - t0
                if e1 - e0 >= MIN_BATCHES or elapsed >= max_seconds:
                    break
                await asyncio.sleep(min(0.25, max_seconds - elapsed))
            counting = False
        finally:
            running = False
            await asyncio.gather(*tasks)
    return Window(done / elapsed, (c1 - c0) / max(1.0, e1 - e0), e1 - e0, elapsed)


@dataclass
class Results:
    """Windows by (module, batching on, clients), one per repeat."""

    windows: dict[tuple[str, bool, int], list[Window]] = field(default_factory=dict)

    def add(self, module: str, batching: bool, clients: int, w: Window) -> None:
        self.windows.setdefault((module, batching, clients), []).append(w)


def run_config(batching: bool, modules: list[str], levels: list[int], repeats: int, seconds: float,
               max_seconds: float, warm_s: float, results: Results) -> list[str]:
    """One server with batching on or off; every module at every level, ``repeats`` times. The
    modules the server could measure (LOC needs its weights)."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--serve", "{port}", "--batching",
           "on" if batching else "off"]
    with server(cmd=cmd) as srv:
        with client(srv.base) as http:
            ready = {m["name"] for m in http.get("/v1/modules").json()["modules"] if m.get("state") == "ready"}
            present = [m for m in modules if m in ready]
            refs = {m: [upload(http, data) for data in images(64, m)] for m in present}
        waited = settle(srv.pid)
        print(f"\nbatching {'on' if batching else 'off'}: server ready in {srv.ready_s:.1f} s, idle after "
              f"{waited:.1f} s more; modules {', '.join(present)}", flush=True)
        for module in present:
            for r in range(repeats):
                for n in levels:
                    w = asyncio.run(measure(srv.base, module, refs[module], n, seconds, max_seconds, warm_s))
                    results.add(module, batching, n, w)
                    print(f"  {module:<6} repeat {r + 1}/{repeats} {n:>3} clients: {w.runs_per_s:7.1f} runs/s, "
                          f"mean batch {w.mean_batch:5.1f}, {w.batches:.0f} batches in {w.seconds:.1f} s",
                          flush=True)
    return present


def main() -> None:
    ap = options(argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter))
    ap.add_argument("--seconds", type=float, default=None, help="shortest timed window per level (default 6; "
                    "--quick 1.5)")
    ap.add_argument("--max-seconds", type=float, default=None, help="longest window, when fewer than 30 batches "
                    "ran (default 30; --quick 3)")
    ap.add_argument("--repeats", type=int, default=None, help="windows per level (default 3; --quick 2)")
    ap.add_argument("--clients", default="1,4,16,64")
    ap.add_argument("--module", choices=("both", "LOC", "PROBE"), default="both",
                    help="both: LOC (when the shapes weights are present) and PROBE")
    ap.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--batching", default="on", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.serve:
        serve(a.serve, a.batching == "on")
        return
    seconds = a.seconds or (1.5 if a.quick else 6.0)
    max_seconds = max(seconds, a.max_seconds or (3.0 if a.quick else 30.0))
    repeats = max(2, a.repeats or (2 if a.quick else 3))
    warm_s = 0.5 if a.quick else 1.0
    levels = [int(x) for x in a.clients.split(",")]
    modules = ["LOC", "PROBE"] if a.module == "both" else [a.module]
    t0 = time.perf_counter()
    results = Results()
    present: list[str] = []
    for batching in (True, False):
        present = run_config(batching, modules, levels, repeats, seconds, max_seconds, warm_s, results)

    report = Report("batching", config={"levels": levels, "repeats": repeats, "min_window_s": seconds,
                                        "max_window_s": max_seconds, "min_batches": MIN_BATCHES,
                                        "modules": present, "images": 64, "cache": False, "store": "memory"})
    print("\nruns/s, median over repeats (× the same server's 1-client figure), mean batch")
    for module in present:
        for batching in (True, False):
            tag = "on" if batching else "off"
            print(f"{module} batching {tag}:")
            base = statistics.median(w.runs_per_s for w in results.windows[(module, batching, levels[0])])
            for n in levels:
                ws = results.windows[(module, batching, n)]
                f = report.add(f"{module.lower()}_{tag}_c{n}", f"{module}, batching {tag}, {n} clients",
                               [w.runs_per_s for w in ws], " runs/s")
                mean_batch = statistics.median(w.mean_batch for w in ws)
                print(f"  {n:>4} clients {f.median:8.1f} runs/s {f.median / base:6.2f}x  mean batch {mean_batch:5.1f}")
                if batching:
                    report.add(f"{module.lower()}_on_c{n}_batch", f"{module}, batching on, {n} clients: mean batch",
                               [w.mean_batch for w in ws])
                short = [w for w in ws if w.batches < MIN_BATCHES]
                if short:
                    report.notes.append(f"{module} batching {tag}, {n} clients: "
                                        + ", ".join(f"{w.batches:.0f} batches in {w.seconds:.1f} s" for w in short)
                                        + f" (fewer than {MIN_BATCHES}; --max-seconds lengthens the window)")
        if 16 in levels and 64 in levels:
            pairs = zip(results.windows[(module, True, 64)], results.windows[(module, True, 16)])
            ratios = [hi.runs_per_s / lo.runs_per_s for hi, lo in pairs if lo.runs_per_s > 0]
            if ratios:
                report.add(f"{module.lower()}_on_64_over_16",
                           f"{module}, batching on: 64 clients ÷ 16 clients, runs/s", ratios, "×", ">= 0.95")
    if "LOC" in modules and "LOC" not in present:
        report.notes.append("LOC not measured: the shapes weights are missing")
    report.notes.append(f"total {time.perf_counter() - t0:.0f} s")
    report.emit(a)


if __name__ == "__main__":
    main()
