"""``nsx shapes …``: generate scenes and train the pack's networks.

``app/cli.py`` mounts this with ``add_parser(subparsers)``; ``python -m modules.shapes.cli`` runs it alone.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


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


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``shapes`` command group to an argparse sub-parser set."""
    from . import WEIGHTS  # not from .train: building the parser must not import torch

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
    return shapes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="nsx")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.fn(args))


if __name__ == "__main__":
    sys.exit(main())
