"""Perception alone, for comparing shapes weights: detector precision/recall at IoU 0.5 and attribute
accuracy on validation scenes that neither training nor ``nsx bench shapes`` draws
(``modules/shapes/tools/seeds.py``: VALIDATION_SEED).

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

from modules.shapes import nets
from modules.shapes.files import WEIGHTS, weight_files
from modules.shapes.tools.data import make_scenes
from modules.shapes.tools.seeds import VALIDATION_SEED
from modules.shapes.tools.train import evaluate
from modules.shapes.tools.world import WorldConfig


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("weights", nargs="*", default=[str(WEIGHTS)], help="weights directories (default: the pack's)")
    ap.add_argument("--scenes", type=int, default=500)
    args = ap.parse_args()
    torch.set_num_threads(2)
    scenes = make_scenes(VALIDATION_SEED, args.scenes, WorldConfig(), workers=2, desc="validation scenes")
    for w in args.weights:
        detector_file, attributes_file = weight_files(Path(w))
        m = evaluate(nets.load_detector(detector_file), nets.load_attribute_net(attributes_file), scenes)
        d = m["detector"]
        attrs = ", ".join(f"{a} {v:.2%}" for a, v in m["attributes_on_detections"].items())
        print(f"{w}: {m['objects']} objects in {m['scenes']} scenes; detector recall {d['recall']:.2%} "
              f"({d['fn']} missed), precision {d['precision']:.2%} ({d['fp']} spurious); on detections {attrs}; "
              f"scenes all right {m['scenes_all_correct']:.2%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
