"""Whether an image is a shapes-world scene, decided before LOC answers for it.

The shapes networks were trained on one synthetic world (3-10 flat shapes in CLEVR's colours on a
light, smooth, textured background) and on nothing else. Shown a photo they still find "objects":
on the skimage cat, 24 of them (the detector's cap) with scores up to 0.9, and every program built
on them answers. So LOC measures, in the same forward, how much the image looks like the world the
networks know, and fails the step when it does not, saying what it measured and what to enable.

The evidence is what the detector saw, not a second model, and it is measured on the detector's
input (the image resized to S×S) batched with the forward; the attribute classifier never runs on an
image that fails:

- ``background``: the share of pixels away from every object (masks grown by 3 px) that are dark
  (luminance < 70), strongly coloured (channels more than 90 apart) or textured (5×5 luminance
  standard deviation > 20). The world's backgrounds are never any of these; photos nearly always are.
- ``unsure``: the share of the image where the detector cannot decide — centre heatmap between 0.05
  and 0.3, plus foreground probability between 0.1 and 0.9. On its own world it is sure almost
  everywhere.
- ``score``: the median score of the objects found; the world's objects are found with confidence,
  a photo's "objects" mostly just over the 0.3 threshold.
- ``edge``: the share of the objects whose box reaches within 2 px of the image's edge. The world
  keeps every object inside the picture; a crop of a photo cuts what it shows.
- ``colour``: the 99th percentile of the channel spread (max − min of R, G, B): a grey image has none,
  and LOC could not read a colour in it.
- no object at all: every scene of the world has at least three.

Each limit sits at twice the worst value measured on 2,100 held-out scenes of every condition the
bench runs (256 px, crowded, overlapped, 192 px, 128 px; the score at 0.09 below it) and every photo
that ships with scikit-image, scikit-learn and matplotlib, whole, resized and cropped, fails at least
one of them. ``python -m modules.shapes.tools.domain`` measures both again; ``bench/README.md`` has
the figures.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported when LOC first measures, not when the pack is listed
    from torch import Tensor

    from .nets import Detection, Maps

__all__ = ["LIMITS", "Evidence", "Limits", "Verdict", "judge", "measure", "message"]

VERSION = "1"  # part of LOC's version: a change to the evidence or the limits is a change of answers

_ENABLE = ("the shapes pack's LOC reads only its own synthetic world — for photos enable the photo pack "
           "(faces, people, text) or the hf pack (open-vocabulary objects)")


@dataclass(frozen=True)
class Limits:
    """The most (or least) a shapes-world scene shows of each kind of evidence."""

    # Beside each, the worst of 2,100 held-out scenes (bench seeds 0-2, every condition).
    background: float = 0.03  # share of background pixels, at most; held-out scenes ≤ 0.0025
    unsure: float = 0.12  # share of the image, at most; held-out scenes ≤ 0.057
    score: float = 0.6  # median object score, at least; held-out scenes ≥ 0.69
    colour: float = 6.0  # 99th percentile channel spread, at least; held-out scenes ≥ 16
    edge: float = 0.5  # share of the objects at the image's edge, below; held-out scenes ≤ 0.2
    # Pixel thresholds of ``background``.
    dark: float = 70.0
    saturated: float = 90.0
    textured: float = 20.0
    grow: int = 3  # px the objects' masks are grown by before the background is measured
    frame: float = 2.0  # px of the image's edge no object of the world reaches


LIMITS = Limits()


@dataclass(frozen=True)
class Evidence:
    """What LOC measured on one image (its detector's input, S×S)."""

    objects: int
    background: float
    unsure: float
    score: float  # median object score; 0 when there is none
    colour: float
    edge: float  # share of the objects whose box reaches the image's outermost pixels

    def to_json(self) -> dict[str, float]:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in asdict(self).items()}


@dataclass(frozen=True)
class Verdict:
    evidence: Evidence | None  # None: nothing was measured (a LOC made without limits)
    reasons: tuple[str, ...]  # empty: it is a shapes-world scene

    @property
    def ok(self) -> bool:
        return not self.reasons


def measure(images: Tensor, dets: Sequence[Sequence[Detection]], maps: Maps, limits: Limits = LIMITS
            ) -> list[Evidence]:
    """``images``: B×3×S×S in [0, 1] on the CPU, as the detector read them; ``dets`` and ``maps``:
    what ``nets.detect`` made of them."""
    import torch

    B, _, S, _ = images.shape
    with torch.inference_mode():
        v = images.float() * 255
        lum = (0.299 * v[:, 0] + 0.587 * v[:, 1] + 0.114 * v[:, 2])[:, None]
        spread = v.amax(1) - v.amin(1)
        n = _window_sum(torch.ones_like(lum[:1]), 5)  # pixels in each 5×5 window: fewer at the edges
        mean = _window_sum(lum, 5) / n
        sq = _window_sum(lum * lum, 5) / n
        std = (sq - mean * mean).clamp(min=0).sqrt()[:, 0]
        odd = (lum[:, 0] < limits.dark) | (spread > limits.saturated) | (std > limits.textured)
        fg = torch.zeros((B, 1, S, S))
        for b, ds in enumerate(dets):
            for d in ds:
                fg[b, 0] += d.mask
        near = _window_sum(fg, 2 * limits.grow + 1)[:, 0] > 0.5
        away = ~near
        background = (odd & away).sum((1, 2)).float() / away.sum((1, 2)).clamp(min=1).float()
        heat, fgp = maps.heat, maps.foreground
        unsure_heat = ((heat > 0.05) & (heat < 0.3)).float().mean((1, 2))
        unsure_fg = ((fgp > 0.1) & (fgp < 0.9)).float().mean((1, 2))
        colour = spread.reshape(B, -1).kthvalue(math.ceil(0.99 * S * S), dim=1).values
        f = limits.frame
        cut = [sum(min(d.box[0], d.box[1]) < f or max(d.box[2], d.box[3]) > S - f for d in ds) for ds in dets]
    out = []
    for b, ds in enumerate(dets):
        scores = sorted(d.score for d in ds)
        median = (scores[(len(scores) - 1) // 2] + scores[len(scores) // 2]) / 2 if scores else 0.0
        out.append(Evidence(objects=len(ds), background=float(background[b]),
                            unsure=float(unsure_heat[b] + unsure_fg[b]), score=median, colour=float(colour[b]),
                            edge=cut[b] / max(1, len(ds))))
    return out


def _window_sum(x: Tensor, k: int) -> Tensor:
    """The sum over the k×k window around each pixel of B×1×H×W ``x`` (zeros beyond the edges), by
    running sums: a few passes over the image whatever ``k``, where a pooling layer costs k² per pixel."""
    import torch
    import torch.nn.functional as F

    h = k // 2
    c = torch.cumsum(F.pad(x, (0, 0, h + 1, h)), dim=2)
    x = c[:, :, k:] - c[:, :, :-k]
    c = torch.cumsum(F.pad(x, (h + 1, h, 0, 0)), dim=3)
    return c[:, :, :, k:] - c[:, :, :, :-k]


def judge(e: Evidence, limits: Limits = LIMITS) -> Verdict:
    """Every way ``e`` is unlike a shapes-world scene, in words; none when it is one."""
    reasons: list[str] = []
    if e.colour < limits.colour:
        reasons.append("it has no colour")
    if e.objects == 0:
        reasons.append("no shape was found in it")
    if e.background > limits.background:
        reasons.append(f"{e.background:.0%} of what lies around the objects is dark, strongly coloured or textured "
                       f"(a shapes scene's background: under {limits.background:.0%})")
    if e.unsure > limits.unsure:
        reasons.append(f"the detector is unsure over {e.unsure:.0%} of it (on shapes scenes: under "
                       f"{limits.unsure:.0%})")
    if e.objects and e.score < limits.score:
        reasons.append(f"what it found scores {e.score:.2f} (median; shapes scenes' objects: {limits.score} or more)")
    if e.objects and e.edge >= limits.edge:
        reasons.append(f"{e.edge:.0%} of what it found is cut by the image's edge (a shapes scene's objects lie "
                       f"inside it)")
    return Verdict(e, tuple(reasons))


def message(v: Verdict) -> str:
    """The step's error for an image that is not a shapes-world scene."""
    return f"this image does not look like a shapes-world scene ({'; '.join(v.reasons)}); {_ENABLE}"
