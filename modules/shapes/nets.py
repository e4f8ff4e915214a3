"""The shapes world's two networks, in plain torch, top to bottom.

1. ``Detector``: image → objects. CenterNet-style: a small encoder-decoder predicts, at 1/2 of the
   input resolution (``stride``; 1/4 in the first weights), a centre heatmap and each centre's box
   size and sub-cell offset, and at 1/2 resolution (fine enough for a star's points and a small
   object's edge) a foreground logit and, for every foreground pixel, the vector to its object's
   centre (Panoptic-DeepLab's trick). Peaks of the heatmap are the objects; each foreground pixel goes to
   the peak its vector points at, which separates touching and overlapping objects into instance
   masks without any proposal machinery. Chosen because every part is a dense per-pixel loss:
   it learns fast on a CPU and decodes with a max-pool and an argmin.
2. ``AttributeNet``: object crop (RGB + its soft mask, ``crop`` × ``crop``) plus the box's size in
   the image → logits for every attribute (shape, colour, size, material). Crops are resized, so the
   box size and mask area go in as numbers: that is what tells a large object from a small one.

Weights are saved with safetensors, the config as JSON in the file's metadata, so a file alone
rebuilds its network (no pickle anywhere).
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import NDArray
from PIL import Image
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from .vocab import ATTRIBUTES

# ----------------------------------------------------------------------------- building blocks


def conv_bn(cin: int, cout: int, k: int = 3, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


class Block(nn.Module):
    """A residual block: two 3×3 convolutions."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(c, c, 3, 1, 1, bias=False)
        self.b1 = nn.BatchNorm2d(c)
        self.c2 = nn.Conv2d(c, c, 3, 1, 1, bias=False)
        self.b2 = nn.BatchNorm2d(c)

    def forward(self, x: Tensor) -> Tensor:
        y = F.relu(self.b1(self.c1(x)), inplace=True)
        return F.relu(x + self.b2(self.c2(y)), inplace=True)


# ----------------------------------------------------------------------------- detector


@dataclass
class DetectorConfig:
    input_size: int = 256  # every image is resized to this square before detection
    widths: tuple[int, int, int, int] = (16, 32, 64, 96)  # at strides 2, 4, 8, 16
    blocks: tuple[int, int, int] = (1, 2, 2)  # residual blocks at strides 4, 8, 16
    head: int = 32
    # Resolution of the centre heatmap and box head: 2 or 4. At 2, two small objects whose centres
    # are 13 px apart (the world's least distance) are six cells apart, not three.
    stride: int = 2
    peak_threshold: float = 0.3
    max_objects: int = 24
    mask_threshold: float = 0.5


# Output channels of the detector's stride-4 head and of its stride-2 head, in order.
HEAT, OFF_X, OFF_Y, SIZE_W, SIZE_H = range(5)
FG, VEC_X, VEC_Y = range(3)
SIZE_SCALE = 64.0  # box sizes are regressed in units of this many pixels
VEC_UNIT = 32.0  # centre vectors in units of this many pixels


class Detector(nn.Module):
    def __init__(self, cfg: DetectorConfig) -> None:
        super().__init__()
        self.cfg = cfg
        w2, w4, w8, w16 = cfg.widths
        n4, n8, n16 = cfg.blocks
        self.stem2 = conv_bn(3, w2, stride=2)
        self.stem4 = conv_bn(w2, w4, stride=2)
        self.s4 = nn.Sequential(*[Block(w4) for _ in range(n4)])
        self.s8 = nn.Sequential(conv_bn(w4, w8, stride=2), *[Block(w8) for _ in range(n8)])
        self.s16 = nn.Sequential(conv_bn(w8, w16, stride=2), *[Block(w16) for _ in range(n16)])
        self.lat16 = nn.Conv2d(w16, w8, 1)
        self.up8 = conv_bn(w8, w8)
        if cfg.stride not in (2, 4):
            raise ValueError(f"detector stride must be 2 or 4, not {cfg.stride}")
        self.lat8 = nn.Conv2d(w8, w4, 1)
        self.up4 = conv_bn(w4, cfg.head)
        self.lat4 = nn.Conv2d(cfg.head, w2, 1)
        # At stride 2 the centre head reads the finest features, so it is as wide as the stride-4 head.
        fine_width = cfg.head if cfg.stride == 2 else w2
        self.up2 = conv_bn(w2, fine_width)
        self.out = nn.Conv2d(cfg.head if cfg.stride == 4 else fine_width, 5, 1)
        self.fine = nn.Conv2d(fine_width, 3, 1)
        # CenterNet's prior: the heatmap starts near 0.1% everywhere, so early focal loss is sane.
        bias = self.out.bias
        assert bias is not None  # made with one
        nn.init.constant_(bias, 0.0)
        with torch.no_grad():
            bias[HEAT] = -4.6

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``x``: B×3×S×S in [0, 1] → raw outputs B×5×(S/stride)×(S/stride) (centres, boxes) and B×3×(S/2)×(S/2)
        (foreground logit, vector to the centre)."""
        x = (x - 0.5) / 0.25
        f2 = self.stem2(x)
        f4 = self.s4(self.stem4(f2))
        f8 = self.s8(f4)
        f16 = self.s16(f8)
        y8 = self.up8(f8 + F.interpolate(self.lat16(f16), scale_factor=2.0, mode="nearest"))
        y4 = self.up4(f4 + F.interpolate(self.lat8(y8), scale_factor=2.0, mode="nearest"))
        y2 = self.up2(f2 + F.interpolate(self.lat4(y4), scale_factor=2.0, mode="nearest"))
        return self.out(y4 if self.cfg.stride == 4 else y2), self.fine(y2)


@dataclass
class Detection:
    """One decoded object in the detector's input pixels."""

    box: tuple[float, float, float, float]
    score: float
    mask: Tensor  # bool S×S
    soft: Tensor  # float (S/8)×(S/8): where this object is, coarsely, for the attribute net


def peaks(heat: Tensor, threshold: float, k: int) -> list[tuple[Tensor, Tensor, Tensor]]:
    """Local maxima of a B×1×h×w probability map above ``threshold``: (ys, xs, scores) per image."""
    local = F.max_pool2d(heat, 3, 1, 1)
    keep = (heat == local) & (heat > threshold)
    out = []
    for b in range(heat.shape[0]):
        ys, xs = torch.nonzero(keep[b, 0], as_tuple=True)
        scores = heat[b, 0, ys, xs]
        order = torch.argsort(scores, descending=True)[:k]
        out.append((ys[order], xs[order], scores[order]))
    return out


def box_iou(a: Tensor, b: Tensor) -> Tensor:
    """Pairwise IoU of N×4 and M×4 boxes (x1, y1, x2, y2) → N×M."""
    area_a = (a[:, 2] - a[:, 0]).clamp(min=0) * (a[:, 3] - a[:, 1]).clamp(min=0)
    area_b = (b[:, 2] - b[:, 0]).clamp(min=0) * (b[:, 3] - b[:, 1]).clamp(min=0)
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(dim=2)
    return inter / (area_a[:, None] + area_b[None, :] - inter).clamp(min=1e-6)


def nms(boxes: Tensor, scores: Tensor, iou: float) -> Tensor:
    """Indices kept by greedy non-maximum suppression, best first (torchvision's, in plain torch)."""
    order = torch.argsort(scores, descending=True)
    # The greedy pass reads Python lists: one element at a time, tensors would cost a GIL round trip each.
    over = (box_iou(boxes, boxes) > iou).tolist()
    keep: list[int] = []
    suppressed = [False] * len(boxes)
    for i in order.tolist():
        if suppressed[i]:
            continue
        keep.append(i)
        suppressed = [s or o for s, o in zip(suppressed, over[i])]
    return torch.tensor(keep, dtype=torch.long)


def decode(outputs: tuple[Tensor, Tensor], cfg: DetectorConfig, mask_stride: int = 8) -> list[list[Detection]]:
    """Raw outputs → objects per image, boxes and masks in input pixels.

    Every step works on all of an image's objects at once: a torch call per object (or a ``float()``
    of one element) releases and re-takes the GIL, and on a server whose event loop is busy each
    re-take waits, so per-object calls cost far more there than they do alone."""
    out, fine = outputs
    S, st = cfg.input_size, cfg.stride
    heat = torch.sigmoid(out[:, HEAT:HEAT + 1])
    fg_logits = F.interpolate(fine[:, FG:FG + 1], size=(S, S), mode="bilinear", align_corners=False)[:, 0]
    fg_prob = torch.sigmoid(fg_logits)
    fg_full = fg_logits > 0
    vec_full = F.interpolate(fine[:, VEC_X:VEC_Y + 1], size=(S, S), mode="bilinear", align_corners=False)
    # Where each pixel says its object's centre is, in input pixels.
    pix = (torch.arange(S, dtype=out.dtype) + 0.5)
    lines = torch.arange(S)
    results: list[list[Detection]] = []
    for b, (ys, xs, scores) in enumerate(peaks(heat, cfg.peak_threshold, cfg.max_objects)):
        if len(ys) == 0:
            results.append([])
            continue
        o = out[b]
        cx = (xs.to(out.dtype) + o[OFF_X, ys, xs]) * st
        cy = (ys.to(out.dtype) + o[OFF_Y, ys, xs]) * st
        bw = o[SIZE_W, ys, xs].clamp(min=0.01) * SIZE_SCALE
        bh = o[SIZE_H, ys, xs].clamp(min=0.01) * SIZE_SCALE
        boxes = torch.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], 1).clamp(0, S)
        keep = nms(boxes, scores, 0.7)
        boxes, scores, cx, cy = boxes[keep], scores[keep], cx[keep], cy[keep]
        K = len(keep)
        box_list = [(x1, y1, x2, y2) for x1, y1, x2, y2 in boxes.tolist()]
        # Each object's region: its box and two pixels around it. A pixel goes to the object whose
        # centre its vector points nearest, among the objects whose region holds it; so a vector
        # blurred at an edge between two objects can never give a pixel to a third, far away.
        spans = torch.tensor([(max(0, int(y1) - 2), min(S, math.ceil(y2) + 2), max(0, int(x1) - 2),
                               min(S, math.ceil(x2) + 2)) for x1, y1, x2, y2 in box_list])
        regions = _rectangles(spans, lines)
        tx = pix[None, :] + vec_full[b, 0] * VEC_UNIT
        ty = pix[:, None] + vec_full[b, 1] * VEC_UNIT
        d2 = (tx[None] - cx[:, None, None]) ** 2 + (ty[None] - cy[:, None, None]) ** 2  # K×S×S
        d2 = d2.masked_fill(~regions, float("inf"))
        owner = d2.argmin(0)
        owned = regions.any(0)
        mine = (owner[None] == torch.arange(K)[:, None, None]) & owned[None]
        masks = fg_full[b][None] & mine
        missed = [k for k, hit in enumerate(masks.flatten(1).any(1).tolist()) if not hit]
        if missed:  # the foreground head missed them: the box is the best mask there is
            rect = _rectangles(torch.tensor([(int(y1), math.ceil(y2), int(x1), math.ceil(x2))
                                             for x1, y1, x2, y2 in (box_list[k] for k in missed)]), lines)
            masks[missed] = rect
            mine[missed] = rect
        softs = F.avg_pool2d((fg_prob[b][None] * mine.to(out.dtype))[:, None], mask_stride)[:, 0]
        # The box is the size head's: it measures the object better than a mask's edge does.
        results.append([Detection(box, score, masks[k], softs[k])
                        for k, (box, score) in enumerate(zip(box_list, scores.tolist()))])
    return results


def _rectangles(spans: Tensor, lines: Tensor) -> Tensor:
    """N×S×S bool masks, each True on rows [r0, r1) and columns [c0, c1) of its row of ``spans``
    (N×4: r0, r1, c0, c1); ``lines`` is ``arange(S)``."""
    r0, r1, c0, c1 = spans.unbind(1)
    rows = (lines[None] >= r0[:, None]) & (lines[None] < r1[:, None])
    cols = (lines[None] >= c0[:, None]) & (lines[None] < c1[:, None])
    return rows[:, :, None] & cols[:, None, :]


@functools.lru_cache(maxsize=64)
def nearest_tables(side: int, width: int, height: int) -> tuple[NDArray[np.intp], NDArray[np.intp]]:
    """The source row of every output row and the source column of every output column when PIL
    resizes a ``side``-square image to ``width``×``height`` with NEAREST: found by resizing a ramp
    with PIL itself, so that gathering by them gives PIL's pixels exactly, for many masks at once."""
    ramp = np.arange(side, dtype=np.int32)
    cols = np.asarray(Image.fromarray(ramp[None, :]).resize((width, 1), Image.Resampling.NEAREST))[0]
    rows = np.asarray(Image.fromarray(ramp[:, None]).resize((1, height), Image.Resampling.NEAREST))[:, 0]
    return rows.astype(np.intp), cols.astype(np.intp)


# ----------------------------------------------------------------------------- attribute classifier


@dataclass
class AttributeConfig:
    crop: int = 32
    # The mask input is coarse (one value per 8×8 pixels) on purpose: it says which object is meant,
    # while the shape must be read from the pixels, which a detector's mask cannot distort.
    mask_stride: int = 8
    margin: float = 0.15  # context added around the box on each side, as a share of its size
    widths: tuple[int, int, int, int] = (32, 48, 96, 128)
    hidden: int = 128
    attributes: dict[str, list[str]] = field(default_factory=lambda: {k: list(v) for k, v in ATTRIBUTES.items()})


class AttributeNet(nn.Module):
    def __init__(self, cfg: AttributeConfig) -> None:
        super().__init__()
        self.cfg = cfg
        a, b, c, d = cfg.widths
        self.features = nn.Sequential(
            conv_bn(4, a), conv_bn(a, b, stride=2), conv_bn(b, b), conv_bn(b, c, stride=2), conv_bn(c, c),
            conv_bn(c, d, stride=2), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.mlp = nn.Sequential(nn.Linear(d + 3, cfg.hidden), nn.ReLU(inplace=True))
        self.heads = nn.ModuleDict({k: nn.Linear(cfg.hidden, len(v)) for k, v in cfg.attributes.items()})

    def forward(self, crops: Tensor, geometry: Tensor) -> dict[str, Tensor]:
        """``crops``: N×4×c×c (RGB in [0, 1], mask in [0, 1]); ``geometry``: N×3 (box w, h, √mask area,
        as shares of the image side) → logits per attribute."""
        x = torch.cat([(crops[:, :3] - 0.5) / 0.25, crops[:, 3:] * 2 - 1], 1)
        h = self.mlp(torch.cat([self.features(x), geometry * 10], 1))
        return {k: head(h) for k, head in self.heads.items()}


def crop_grids(boxes: Tensor, size: int, crop: int, margin: float) -> Tensor:
    """Sampling grids (N×crop×crop×2, grid_sample's [-1, 1] coordinates) for boxes in pixels of a
    ``size``-sided image, each enlarged by ``margin`` of its size per side and made square."""
    x1, y1, x2, y2 = boxes.unbind(1)
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    # Square crops keep shapes' proportions: a diamond never turns into a square by resizing.
    half = torch.maximum(x2 - x1, y2 - y1) * (0.5 + margin) + 1.0
    t = (torch.arange(crop, dtype=boxes.dtype, device=boxes.device) + 0.5) / crop * 2 - 1  # -1..1 across the crop
    gx = (cx[:, None] + t[None, :] * half[:, None]) / size * 2 - 1
    gy = (cy[:, None] + t[None, :] * half[:, None]) / size * 2 - 1
    return torch.stack([gx[:, None, :].expand(-1, crop, -1), gy[:, :, None].expand(-1, -1, crop)], dim=-1)


def sample_crops(images: Tensor, soft_masks: Tensor, owners: Tensor, boxes: Tensor, cfg: AttributeConfig) -> Tensor:
    """Crops of N objects from B images in one ``grid_sample``: each image's crops are stacked as
    rows of one tall sampling grid, so no image is ever copied per object.

    ``images``: B×3×S×S in [0, 1]; ``soft_masks``: N×m×m, each object's mask (any resolution, it is
    sampled over the same image area); ``owners``: N image indices; ``boxes``: N×4 pixels."""
    B, _, S, _ = images.shape
    c = cfg.crop
    grids = crop_grids(boxes, S, c, cfg.margin)
    per_image = [0] * B
    slots = []
    for o in owners.tolist():  # position of each object among its image's crops
        slots.append(per_image[o])
        per_image[o] += 1
    rows = max(per_image) if slots else 0
    if rows == 0:
        return images.new_zeros((0, 4, c, c))
    slot = torch.tensor(slots, device=owners.device)
    tall = images.new_full((B, rows, c, c, 2), -2.0)  # off-image: padding rows sample zeros
    tall[owners, slot] = grids
    rgb = F.grid_sample(images, tall.view(B, rows * c, c, 2), mode="bilinear", padding_mode="zeros",
                        align_corners=False)
    rgb = rgb.view(B, 3, rows, c, c).permute(0, 2, 1, 3, 4)[owners, slot]
    mask = F.grid_sample(soft_masks[:, None], grids, mode="bilinear", padding_mode="zeros", align_corners=False)
    return torch.cat([rgb, mask], 1)


def geometry(boxes: Tensor, mask_area: Tensor, size: int) -> Tensor:
    """The numbers that say how big an object is once its crop has been resized."""
    return torch.stack([(boxes[:, 2] - boxes[:, 0]) / size, (boxes[:, 3] - boxes[:, 1]) / size,
                        mask_area.clamp(min=0).sqrt() / size], 1)


# ----------------------------------------------------------------------------- both together


@dataclass
class Prediction:
    """An object found in an image: box and mask in the detector's input pixels, a probability per
    value of every attribute, and the most likely value of each."""

    box: tuple[float, float, float, float]
    score: float
    mask: Tensor
    probs: dict[str, dict[str, float]]
    attributes: dict[str, str]


@dataclass
class Maps:
    """What the detector saw in a batch beside its objects: the centre heatmap (B×(S/stride)×(S/stride))
    and the foreground probability (B×(S/2)×(S/2)), both in [0, 1], on the CPU. How sure the detector
    is of them, pixel by pixel, is part of how LOC tells a shapes-world scene from anything else."""

    heat: Tensor
    foreground: Tensor


def detect(detector: Detector, images: Tensor, mask_stride: int = 8) -> tuple[list[list[Detection]], Maps]:
    """B×3×S×S images in [0, 1] (S = the detector's input size) → objects per image, in one forward,
    and the maps they were decoded from."""
    with torch.inference_mode():
        # Decoding is a few small loops over peaks: the CPU does it as well as any accelerator.
        raw, fg = detector(images)
        raw, fg = raw.float().cpu(), fg.float().cpu()
        dets = decode((raw, fg), detector.cfg, mask_stride)
    return dets, Maps(torch.sigmoid(raw[:, HEAT]), torch.sigmoid(fg[:, FG]))


def classify(attrnet: AttributeNet, images: Tensor, dets: list[list[Detection]]) -> list[list[Prediction]]:
    """The attributes of every object ``detect`` found in ``images`` (the same batch, or the images of
    it that are kept, in the same order), in one forward of the attribute classifier."""
    dev = images.device
    size = images.shape[-1]
    with torch.inference_mode():
        flat = [(b, d) for b, ds in enumerate(dets) for d in ds]
        if not flat:
            return [[] for _ in dets]
        boxes = torch.tensor([d.box for _, d in flat], dtype=torch.float32, device=dev)
        owners = torch.tensor([b for b, _ in flat], device=dev)
        softs = torch.stack([d.soft for _, d in flat]).to(dev)
        areas = torch.stack([d.mask for _, d in flat]).flatten(1).sum(1).to(torch.float32).to(dev)
        crops = sample_crops(images.float().contiguous(), softs, owners, boxes, attrnet.cfg)
        logits = attrnet(crops, geometry(boxes, areas, size))
        # As Python lists at once: reading a tensor element by element costs a GIL round trip each.
        probs = {a: torch.softmax(v.float(), 1).cpu().tolist() for a, v in logits.items()}
    names = attrnet.cfg.attributes
    out: list[list[Prediction]] = [[] for _ in dets]
    for n, (b, d) in enumerate(flat):
        p = {a: dict(zip(names[a], rows[n])) for a, rows in probs.items()}
        best = {a: max(v, key=v.__getitem__) for a, v in p.items()}
        out[b].append(Prediction(d.box, d.score, d.mask, p, best))
    return out


def predict(detector: Detector, attrnet: AttributeNet, images: Tensor) -> list[list[Prediction]]:
    """B×3×S×S images in [0, 1] (S = the detector's input size) → objects per image: one detector
    forward for the batch, one attribute forward for every object found in it."""
    dets, _ = detect(detector, images, attrnet.cfg.mask_stride)
    return classify(attrnet, images, dets)


# ----------------------------------------------------------------------------- files


def save(model: nn.Module, cfg: Any, path: Path, extra: dict[str, str] | None = None) -> None:
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    meta = {"config": json.dumps(asdict(cfg)), "kind": type(model).__name__, **(extra or {})}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata=meta)


_Config = TypeVar("_Config", DetectorConfig, AttributeConfig)


def _config(cls: type[_Config], raw: dict[str, Any]) -> _Config:
    known = {f.name: raw[f.name] for f in fields(cls) if f.name in raw}
    for k, v in known.items():
        if isinstance(v, list) and k != "attributes":
            known[k] = tuple(v)
    return cls(**known)


def load(path: Path, device: str = "cpu") -> Detector | AttributeNet:
    """Rebuild a network from a safetensors file alone (config from its metadata), in eval mode."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    raw = json.loads(meta["config"])
    model: Detector | AttributeNet
    if meta.get("kind") == "Detector":
        model = Detector(_config(DetectorConfig, raw))
    elif meta.get("kind") == "AttributeNet":
        model = AttributeNet(_config(AttributeConfig, raw))
    else:
        raise ValueError(f"{path} holds no shapes network (kind {meta.get('kind')!r})")
    model.load_state_dict(load_file(str(path), device="cpu"))
    return model.to(device).eval()


def load_detector(path: Path, device: str = "cpu") -> Detector:
    """:func:`load` for a file that must hold the detector."""
    model = load(path, device)
    if not isinstance(model, Detector):
        raise ValueError(f"{path} holds the attribute classifier, not the detector")
    return model


def load_attribute_net(path: Path, device: str = "cpu") -> AttributeNet:
    """:func:`load` for a file that must hold the attribute classifier."""
    model = load(path, device)
    if not isinstance(model, AttributeNet):
        raise ValueError(f"{path} holds the detector, not the attribute classifier")
    return model
