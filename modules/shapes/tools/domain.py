"""How LOC's shapes-world check (``modules.shapes.domain``) separates the world from photos, measured.

    .venv/bin/python -m modules.shapes.tools.domain [--seeds 0,1,2] [--base 300] [--other 100] [--weights DIR]
                                                    [--json FILE]

Held-out scenes come from the question bench's own world seeds and conditions (``seeds.bench_seed``,
``bench.CONDITIONS``): ``--base`` scenes of the 256 px set and ``--other`` of each harder one, per
seed. Photos are the real images that ship inside packages the tests install (scikit-image's
``skimage.data``; scikit-learn's and matplotlib's sample images where those are installed), each
whole, resized to 256×256, centre-cropped, in quarters and in six random square crops. The
check must accept every scene and reject every photo; the table gives each piece of evidence's range
per group, so the margin to every limit can be read off.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import fields
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
from PIL import Image

from .. import Loc
from ..domain import LIMITS, Evidence, Verdict
from .bench import CONDITIONS
from .seeds import CONDITION_STRIDE, bench_seed
from .world import render_scene

__all__ = ["Case", "measure", "photo_cases", "photos", "scene_cases"]

Case = tuple[str, str, Image.Image]  # group, name, image

SKIMAGE_PHOTOS = ("astronaut", "coffee", "chelsea", "camera", "rocket", "immunohistochemistry", "hubble_deep_field",
                  "cat", "brick", "grass", "gravel", "moon", "page", "text", "retina", "clock", "coins", "colorwheel",
                  "logo", "microaneurysms", "cell")


def scene_cases(seeds: Sequence[int], base: int, other: int) -> Iterator[Case]:
    """The bench's held-out scenes: ``base`` of its 256 px set and ``other`` of each harder one, per seed."""
    for seed in seeds:
        for ci, cond in enumerate(CONDITIONS):
            for i in range(base if cond.name == "base" else other):
                yield cond.name, f"seed {seed} scene {i}", render_scene(bench_seed(seed), ci * CONDITION_STRIDE + i,
                                                                        cond.world).pil()


def _rgb(a: np.ndarray[Any, Any]) -> Image.Image:
    if a.dtype == bool:
        a = a.astype(np.uint8) * 255
    elif a.dtype != np.uint8:
        a = (np.clip(a, 0, 1) * 255).astype(np.uint8)
    return Image.fromarray(a).convert("RGB")


def photos() -> dict[str, Image.Image]:
    """Every real photo that ships inside an installed package, by name."""
    out: dict[str, Image.Image] = {}
    sd: ModuleType | None
    try:
        import skimage.data as sd
    except ImportError:
        sd = None
    if sd is not None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for name in SKIMAGE_PHOTOS:
                try:
                    out[f"skimage {name}"] = _rgb(getattr(sd, name)())
                except Exception:  # noqa: BLE001 - a photo this version of scikit-image lacks or must download
                    continue
    try:
        from sklearn.datasets import load_sample_image
    except ImportError:
        pass
    else:
        for name in ("china.jpg", "flower.jpg"):
            out[f"sklearn {name}"] = Image.fromarray(load_sample_image(name)).convert("RGB")
    try:
        from matplotlib import cbook
    except ImportError:
        pass
    else:
        out["matplotlib grace_hopper.jpg"] = Image.open(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)
                                                        ).convert("RGB")
    return out


def variants(im: Image.Image, rng: np.random.Generator, crops: int = 6) -> Iterator[tuple[str, Image.Image]]:
    """A photo whole, resized to 256×256, centre-cropped square, its four quarters and ``crops``
    random square crops (64 px up to its short side)."""
    W, H = im.size
    s = min(W, H)
    yield "whole", im
    yield "256x256", im.resize((256, 256), Image.Resampling.BILINEAR)
    yield "centre", im.crop(((W - s) // 2, (H - s) // 2, (W - s) // 2 + s, (H - s) // 2 + s))
    for q, (qx, qy) in enumerate(((0, 0), (1, 0), (0, 1), (1, 1))):
        yield f"quarter {q}", im.crop((qx * W // 2, qy * H // 2, (qx + 1) * W // 2, (qy + 1) * H // 2))
    for k in range(crops):
        c = int(rng.integers(min(64, s), s + 1))
        x, y = int(rng.integers(0, W - c + 1)), int(rng.integers(0, H - c + 1))
        yield f"crop {k} ({x},{y} {c}px)", im.crop((x, y, x + c, y + c))


def photo_cases(seed: int = 0, crops: int = 6) -> Iterator[Case]:
    rng = np.random.default_rng(seed)
    for name, im in photos().items():
        for v, out in variants(im, rng, crops):
            yield name, v, out


def measure(loc: Loc, cases: Iterator[Case], batch: int = 16) -> list[tuple[str, str, Verdict]]:
    """Each case's verdict, the images examined ``batch`` at a time as LOC's batches are."""
    out: list[tuple[str, str, Verdict]] = []
    chunk: list[Case] = []

    def flush() -> None:
        for (g, n, _), v in zip(chunk, loc.examine([c[2] for c in chunk])):
            out.append((g, n, v))
        chunk.clear()

    for case in cases:
        chunk.append(case)
        if len(chunk) == batch:
            flush()
    if chunk:
        flush()
    return out


FIELDS = [f.name for f in fields(Evidence)]


Row = dict[str, Any]


def table(rows: list[tuple[str, str, Verdict]]) -> list[Row]:
    groups: dict[str, list[Verdict]] = {}
    for g, _, v in rows:
        groups.setdefault(g, []).append(v)
    out = []
    for g, vs in groups.items():
        ev = [v.evidence for v in vs if v.evidence is not None]
        out.append({"group": g, "images": len(vs), "rejected": sum(not v.ok for v in vs),
                    **{f: (min(float(getattr(e, f)) for e in ev), max(float(getattr(e, f)) for e in ev))
                       for f in FIELDS}})
    return out


def print_table(t: list[Row]) -> None:
    print(f"{'group':<32} {'images':>6} {'reject':>6} " + " ".join(f"{f:>15}" for f in FIELDS))
    for r in t:
        cells = []
        for f in FIELDS:
            lo, hi = r[f]
            cells.append(f"{lo:>7.3g}-{hi:<7.3g}" if f != "objects" else f"{int(lo):>7d}-{int(hi):<7d}")
        print(f"{r['group']:<32} {r['images']:>6} {r['rejected']:>6} " + " ".join(cells))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m modules.shapes.tools.domain", description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", default="0,1,2", help="bench seeds whose held-out scenes are measured (default 0,1,2)")
    ap.add_argument("--base", type=int, default=300, help="256 px scenes per seed (default 300)")
    ap.add_argument("--other", type=int, default=100, help="scenes of each harder condition per seed (default 100)")
    ap.add_argument("--json", default=None, metavar="FILE", help="also write every image's evidence here")
    ap.add_argument("--weights", default=None, metavar="DIR", help="weights directory (default: the pack's own)")
    args = ap.parse_args(argv)
    loc = Loc(Path(args.weights)) if args.weights else Loc()
    loc.load("cpu")
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    scenes = measure(loc, scene_cases(seeds, args.base, args.other))
    pics = measure(loc, photo_cases())
    print(f"limits: {LIMITS}")
    print_table(table(scenes) + table(pics))
    wrong = [(g, n, v.reasons) for g, n, v in scenes if not v.ok] + [(g, n, ()) for g, n, v in pics if v.ok]
    for g, n, reasons in wrong:
        print(f"WRONG: {g} {n}: " + ("; ".join(reasons) if reasons else "accepted"))
    print(f"{len(scenes)} scenes, {sum(not v.ok for _, _, v in scenes)} rejected; "
          f"{len(pics)} photos and crops, {sum(v.ok for _, _, v in pics)} accepted")
    if args.json:
        doc = [{"group": g, "name": n, "evidence": v.evidence.to_json() if v.evidence else None,
                "reasons": list(v.reasons)}
               for g, n, v in scenes + pics]
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(doc, f)
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
