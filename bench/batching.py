"""Throughput of a batchable neural module through the HTTP API, at 1, 4, 16 and 64 concurrent
clients, with dynamic batching on and off, as ratios to the 1-client figure of the same server.

    .venv/bin/python bench/batching.py [--seconds 6] [--clients 1,4,16,64] [--module PROBE]

Each configuration gets its own server process (uvicorn, one worker, the in-memory store); clients
are asyncio + httpx in this process. Every request runs `x = <module>(image=IMAGE)` on one of 64
distinct uploaded images with the cache off, so each request costs a real forward pass. The module
is the shapes-world LOC (detector + attribute classifier, on 256×256 rendered scenes) when that pack
has its weights, otherwise PROBE, a real conv net (about 0.3 M parameters, random weights) on 64×64
inputs.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import socket
import subprocess
import sys
import time

import httpx
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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
    if have_weights():  # the trained detector when there is one; PROBE otherwise
        packs += [p for p in load_packs(["shapes"]) if p.modules]
    app = create_app(Settings(batching=batching, max_queue=4096), packs=packs)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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


async def measure(base: str, module: str, refs: list[str], clients: int, seconds: float) -> tuple[float, float]:
    """Requests per second and mean batch size over a timed window, after a short warm-up."""
    done = 0
    stop_at = 0.0
    counting = False

    async def client(i: int, http: httpx.AsyncClient) -> None:
        nonlocal done
        k = i
        while time.perf_counter() < stop_at:
            body = {"program": f"x = {module}(image=IMAGE)", "images": {"IMAGE": refs[k % len(refs)]},
                    "options": {"cache": False}}
            r = await http.post("/v1/runs", json=body)
            if r.status_code != 200 or r.json()["status"] != "succeeded":
                raise RuntimeError(r.text[:300])
            if counting:
                done += 1
            k += clients

    async def batches(http: httpx.AsyncClient) -> tuple[float, float]:
        text = (await http.get("/metrics")).text
        calls = sum(float(line.split()[-1]) for line in text.splitlines()
                    if line.startswith(f'nsx_module_batched_calls_total{{module="{module}"}}'))
        execs = sum(float(line.split()[-1]) for line in text.splitlines()
                    if line.startswith(f'nsx_module_batches_total{{module="{module}"}}'))
        return calls, execs

    limits = httpx.Limits(max_connections=clients + 4, max_keepalive_connections=clients + 4)
    # Without TCP_NODELAY a request's body waits for the server's delayed ACK of its headers
    # (about 40 ms on Linux), which would measure the TCP stack instead of the service.
    transport = httpx.AsyncHTTPTransport(limits=limits,
                                         socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)])
    async with httpx.AsyncClient(base_url=base, timeout=120, transport=transport) as http:
        warm = 1.0
        stop_at = time.perf_counter() + warm + seconds
        tasks = [asyncio.create_task(client(i, http)) for i in range(clients)]
        await asyncio.sleep(warm)
        c0, e0 = await batches(http)
        counting, t0 = True, time.perf_counter()
        await asyncio.sleep(seconds)
        counting, elapsed = False, time.perf_counter() - t0
        c1, e1 = await batches(http)
        await asyncio.gather(*tasks)
    return done / elapsed, (c1 - c0) / max(1.0, e1 - e0)


def run_config(batching: bool, levels: list[int], seconds: float,
               want: str = "auto") -> tuple[str, dict[int, tuple[float, float]]]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, __file__, "--serve", str(port), "--batching", "on" if batching else "off"],
                            cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT})
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("benchmark server failed to start")
            time.sleep(0.2)
        mods = {m["name"]: m for m in httpx.get(f"{base}/v1/modules").json()["modules"]}
        module = want if want != "auto" else ("LOC" if mods.get("LOC", {}).get("state") == "ready" else "PROBE")
        refs = [httpx.post(f"{base}/v1/images", content=data).json()["sha256"] for data in images(64, module)]
        results = {n: asyncio.run(measure(base, module, refs, n, seconds)) for n in levels}
        return module, results
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=6.0, help="timed window per level")
    ap.add_argument("--clients", default="1,4,16,64")
    ap.add_argument("--module", choices=("auto", "LOC", "PROBE"), default="auto",
                    help="auto: LOC when the shapes weights are present, else PROBE")
    ap.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--batching", default="on", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.serve:
        serve(a.serve, a.batching == "on")
        return
    levels = [int(x) for x in a.clients.split(",")]
    print(f"{os.cpu_count()} CPUs; {a.seconds:g} s per level; throughput in runs/s through POST /v1/runs")
    for batching in (True, False):
        module, res = run_config(batching, levels, a.seconds, a.module)
        base_rps = res[levels[0]][0]
        print(f"\nbatching {'on' if batching else 'off'} (module {module}):")
        print(f"{'clients':>8} {'runs/s':>9} {'× 1-client':>11} {'mean batch':>11}")
        for n in levels:
            rps, mean_batch = res[n]
            print(f"{n:>8} {rps:>9.1f} {rps / base_rps:>10.2f}x {mean_batch:>11.1f}")


if __name__ == "__main__":
    main()
