"""How long a program takes to parse and compile: cold (text never seen) and memoized.

    python bench/dsl.py [--iterations N] [--repeats R] [--profile] [--quick] [--json PATH]

Prints medians in milliseconds, each figure the median (and min–max) of the repeats' medians. Cold
means a new program text every iteration (one string literal changes), so compile_cached cannot hit;
the Lark parser itself is built once before timing, as a server builds it once at start-up.
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

from bench.common import Report, options
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
    ap = options(argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter))
    ap.add_argument("--iterations", type=int, default=None, help="per repeat (default 3000; --quick 600)")
    ap.add_argument("--repeats", type=int, default=3, help="each figure is the median of the repeats' medians")
    ap.add_argument("--profile", action="store_true", help="also print where cold compilation spends its time")
    args = ap.parse_args()
    n = args.iterations or (600 if args.quick else 3000)

    catalog = declared_catalog(*CORE)
    assert len(parse(program(0)).statements) == 10
    # Build the parser, import everything, and warm the allocator, outside the timings.
    for i in range(200):
        compile_program(program(-1 - i), catalog)

    def repeat(r: int) -> tuple[float, float, float, float]:
        # Cold texts are numbered apart from each other and from the memoized one, so nothing cold
        # was ever compiled before.
        base = 4 * n * r
        cold = median_ms(lambda i: compile_program(program(base + i), catalog), n)
        cold_parse = median_ms(lambda i: parse(program(base + n + i)), n)
        parsed = [parse(program(base + 2 * n + i)) for i in range(n)]
        cold_compile = median_ms(lambda i: compile_program(parsed[i], catalog), n)
        text = program(-10**6 - r)
        compile_cached(text, catalog)
        memo = median_ms(lambda i: compile_cached(text, catalog), n)
        return cold, cold_parse, cold_compile, memo

    cold, cold_parse, cold_compile, memo = (list(column) for column in zip(*map(repeat, range(args.repeats))))

    print(f"python {platform.python_version()}, lark {lark.__version__}, {platform.machine()}, "
          f"{args.repeats} repeats of {n} iterations; each repeat's median")
    report = Report("dsl", config={"statements": 10, "iterations": n, "repeats": args.repeats,
                                   "lark": lark.__version__})
    report.add("cold_ms", "parse+compile of a 10-statement program, cold", cold, " ms", "<= 1")
    report.add("parse_ms", "of which parse", cold_parse, " ms")
    report.add("compile_ms", "of which compile", cold_compile, " ms")
    report.add("memoized_us", "parse+compile, memoized (compile_cached)", [v * 1000 for v in memo], " µs")
    report.emit(args)

    if args.profile:
        profiler = cProfile.Profile()
        profiler.enable()
        for i in range(n):
            compile_program(program(4 * n * args.repeats + i), catalog)
        profiler.disable()
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(20)
        print(out.getvalue())


if __name__ == "__main__":
    main()
