"""The hf pack: open-vocabulary models through transformers adapters, weights from local folders.

Off unless configured: with ``NSX_HF_MODELS`` unset the pack offers nothing. Set, it names a folder
with one sub-folder per role (``weights``), and each configured role brings its modules:

| role | modules | model families |
| --- | --- | --- |
| ``loc`` | LOC | OWLv2, OWL-ViT (zero-shot detection) |
| ``clip`` | SELECT, CLASSIFY | CLIP (over object crops) |
| ``vqa`` | VQA | BLIP, BLIP-2 or ViLT question answering |
| ``caption`` | CAPTION | BLIP or BLIP-2 captioning |
| ``seg`` | SEG | Mask2Former or MaskFormer panoptic segmentation |
| ``depth`` | DEPTH, DEPTH_OF | DPT or Depth Anything |
| ``inpaint`` | REPLACE | Stable Diffusion inpainting (a diffusers pipeline folder; ``pip install 'nsx[generate]'``) |

A role whose folder is missing or wrong still brings its modules: they fail to load with a message
naming the role and what was expected, which ``/readyz`` and ``GET /v1/modules`` show. Nothing is
imported from transformers (or diffusers) before the pool loads a module.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from ..base import Module, Pack
from .weights import RoleWeights, configured_root, role_weights

# role → the adapter file whose ``modules(weights)`` makes its modules.
ROLES: dict[str, str] = {
    "loc": "detect", "clip": "clip", "vqa": "answer", "caption": "answer", "seg": "segment", "depth": "depth",
    "inpaint": "inpaint",
}


def _maker(role: str) -> Callable[[RoleWeights], list[Module]]:
    adapter = importlib.import_module(f"{__name__}.{ROLES[role]}")
    make: Callable[[RoleWeights], list[Module]] = getattr(adapter, f"{role}_modules")
    return make


def pack() -> Pack:
    root = configured_root()
    if root is None:
        return Pack("hf", [], doc="Open-vocabulary models (transformers); off: set NSX_HF_MODELS to a folder "
                                  "of weights, one sub-folder per role.")
    weights = role_weights(root, tuple(ROLES))
    modules = [m for role, w in weights.items() for m in _maker(role)(w)]
    return Pack("hf", modules, doc=f"Open-vocabulary models (transformers) from {root}: roles "
                                   f"{', '.join(sorted(weights)) or 'none found'}.")
