"""Overhead vs the limit: a 6-step shapes program through the HTTP API, cache off, one client, against
the same module forward passes called directly in one process.

    .venv/bin/python bench/overhead.py [--repeats 60] [--quick] [--json PATH] [--profile OUT --seconds 15]

The server is a real ``nsx serve`` subprocess (packs core and shapes, the in-memory store); the
client (httpx, TCP_NODELAY) posts ``sha256:`` references to scenes uploaded first. The direct side
loads the same packs here and calls ``module.forward([args])`` for each step in plan order, with the
inputs each step gets, on images decoded before timing: what no service can go below. The two are
interleaved (alternating which goes first), after a warm-up of both, and every pair gives a ratio;
the answers of the two are compared scene by scene. ``--profile`` also records the server with
py-spy (raw format) while the client sends nothing but cache-off runs for ``--seconds``.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

# Runnable as a plain script from a checkout, without installing the package.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import SHAPES_PROGRAM, Report, client, options, post_run, server, shapes_scenes, upload
from modules.base import FunctionModule, Module
from modules.packs import build_catalog, load_packs
from modules.values import ImageValue
from program_dsl import Const, Input, Plan, Source, compile_program

PACKS = ("core", "shapes")


class Direct:
    """A plan's forward passes in this process, nothing else: no store, no keys, no records."""

    def __init__(self, program: str, packs: Sequence[str] = PACKS) -> None:
        loaded = load_packs(list(packs))
        self.plan: Plan = compile_program(program, build_catalog(loaded, {}), None)
        by_name = {f"{p.name}.{m.name}": m for p in loaded for m in p.modules}
        self.modules: list[Module] = [by_name[f"{s.pack}.{s.module}"] for s in self.plan.steps]
        for m in dict.fromkeys(self.modules):
            m.load("cpu")
            if not isinstance(m, FunctionModule):
                m.warmup()

    def run(self, images: Mapping[str, ImageValue]) -> Any:
        values: dict[str, Any] = {}

        def resolve(src: Source) -> Any:
            if isinstance(src, Const):
                return src.value
            if isinstance(src, Input):
                return images[src.name]
            return values[src.step]

        for step, module in zip(self.plan.steps, self.modules):
            out = module.forward([{n: resolve(a) for n, a in step.args.items()}])[0]
            if isinstance(out, BaseException):
                raise out
            values[step.id] = out
        return resolve(self.plan.result)


def answer(record: Mapping[str, Any]) -> Any:
    result = record.get("result") or {}
    return result.get("value")


def profile(pid: int, out: str, seconds: float, send: Any) -> None:
    """py-spy on the server (every thread, raw stacks) while ``send()`` runs for ``seconds``."""
    exe = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    spy = subprocess.Popen([exe, "record", "--pid", str(pid), "--duration", str(int(seconds)), "--rate", "250",
                            "--format", "raw", "--threads", "--nonblocking", "--output", out])
    time.sleep(1.0)  # py-spy attaches before the first sample
    end = time.perf_counter() + seconds
    n = 0
    while time.perf_counter() < end and spy.poll() is None:
        send(n)
        n += 1
    if spy.wait(timeout=60) != 0:
        raise SystemExit(f"py-spy exited with {spy.returncode}")
    print(f"profile: {n} cache-off runs while recording; raw stacks in {out}")


def main() -> None:
    ap = options(argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter))
    ap.add_argument("--repeats", type=int, default=None, help="timed pairs (default 60; --quick 20)")
    ap.add_argument("--scenes", type=int, default=8, help="distinct scenes, used in turn")
    ap.add_argument("--profile", metavar="OUT", help="also record the server with py-spy into OUT (raw)")
    ap.add_argument("--seconds", type=float, default=15.0, help="how long --profile records")
    args = ap.parse_args()
    repeats = args.repeats or (20 if args.quick else 60)

    scenes = shapes_scenes(args.scenes)
    images = [{"IMAGE": ImageValue.from_bytes(d)} for d in scenes]
    report = Report("overhead", config={"program_steps": 6, "repeats": repeats, "scenes": len(scenes),
                                        "packs": ",".join(PACKS), "store": "memory", "cache": False, "clients": 1})
    with server({"NSX_PACKS": ",".join(PACKS)}) as srv, client(srv.base) as http:
        print(f"server ready in {srv.ready_s:.1f} s; loading the same modules here", flush=True)
        refs = [{"IMAGE": upload(http, d)} for d in scenes]
        direct = Direct(SHAPES_PROGRAM)
        import torch

        report.config["torch_threads_client"] = torch.get_num_threads()
        for _ in range(2):  # warm-up, and the same answers both ways
            for ref, img in zip(refs, images):
                got, want = answer(post_run(http, SHAPES_PROGRAM, ref, cache=False)), direct.run(img)
                if got != want:
                    raise SystemExit(f"the server answered {got!r} where the direct forwards give {want!r}")
        http_ms: list[float] = []
        direct_ms: list[float] = []
        server_ms: list[float] = []
        ratio: list[float] = []
        for i in range(repeats):
            k = i % len(scenes)
            pair: dict[str, float] = {}
            for side in (("http", "direct") if i % 2 == 0 else ("direct", "http")):
                t0 = time.perf_counter()
                if side == "http":
                    record = post_run(http, SHAPES_PROGRAM, refs[k], cache=False)
                else:
                    direct.run(images[k])
                pair[side] = (time.perf_counter() - t0) * 1000
            http_ms.append(pair["http"])
            direct_ms.append(pair["direct"])
            server_ms.append(float(record["timings"]["total_ms"]))
            ratio.append(pair["http"] / pair["direct"])
        if args.profile:
            profile(srv.pid, args.profile, args.seconds,
                    lambda n: post_run(http, SHAPES_PROGRAM, refs[n % len(refs)], cache=False))

    report.add("ratio", "HTTP end-to-end ÷ direct forwards (6-step shapes program, cache off, 1 client)", ratio, "×",
               "<= 1.10")
    report.add("http_ms", "HTTP end-to-end per run", http_ms, " ms")
    report.add("direct_ms", "direct forwards per run", direct_ms, " ms")
    report.add("added_ms", "added by the service per run (HTTP − direct)",
               [h - d for h, d in zip(http_ms, direct_ms)], " ms")
    report.add("server_total_ms", "the run's total_ms in its record (server side, without HTTP)", server_ms, " ms")
    report.notes.append("ratio: per interleaved pair; medians of each column need not divide to the ratio's median")
    report.emit(args)


if __name__ == "__main__":
    main()
