"""Start-up: ``nsx serve`` from process start to the first 200 of ``/readyz``, its memory then, and
the wall time of ``nsx run`` on a program that uses only core modules.

    .venv/bin/python bench/startup.py [--repeats 5] [--quick] [--json PATH]

The server runs with every installed pack (no NSX_PACKS) and the in-memory store, as ``nsx serve``
does out of the box; ``/readyz`` is polled every 20 ms, and the server's resident memory (VmRSS) is
read as soon as it is ready. ``nsx run examples/regions.nsx --image examples/scene.png`` (REGION,
CROP_LEFTOF, UNION, COUNT and an expression) is timed from process start to exit, with every
installed pack enabled and, for comparison, with ``NSX_PACKS=core``. The three are interleaved.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

# Runnable as a plain script from a checkout, without installing the package.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import ROOT, Report, bench_env, nsx_command, options, server

PROGRAM = "examples/regions.nsx"
IMAGE = "examples/scene.png"
ANSWER = "two things"


def nsx_run(nsx: dict[str, str]) -> float:
    """Seconds from start to exit of ``nsx run`` on the core-only example, which must answer."""
    argv = [*nsx_command(), "run", PROGRAM, "--image", IMAGE]
    t0 = time.perf_counter()
    done = subprocess.run(argv, cwd=ROOT, env=bench_env(nsx), capture_output=True, text=True, timeout=600)
    s = time.perf_counter() - t0
    if done.returncode != 0 or ANSWER not in done.stdout:
        tail = "\n".join((done.stdout + done.stderr).splitlines()[-20:])
        raise SystemExit(f"nsx run {PROGRAM} exited with {done.returncode}, not answering {ANSWER!r}:\n{tail}")
    return s


def main() -> None:
    ap = options(argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter))
    ap.add_argument("--repeats", type=int, default=None, help="default 5; --quick 3")
    args = ap.parse_args()
    repeats = args.repeats or (3 if args.quick else 5)
    ready: list[float] = []
    rss: list[float] = []
    run_all: list[float] = []
    run_core: list[float] = []
    report = Report("startup", config={"repeats": repeats, "server": "nsx serve, every installed pack, memory store",
                                       "run_program": PROGRAM})
    for r in range(repeats):
        with server({}, poll_s=0.02) as srv:
            rss.append(srv.rss_mib())
            ready.append(srv.ready_s)
            if r == 0:
                import httpx

                body = httpx.get(f"{srv.base}/readyz", timeout=10).json()
                report.config["modules"] = sorted(body.get("modules", {}))
                failed = sorted(n for n, s in body.get("modules", {}).items() if s != "ready")
                if failed:
                    report.notes.append(f"modules not ready at /readyz 200: {', '.join(failed)}")
        run_all.append(nsx_run({}))
        run_core.append(nsx_run({"NSX_PACKS": "core"}))
        print(f"  repeat {r + 1}/{repeats}: ready {ready[-1]:.2f} s, {rss[-1]:.0f} MiB; nsx run {run_all[-1]:.2f} s "
              f"(core pack only {run_core[-1]:.2f} s)", flush=True)
    report.add("ready_s", "nsx serve start to first 200 of /readyz (every installed pack)", ready, " s", "<= 3")
    report.add("rss_mib", "server resident memory at ready", rss, " MiB")
    report.add("run_core_program_s", "nsx run of a core-only program, every pack installed", run_all, " s", "<= 3")
    report.add("run_core_program_core_pack_s", "the same with NSX_PACKS=core", run_core, " s")
    report.emit(args)


if __name__ == "__main__":
    main()
