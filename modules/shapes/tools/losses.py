"""The detector's training losses (CenterNet's focal loss on centres, L1 on boxes and centre
vectors, BCE on the foreground) and the targets they compare with: training only, so apart from
the networks the service loads."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ..nets import FG, HEAT, OFF_X, SIZE_H, VEC_X, VEC_Y


def focal_loss(logits: Tensor, target: Tensor) -> Tensor:
    """CenterNet's penalty-reduced focal loss; ``target`` is 1 at centres and a Gaussian around them."""
    p = torch.sigmoid(logits).clamp(1e-4, 1 - 1e-4)
    pos = target.eq(1).float()
    neg = 1 - pos
    pos_loss = torch.log(p) * (1 - p) ** 2 * pos
    neg_loss = torch.log(1 - p) * p**2 * (1 - target) ** 4 * neg
    n = pos.sum().clamp(min=1)
    return -(pos_loss.sum() + neg_loss.sum()) / n


@dataclass
class DetectorTargets:
    """Training targets for a batch, at the head's resolution unless said otherwise."""

    heat: Tensor  # B×1×h×w
    reg: Tensor  # B×4×h×w: offset x, y (cells) and size w, h (/SIZE_SCALE), valid at centres
    reg_mask: Tensor  # B×1×h×w
    fg: Tensor  # B×1×S×S: full-resolution foreground
    vec: Tensor  # B×2×(S/2)×(S/2): vector to the centre (/VEC_UNIT pixels)
    vec_weight: Tensor  # B×1×(S/2)×(S/2): where vec counts, and how much (small objects weigh more)


def detector_loss(outputs: tuple[Tensor, Tensor], t: DetectorTargets) -> tuple[Tensor, dict[str, float]]:
    out, fine = outputs
    heat = focal_loss(out[:, HEAT:HEAT + 1], t.heat)
    n = t.reg_mask.sum().clamp(min=1)
    reg = (F.l1_loss(out[:, OFF_X:SIZE_H + 1], t.reg, reduction="none") * t.reg_mask).sum() / n
    # Foreground is scored after upsampling, so the low-resolution logits learn sharp boundaries.
    fg_logits = F.interpolate(fine[:, FG:FG + 1], size=t.fg.shape[-2:], mode="bilinear", align_corners=False)
    fg = F.binary_cross_entropy_with_logits(fg_logits, t.fg)
    nv = t.vec_weight.sum().clamp(min=1)
    vec = (F.l1_loss(fine[:, VEC_X:VEC_Y + 1], t.vec, reduction="none") * t.vec_weight).sum() / nv
    # Vectors decide which object owns each pixel where objects touch: they get double weight.
    total = heat + reg + fg + 2 * vec
    return total, {"heat": heat.item(), "reg": reg.item(), "fg": fg.item(), "vec": vec.item()}
