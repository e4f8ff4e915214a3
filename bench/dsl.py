"""How long a program takes to parse and compile: cold (text never seen) and memoized.

    python bench/dsl.py [--iterations N] [--profile]

Prints medians in milliseconds and their ratio, measured in one run on this machine. Cold means a
new program text every iteration (one string literal changes), so compile_cached cannot hit; the
Lark parser itself is built once before timing, as a server builds it once at start-up.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import platform
import pstats
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

# Runnable as a plain script from a checkout, without installing the package.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import lark

from modules.catalog import declared_catalog
from modules.core import SIGNATURES as CORE
from program_dsl import compile_cached, compile_program, parse

# Ten statements in VisProg's style: detection, crops, counting, VQA, EVAL, SORT, RESULT.
PROGRAM = """\
BOX0=LOC(image=IMAGE,object='{thing}')
BOX1=LOC(image=IMAGE,object='table')
IMAGE0=CROP_ABOVE(image=IMAGE,box=BOX1)
BOX2=LOC(image=IMAGE0,object='cup')
ANSWER0=COUNT(box=BOX0)
ANSWER1=COUNT(box=BOX2)
ANSWER2=VQA(image=IMAGE0,question='What color is the cup?')
BOX3=SORT(box=BOX2,by='area',descending=True)
ANSWER3=EVAL(expr="'{{ANSWER2}}' if {{ANSWER0}} > {{ANSWER1}} else 'none'")
FINAL_RESULT=RESULT(var=ANSWER3)
"""


def program(i: int) -> str:
    return PROGRAM.format(thing=f"muffin {i}")


def median_ms(run: Callable[[int], object], iterations: int) -> float:
    times = []
    for i in range(iterations):
        start = time.perf_counter()
        run(i)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--iterations", type=int, default=3000)
    ap.add_argument("--profile", action="store_true", help="also print where cold compilation spends its time")
    args = ap.parse_args()
    n = args.iterations

    catalog = declared_catalog(*CORE)
    assert len(parse(program(0)).statements) == 10
    # Build the parser, import everything, and warm the allocator, outside the timings.
    for i in range(200):
        compile_program(program(-1 - i), catalog)

    # Cold texts are numbered apart from the memoized one, so nothing cold was ever compiled before.
    cold = median_ms(lambda i: compile_program(program(i), catalog), n)
    cold_parse = median_ms(lambda i: parse(program(n + i)), n)
    parsed = [parse(program(2 * n + i)) for i in range(n)]
    cold_compile = median_ms(lambda i: compile_program(parsed[i], catalog), n)
    text = program(-10**6)
    compile_cached(text, catalog)
    memo = median_ms(lambda i: compile_cached(text, catalog), n)

    print(f"python {platform.python_version()}, lark {lark.__version__}, {platform.machine()}, {n} iterations")
    print("parse+compile of a 10-statement program, median:")
    print(f"  cold      {cold:8.3f} ms   (parse {cold_parse:.3f} ms + compile {cold_compile:.3f} ms)")
    print(f"  memoized  {memo:8.4f} ms")
    print(f"  cold / memoized = {cold / memo:,.0f}x;  cold goal <= 1 ms: {'met' if cold <= 1 else 'MISSED'}")

    if args.profile:
        profiler = cProfile.Profile()
        profiler.enable()
        for i in range(n):
            compile_program(program(3 * n + i), catalog)
        profiler.disable()
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(20)
        print(out.getvalue())


if __name__ == "__main__":
    main()
