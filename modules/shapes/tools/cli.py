"""The shapes pack's commands: ``nsx shapes generate|train``, ``nsx import-clevr`` and
``nsx bench shapes``.

``nsx`` finds them through the ``nsx.commands`` entry point (``add_commands``);
``python -m modules.shapes.tools.cli`` runs them alone, all but the bench, which runs programs
through the service and so needs the runner ``nsx`` hands its commands. Building the parsers
imports nothing heavy: each command imports what it needs when it runs.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from functools import partial
from pathlib import Path
from typing import Any

from modules.base import Pack
from modules.commands import Commands, OpenRunner, Runner

from ..files import WEIGHTS
from .programs import STYLES


def add_commands(commands: Commands) -> None:
    """The ``nsx.commands`` entry point: ``shapes``, ``import-clevr`` and ``bench shapes``."""
    add_shapes(commands.subparsers)
    add_import_clevr(commands.subparsers)
    add_bench(commands.bench, commands.open_runner)


# ----------------------------------------------------------------------------- nsx shapes


def cmd_generate(args: argparse.Namespace) -> int:
    from .world import WorldConfig, generate

    cfg = WorldConfig(size=args.size, min_objects=args.min_objects, max_objects=args.max_objects,
                      min_visible=args.min_visible)
    if not 1 <= cfg.min_objects <= cfg.max_objects:
        raise SystemExit("nsx: need 1 <= --min-objects <= --max-objects")
    generate(args.n, args.seed, Path(args.out), cfg, progress=not args.quiet)
    if not args.quiet:
        print(f"wrote {args.n} scenes to {args.out}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from .train import TrainConfig, train

    cfg = TrainConfig()
    for name in ("seed", "scenes", "heldout", "minutes", "det_steps", "attr_steps", "threads", "precision"):
        if getattr(args, name) is not None:
            setattr(cfg, name, getattr(args, name))
    report = train(cfg, Path(args.out))
    held = report["heldout"]
    summary: dict[str, Any] = {
        "time_s": report["time_s"]["total"],
        "detector": {k: round(v, 4) for k, v in held["detector"].items() if k in ("precision", "recall", "mean_iou")},
        "attributes": {k: round(v, 4) for k, v in held["attributes_on_detections"].items()},
        "weights_bytes": report["weights_bytes"],
    }
    print(json.dumps(summary, indent=1))
    return 0


def add_shapes(subparsers: Any) -> None:
    """``nsx shapes generate|train``."""
    shapes = subparsers.add_parser("shapes", help="the shapes world: generate scenes, train its networks")
    sub = shapes.add_subparsers(dest="shapes_command", required=True)

    g = sub.add_parser("generate", help="render scenes with their ground truth (PNG image, mask PNG, JSON)")
    g.add_argument("--n", type=int, default=100, help="how many scenes (default 100)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--out", required=True, help="directory to write into")
    g.add_argument("--size", type=int, default=256, help="image side in pixels (default 256)")
    g.add_argument("--min-objects", type=int, default=3)
    g.add_argument("--max-objects", type=int, default=10)
    g.add_argument("--min-visible", type=float, default=0.7, help="least visible share of every object (default 0.7)")
    g.add_argument("-q", "--quiet", action="store_true")
    g.set_defaults(fn=cmd_generate)

    t = sub.add_parser("train", help="train the detector and attribute classifier on CPU, write weights + report")
    t.add_argument("--out", default=str(WEIGHTS), help="weights directory (default: the pack's own)")
    t.add_argument("--seed", type=int, default=None, help="default 0")
    t.add_argument("--scenes", type=int, default=None, help="training scenes rendered into memory (default 5000)")
    t.add_argument("--heldout", type=int, default=None, help="held-out scenes scored in the report (default 300)")
    t.add_argument("--minutes", type=float, default=None,
                   help="time budget (default 20); past it, training ends its schedule early")
    t.add_argument("--det-steps", type=int, default=None, help="detector steps (default 6000)")
    t.add_argument("--attr-steps", type=int, default=None, help="attribute classifier steps (default 3000)")
    t.add_argument("--threads", type=int, default=None, help="most intra-op threads (default 2)")
    t.add_argument("--precision", choices=("auto", "bf16", "fp32"), default=None,
                   help="bf16 autocast where the CPU has it in hardware (auto, the default), or always / never")
    t.set_defaults(fn=cmd_train)


# ----------------------------------------------------------------------------- nsx import-clevr


def cmd_import_clevr(args: argparse.Namespace) -> int:
    from .clevr import cmd_import_clevr as run

    return run(args)


def add_import_clevr(subparsers: Any) -> None:
    """``nsx import-clevr FILE [--out DIR]``."""
    p = subparsers.add_parser(
        "import-clevr", help="convert CLEVR questions (program format) into nsx programs for the shapes pack",
        description="Convert a CLEVR questions JSON into nsx programs. CLEVR's words are mapped to the shapes "
                    "world's: sphere→circle, cube→square, cylinder→triangle, rubber→solid, metal→striped, "
                    "front→below, behind→above. Exits 1 if any question could not be converted.")
    p.add_argument("file", help="CLEVR questions JSON ({'questions': [{question, program, answer, …}]})")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="write one .nsx file per question and questions.json here (default: print the programs)")
    p.add_argument("--style", choices=STYLES, default="nested", help="program style (default nested)")
    p.add_argument("--limit", type=int, default=None, help="convert only the first N questions")
    p.add_argument("--scenes", default=None, metavar="FILE",
                   help="CLEVR scenes JSON: run each converted program symbolically over its scene's annotation "
                        "and report whether it gives CLEVR's answer")
    p.set_defaults(fn=cmd_import_clevr)


# ----------------------------------------------------------------------------- nsx bench shapes


def cmd_bench(args: argparse.Namespace, open_runner: OpenRunner) -> int:
    from .bench import cmd_bench_shapes

    return cmd_bench_shapes(args, open_runner)


def add_bench(bench: Any, open_runner: OpenRunner) -> None:
    """``nsx bench shapes``, running its programs with ``open_runner``."""
    p = bench.add_parser("shapes", help="CLEVR-style question answering on held-out shapes scenes",
                         description="Answer accuracy (overall, per family), detector precision/recall at IoU 0.5, "
                                     "attribute accuracy, a harder-scenes table and the cause of every miss.")
    p.add_argument("--questions", type=int, default=1000, help="questions on the held-out set (default 1000)")
    p.add_argument("--seed", type=int, default=0, help="picks the held-out scenes and questions (default 0)")
    p.add_argument("--per-scene", type=int, default=5, help="most questions per scene (default 5)")
    p.add_argument("--hard-questions", type=int, default=200,
                   help="questions on each harder set: crowded, overlap, 192px, 128px (default 200; 0 skips)")
    p.add_argument("--conditions", default=None, help="which harder sets, comma-separated (default all)")
    p.add_argument("--weights", default=None, metavar="DIR", help="weights directory (default: the pack's own)")
    p.add_argument("--device", default=None, help="auto | cpu | cuda (default NSX_DEVICE or auto)")
    p.add_argument("--concurrency", type=int, default=8, help="scenes in flight at once (default 8)")
    p.add_argument("--oracle", action="store_true",
                   help="perfect perception (LOC reads ground truth): checks everything but the networks; "
                        "anything under 100%% is a bug")
    p.add_argument("--json", action="store_true", help="print the report as JSON instead of tables")
    p.add_argument("--out", default=None, metavar="FILE", help="also write the JSON report to FILE")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(fn=partial(cmd_bench, open_runner=open_runner))


# ----------------------------------------------------------------------------- alone


def no_runner(packs: Sequence[Pack], *, device: str = "auto", store_mb: int = 256
              ) -> AbstractAsyncContextManager[Runner]:
    """The runner of the pack's commands run alone: there is none."""
    raise SystemExit("nsx: this command runs programs through the service; run it as `nsx …`")


def main(argv: list[str] | None = None, open_runner: OpenRunner = no_runner) -> int:
    """The pack's commands alone (``nsx``'s arguments), with ``open_runner`` for the bench."""
    parser = argparse.ArgumentParser(prog="nsx", description="The shapes pack's commands.")
    sub = parser.add_subparsers(dest="command", required=True)
    bench = sub.add_parser("bench", help="benchmarks").add_subparsers(dest="bench", required=True)
    add_commands(Commands(sub, bench, open_runner))
    args = parser.parse_args(argv)
    return int(args.fn(args))


if __name__ == "__main__":
    sys.exit(main())
