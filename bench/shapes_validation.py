"""Perception alone, for comparing shapes weights: detector precision/recall at IoU 0.5 and attribute
accuracy on validation scenes that neither training nor ``nsx bench shapes`` draws (world seed 777).

    .venv/bin/python bench/shapes_validation.py [--scenes 500] [WEIGHTS_DIR ...]

Quicker than the question bench (no programs) and with more objects behind each figure, which is
what choosing between two trainings needs; the question bench stays the measure that counts.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from modules.shapes import WEIGHTS, nets  # noqa: E402
from modules.shapes.train import evaluate, make_scenes  # noqa: E402
from modules.shapes.world import WorldConfig  # noqa: E402

VALIDATION_SEED = 777


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("weights", nargs="*", default=[str(WEIGHTS)], help="weights directories (default: the pack's)")
    ap.add_argument("--scenes", type=int, default=500)
    args = ap.parse_args()
    torch.set_num_threads(2)
    scenes = make_scenes(VALIDATION_SEED, args.scenes, WorldConfig(), workers=2, desc="validation scenes")
    for w in args.weights:
        det = nets.load(Path(w) / "detector.safetensors")
        att = nets.load(Path(w) / "attributes.safetensors")
        m = evaluate(det, att, scenes)  # type: ignore[arg-type]
        d = m["detector"]
        attrs = ", ".join(f"{a} {v:.2%}" for a, v in m["attributes_on_detections"].items())
        print(f"{w}: {m['objects']} objects in {m['scenes']} scenes; detector recall {d['recall']:.2%} ({d['fn']} missed), "
              f"precision {d['precision']:.2%} ({d['fp']} spurious); on detections {attrs}; "
              f"scenes all right {m['scenes_all_correct']:.2%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
